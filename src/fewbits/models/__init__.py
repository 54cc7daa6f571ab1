"""Models: Hugging Face sequence classifiers (offline MiniLM default), ResNet-18 (CIFAR form), a 1-D CNN.

``load_model(name_or_dir, task)`` returns ``(model, tokenizer_or_None)``; ``save_model(model, dir)`` writes a
directory that ``load_model`` reads back. Built-in models are plain ``nn.Module``s whose ``forward(x)``
returns logits; Hugging Face models return outputs with ``.logits``; ``logits_of`` reads either.
Nothing is pickled: weights are safetensors, configs are JSON.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.models.cnn1d import CNN1d
from fewbits.models.hf import MINILM_ALIASES, load_hf, minilm_path, quiet_transformers, tiny_bert
from fewbits.models.resnet import ResNet18

if TYPE_CHECKING:
    from fewbits.data.base import Task

__all__ = ["BUILTIN_MODELS", "CNN1d", "ResNet18", "build_model", "forward_batch", "load_model", "logits_of",
           "model_names", "save_model"]

# Built-in models by name; their constructor keyword arguments are what config.json stores as "args".
BUILTIN_MODELS: dict[str, type[nn.Module]] = {"resnet18": ResNet18, "cnn1d": CNN1d}

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def model_names() -> list[str]:
    """Every name ``load_model`` accepts besides directories and hub ids."""
    return [MINILM_ALIASES[0], "tiny-bert", *BUILTIN_MODELS]


def build_model(name: str, **args: Any) -> nn.Module:
    """A freshly initialized built-in model (torch's global RNG draws the weights), e.g. ``build_model("cnn1d")``.

    The name and ``args`` are recorded on the model (``model.fewbits_spec``) so that ``save_model`` can
    write them and ``load_model`` can rebuild the same architecture.
    """
    if name not in BUILTIN_MODELS:
        raise bad_param("name", f"one of {sorted(BUILTIN_MODELS)}", name, "build_model")
    cls = BUILTIN_MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise bad_param("args", f"keyword arguments of {name} among {sorted(accepted)}", unknown, "build_model")
    model = cls(**args)
    model.fewbits_spec = {"fewbits_model": name, "args": dict(args)}
    return model


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits in a model's outputs: the tensor itself (built-ins) or ``outputs.logits`` (Hugging Face)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def forward_batch(model: nn.Module, batch: Mapping[str, Any]) -> Any:
    """Run ``model`` on a collated batch: ``model(batch["x"])`` for images and signals, else the tokenizer fields."""
    if "x" in batch:
        return model(batch["x"])
    return model(**{k: v for k, v in batch.items() if k != "labels"})


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save ``model`` (and its tokenizer) into ``directory`` so that ``load_model(directory)`` rebuilds it.

    Hugging Face models use ``save_pretrained`` (safetensors); built-ins write ``config.json``
    (``{"fewbits_model": name, "args": {...}}``) and ``model.safetensors``. Returns the directory.
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model in .module
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        with quiet_transformers():
            model.save_pretrained(out)
    elif hasattr(model, "fewbits_spec"):
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        _atomic_write(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(model.fewbits_spec, indent=2)))
    else:
        raise FewbitsTypeError(
            f"The 'model' parameter of save_model must be a Hugging Face model or a built-in model made by "
            f"build_model/load_model ({sorted(BUILTIN_MODELS)}). Got {type(model).__name__} instead.")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _load_builtin_dir(directory: Path, spec: dict[str, Any], num_labels: int | None) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name, args = spec.get("fewbits_model"), spec.get("args", {})
    if name not in BUILTIN_MODELS or not isinstance(args, dict):
        raise FewbitsValueError(f"{directory / CONFIG_FILE} names an unknown built-in model {name!r} "
                                f"(known: {sorted(BUILTIN_MODELS)}); re-save the model with save_model.")
    model = build_model(name, **args)
    if num_labels is not None and model.fc.out_features != num_labels:
        raise FewbitsValueError(f"The model in {directory} has {model.fc.out_features} classes but the task has "
                                f"{num_labels}; give a model fine-tuned on this task.")
    try:
        state = load_file(directory / WEIGHTS_FILE)
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise FewbitsValueError(f"Could not read the weights of {directory}: {str(exc).splitlines()[0]}. "
                                f"Re-save the model with save_model or fewbits finetune.") from exc
    return model


def load_model(name_or_dir: str | os.PathLike = "minilm", task: Task | None = None, *,
               num_labels: int | None = None, new_head: bool = True, **kw: Any) -> tuple[nn.Module, Any]:
    """Load a model by name, directory or hub id; returns ``(model, tokenizer)`` (tokenizer None for built-ins).

    Names: ``minilm`` (all-MiniLM-L6-v2, offline), ``tiny-bert`` (2-layer BERT, hidden 32, for tests),
    ``resnet18``, ``cnn1d``. A directory written by ``save_model`` (or any Hugging Face model directory) is
    read back, and so is a fewbits artifact (``fewbits.save``, a QAT export: compressed layers kept as they
    are); any other string is tried as a Hugging Face hub id. The classification head gets
    ``num_labels`` (default: the task's; 1 means regression). ``new_head=False`` refuses a model whose head
    is missing or of another size, or freshly initialized (for evaluation); ``kw`` go to the built-in constructor.

    Example: ``model, tokenizer = load_model("minilm", load_task("vader"))``.
    """
    if num_labels is None and task is not None:
        num_labels = task.num_labels
    label_names = getattr(task, "label_names", None)
    name = str(name_or_dir)
    path = Path(name).expanduser()
    model, tokenizer = _load(name, path, num_labels, label_names, new_head, kw)
    if task is not None and (task.kind == "text") != (tokenizer is not None):
        wanted = "a text model (minilm, tiny-bert, a Hugging Face model)" if task.kind == "text" else \
            "a built-in model for images or signals (resnet18, cnn1d)"
        raise FewbitsValueError(f"Model {name!r} does not fit task {task.name!r}, whose inputs are "
                                f"{task.kind}s; give {wanted}.")
    return model, tokenizer


def _load(name: str, path: Path, num_labels: int | None, label_names: list[str] | None, new_head: bool,
          kw: dict[str, Any]) -> tuple[nn.Module, Any]:
    if name.lower() in MINILM_ALIASES and not path.exists():
        _no_kwargs(kw, name)
        return load_hf(minilm_path(), num_labels=num_labels, label_names=label_names, local=True, new_head=new_head,
                       shown=name)
    if name in ("tiny-bert", *BUILTIN_MODELS) and not path.exists() and not new_head:
        raise FewbitsValueError(f"Model {name!r} is freshly initialized, so it has no trained classification head; "
                                f"fine-tune it first (fewbits finetune --model {name} --out DIR) and give DIR.")
    if name == "tiny-bert" and not path.exists():
        return tiny_bert(num_labels if num_labels is not None else 2, label_names, **kw)
    if name in BUILTIN_MODELS and not path.exists():
        if num_labels is not None:
            kw.setdefault("num_classes", num_labels)
        return build_model(name, **kw), None
    if path.exists():
        if not path.is_dir():
            raise FewbitsValueError(f"Model {name!r} is a file, not a model directory; give the directory that "
                                    f"holds config.json (written by fewbits finetune or save_model).")
        from fewbits.io.format import MANIFEST_FILE

        # a fewbits artifact, or the run folder of fewbits quantize (OUT/artifact) or fewbits qat (OUT/model)
        inner = [] if (path / CONFIG_FILE).is_file() else [path / "artifact", path / "model"]
        for folder in (path, *inner):
            if (folder / MANIFEST_FILE).is_file():
                _no_kwargs(kw, name)
                return _load_artifact(folder, num_labels)
        config = path / CONFIG_FILE
        if not config.is_file():
            raise FewbitsValueError(f"Directory {name!r} holds no model (no {CONFIG_FILE}); give a directory written "
                                    f"by fewbits finetune or save_model, or one of {model_names()}.")
        try:
            spec = json.loads(config.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FewbitsValueError(f"{config} is not valid JSON ({exc}); re-save the model.") from exc
        if isinstance(spec, dict) and "fewbits_model" in spec:
            _no_kwargs(kw, name)
            return _load_builtin_dir(path, spec, num_labels), None
        _no_kwargs(kw, name)
        return load_hf(path, num_labels=num_labels, label_names=label_names, local=True, new_head=new_head)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise FewbitsValueError(f"Model directory {name!r} does not exist; give an existing directory, a hub id "
                                f"or one of {model_names()}.")
    _no_kwargs(kw, name)
    return load_hf(name, num_labels=num_labels, label_names=label_names, local=False, new_head=new_head)


def _load_artifact(path: Path, num_labels: int | None) -> tuple[nn.Module, Any]:
    """A compressed (``fewbits.save``) or QAT (``export_qat``) artifact in eval mode, with its tokenizer if saved."""
    from fewbits.io import load, load_tokenizer
    from fewbits.io.format import read_manifest
    from fewbits.io.mask_codec import is_mask_artifact
    from fewbits.qat import QAT_FILE, load_qat

    if is_mask_artifact(path):
        raise FewbitsValueError(f"{path} is a task mask, which needs the base it was trained on: give the base as "
                                f"the model and this folder as the mask (fewbits eval --model BASE --mask {path}, "
                                "or fewbits.sparsify.load_mask(BASE, MASK_DIR) in Python).")
    model = load_qat(path) if (path / QAT_FILE).is_file() else load(path)
    tokenizer = load_tokenizer(path) if read_manifest(path)["tokenizer_files"] else None
    classes = model.config.num_labels if hasattr(model, "config") else getattr(getattr(model, "fc", None),
                                                                                 "out_features", None)
    if num_labels is not None and classes is not None and classes != num_labels:
        raise FewbitsValueError(f"The model in {path} has {classes} outputs but the task has {num_labels}; give a "
                                "model trained on this task.")
    return model, tokenizer


def _no_kwargs(kw: dict[str, Any], name: str) -> None:
    if kw:
        raise bad_param("kw", f"empty for {name!r} (only tiny-bert and built-in models take arguments)",
                        sorted(kw), "load_model")
