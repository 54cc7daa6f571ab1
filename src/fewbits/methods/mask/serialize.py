"""The mask method's tensors in and out of the artifact container.

A task mask stores only what the task changed: every mask, losslessly coded (the smallest of
:mod:`~fewbits.methods.mask.codec`'s methods per tensor), and the dense task head. The base it was
trained on is another artifact or model folder, named in the manifest's ``base`` by the checksum of
its weights (``{"kind": "artifact", "sha256": ..., "source": ...}``) and handed to :func:`read` by
the loader. Tensors: ``mask.<layer>`` (encoded bytes, flat uint8) and ``head.<state key>``.
Manifest section::

    {"masks": {"<layer>": {"shape": [...], "kept": K, "method": "rice", "params": {...}, "tied": [...]}},
     "head": ["classifier.weight", "classifier.bias"],
     "info": {...task, settings and metrics; free-form JSON}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fewbits._util.tensorfile import is_int
from fewbits.errors import ArtifactError, FewbitsValueError, bad_param
from fewbits.methods.base import Saved, Stored
from fewbits.methods.mask.apply import head_keys, new_head
from fewbits.methods.mask.codec import METHODS, EncodedMask, count_kept, decode, encode
from fewbits.nn.mask import mask_modules, masks, set_masks


def task_info(model: nn.Module, task: Any = None) -> dict[str, Any]:
    """The head's size and labels, which loading needs to rebuild the head before filling it."""
    config = getattr(model, "config", None)
    head = [v for k, v in model.state_dict().items() if k in set(head_keys(model))]
    return {"name": task.name if task is not None else None,
            "num_labels": int(getattr(config, "num_labels", 0) or head[0].shape[0]),
            "label_names": task.label_names if task is not None else None}


def write(model: nn.Module, *, base: Mapping[str, str], task: Any = None,
          info: Mapping[str, Any] | None = None) -> Saved:
    """Every mask of ``model`` encoded, its head dense; ``base`` holds the base's ``sha256`` and ``source``."""
    found = mask_modules(model)
    if not found:
        raise bad_param("model", "a model carrying masks (fewbits.methods.mask.apply)", type(model).__name__,
                        "save_mask")
    sha = base.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise bad_param("base_sha256", "a sha256 hex digest (64 characters)", sha, "save_mask")
    current = masks(model)
    tied: dict[str, list[str]] = {name: [] for name in current}
    owner = {id(m): name for name, (_, m) in found.items() if name in current}
    for name, (_, m) in found.items():
        if name not in current:
            tied[owner[id(m)]].append(name)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    for name, mask in current.items():
        enc = encode(mask)
        tensors[f"mask.{name}"] = enc.data.contiguous()
        layers[name] = {"shape": list(enc.shape), "kept": int(torch.count_nonzero(mask)), "method": enc.method,
                        "params": enc.params, "tied": tied[name]}
    keys = set(head_keys(model))
    head = {k: v for k, v in model.state_dict().items() if k in keys}
    for key, value in head.items():
        tensors[f"head.{key}"] = value.detach().to("cpu").contiguous().clone()
    data = {"masks": layers, "head": list(head), "info": {"task": task_info(model, task), **(info or {})}}
    return Saved(tensors, data, None, {"kind": "artifact", "sha256": sha, "source": str(base.get("source", ""))})


def check(stored: Stored) -> None:
    """Types of the section, exactly one tensor per mask and head entry, and every mask's lengths and kept count
    checked without building it (so ``fewbits info`` refuses what loading refuses, in bounded memory)."""
    data = stored.data
    ok = (isinstance(data.get("masks"), dict) and isinstance(data.get("head"), list)
          and isinstance(data.get("info", {}), dict)
          and all(isinstance(m, dict) and isinstance(m.get("shape"), list) and all(is_int(s) for s in m["shape"])
                  and is_int(m.get("kept")) and m.get("method") in METHODS and isinstance(m.get("params"), dict)
                  and isinstance(m.get("tied"), list) for m in data["masks"].values()))
    if not ok:
        raise ArtifactError(f"{stored.path.parent / 'fewbits.json'}: malformed mask manifest; train the mask again.")
    expected = {f"mask.{n}" for n in data["masks"]} | {f"head.{k}" for k in data["head"]}
    if set(stored.entries) != expected:
        raise ArtifactError(f"{stored.path}: tensors {sorted(set(stored.entries) ^ expected)[:5]} differ from the "
                            "manifest.")
    tensors = stored.load_tensors()
    for name, layer in data["masks"].items():
        try:
            kept = count_kept(_encoded(layer, tensors[f"mask.{name}"]), name)
        except ArtifactError as exc:
            raise ArtifactError(f"{stored.path}: {exc}") from None
        if kept != layer["kept"]:
            raise _corrupt(stored, name, f"{kept} kept weights, the manifest says {layer['kept']}")


def _encoded(layer: Mapping[str, Any], data: torch.Tensor) -> EncodedMask:
    return EncodedMask(layer["method"], tuple(layer["shape"]), data, layer["params"])


def _corrupt(stored: Stored, name: str, detail: str) -> ArtifactError:
    return ArtifactError(f"{stored.path}: mask {name!r} cannot be decoded: {detail}. The artifact is truncated or "
                         "altered; save it again.")


def fit(model: nn.Module, stored: Stored) -> None:
    """The stored head and masks fit this base, checked from the header's sizes before anything is allocated:
    the head's label count against the stored head, every mask's shape against its layer's weight."""
    where = stored.path.parent
    task = stored.data["info"].get("task", {})
    num_labels = task.get("num_labels") if isinstance(task, dict) else None
    rows = [stored.entries[f"head.{key}"].shape[:1] for key in stored.data["head"]]
    if not is_int(num_labels, 1) or all(tuple(r) != (num_labels,) for r in rows):
        raise ArtifactError(f"{where / 'fewbits.json'}: the head's label count {num_labels!r} matches none of the "
                            f"stored head's tensors {[list(r) for r in rows]}; train the mask again.")
    modules = dict(model.named_modules())
    for name, layer in stored.data["masks"].items():
        for member in [name, *layer["tied"]]:
            weight = getattr(modules.get(member), "weight", None) if isinstance(member, str) else None
            if not isinstance(weight, torch.Tensor) or list(weight.shape) != layer["shape"]:
                found = list(weight.shape) if isinstance(weight, torch.Tensor) else "no such layer"
                raise ArtifactError(f"{where / 'fewbits.json'}: mask {member!r} has shape {layer['shape']}, the base "
                                    f"has {found}; give the base it was trained on.")


def decode_all(stored: Stored) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, torch.Tensor]]:
    """Every mask decoded and counted against the manifest, its tied partners, and the head's tensors."""
    tensors = stored.load_tensors()
    decoded, tied = {}, {}
    for name, layer in stored.data["masks"].items():
        try:
            mask = decode(_encoded(layer, tensors[f"mask.{name}"]), name)
        except ArtifactError as exc:
            raise ArtifactError(f"{stored.path}: {exc}") from None
        kept = int(torch.count_nonzero(mask))
        if kept != layer["kept"]:
            raise _corrupt(stored, name, f"{kept} kept weights, the manifest says {layer['kept']}")
        decoded[name], tied[name] = mask, list(layer["tied"])
    return decoded, tied, {key: tensors[f"head.{key}"] for key in stored.data["head"]}


def read(model: nn.Module, stored: Stored) -> nn.Module:
    """Give the base (handed over by the loader) a new head of the stored size, fill it, set every mask, freeze."""
    where = stored.path.parent
    fit(model, stored)
    task = stored.data["info"]["task"]
    new_head(model, task["num_labels"], task.get("label_names"))
    decoded, tied, head = decode_all(stored)
    state = model.state_dict()
    keys = head_keys(model)
    if set(keys) != set(head) or any(state[k].shape != head[k].shape for k in keys):
        raise ArtifactError(f"{where}: the stored head {sorted(head)} does not fit the base's head "
                            f"{sorted(keys)}; the mask was trained for another architecture.")
    with torch.no_grad():
        for k in keys:
            state[k].copy_(head[k])
    try:
        names = set_masks(model, decoded)
    except FewbitsValueError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
    expected = {n for name, partners in tied.items() for n in [name, *partners]}
    if set(names) != expected:
        raise ArtifactError(f"{where}: the masks cover {sorted(expected ^ set(names))[:5]} differently "
                            "from this base (tied weights differ); give the base it was trained on.")
    for p in model.parameters():
        p.requires_grad_(False)
    return model
