"""The codebook method's tensors in and out of the artifact container.

Tensor names: ``codes.<layer>`` (the layer's codes bit-packed, flat uint8), ``codebook.<layer>``
(``(n_groups, 2**bits)``, float32 or float16) and ``state.<key>`` (every other entry of the
model's ``state_dict``: biases, norms, the head, buffers). Manifest section::

    {"codebook_dtype": "float32",
     "layers": {"<layer>": {"shape": [...], "dtype": "float32", "bits": 4, "scheme": "kmeans",
                            "n_groups": 1, "tied": ["<other module sharing this weight>", ...]}},
     "aliases": {"<state key>": "<state key stored once for both>"}}

Section version 2 (``"version": 2`` in the section, written only when some layer keeps outliers, so
every other artifact stays readable by older fewbits): a layer may hold ``"outliers": k``, with
tensors ``outlier_index.<layer>`` (sorted flat positions, int32, ``(k,)``) and
``outlier_values.<layer>`` (exact values in the codebook dtype, ``(k,)``) of the weights kept beside
the codebook.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits._util.tensorfile import DTYPE_NAMES, dtype_name, is_int
from fewbits.errors import ArtifactError, FewbitsValueError, bad_param
from fewbits.methods.base import Saved, Stored
from fewbits.methods.codebook.apply import codebook_modules
from fewbits.nn.codebook import Codebook
from fewbits.nn.targets import register_weight_parametrization
from fewbits.quantize.base import MAX_BITS
from fewbits.quantize.pack import pack, packed_nbytes, unpack
from fewbits.runtime import PackedLayer, PackedWeight, install, to_training

CODEBOOK_DTYPES = ("float32", "float16")
SECTION_VERSION = 2  # 2: layers may keep outliers
OUTLIER_TENSORS = ("outlier_index", "outlier_values")


def _check_saveable(model: nn.Module) -> dict[str, tuple[nn.Module, Codebook]]:
    """Only codebook parametrizations are stored here: refuse anything else before writing."""
    found = codebook_modules(model)
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            kinds = [type(p).__name__ for p in plist]
            if tensor_name != "weight" or kinds != ["Codebook"]:
                hint = (" Masks are saved apart, as a task mask artifact (fewbits.protocols.mask.save_mask, "
                        "as `fewbits mask` does), over a base saved without them." if "Mask" in kinds else "")
                raise FewbitsValueError(
                    f"fewbits.save stores only Codebook parametrizations; {name}.{tensor_name} carries {kinds}. "
                    f"Remove the others first.{hint}")
    return found


def plain_state(model: nn.Module, skip: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every state_dict entry outside the ``skip`` layers, stored once per shared tensor (aliases)."""
    state, aliases, seen = {}, {}, {}
    for key, value in model.state_dict().items():
        if key.rsplit(".parametrizations.", 1)[0] in skip:  # codes and codebook are stored packed
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 tuple(value.stride()), value.dtype)
        if ident in seen and value.numel():
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        state[key] = value.detach().to("cpu").contiguous().clone()
    return state, aliases


def write(model: nn.Module, *, codebook_dtype: str | torch.dtype = "float32") -> Saved:
    """Packed codes and codebooks of every compressed layer, every other tensor as is (a model loaded in the
    packed run-time form is saved through a training-form copy)."""
    if any(isinstance(m, PackedLayer) for m in model.modules()):
        model = to_training(copy.deepcopy(model))
    name_dtype = dtype_name(codebook_dtype) if isinstance(codebook_dtype, torch.dtype) else codebook_dtype
    if name_dtype not in CODEBOOK_DTYPES:
        raise bad_param("codebook_dtype", f"one of {list(CODEBOOK_DTYPES)}", codebook_dtype, "fewbits.save")
    found = _check_saveable(model)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    by_codebook: dict[int, str] = {}
    for name, (_, cb) in found.items():
        if id(cb) in by_codebook:
            layers[by_codebook[id(cb)]]["tied"].append(name)
            continue
        by_codebook[id(cb)] = name
        tensors[f"codes.{name}"] = pack(cb.codes.cpu(), cb.bits)
        tensors[f"codebook.{name}"] = cb.codebook.detach().to("cpu", DTYPE_NAMES[name_dtype]).contiguous()
        layers[name] = {"shape": list(cb.shape), "dtype": dtype_name(cb.codebook.dtype), "bits": cb.bits,
                        "scheme": cb.scheme, "n_groups": cb.n_groups, "tied": []}
        if cb.n_outliers:
            tensors[f"outlier_index.{name}"] = cb.outlier_index.to("cpu", torch.int32)
            tensors[f"outlier_values.{name}"] = cb.outlier_values.detach().to("cpu", DTYPE_NAMES[name_dtype])
            layers[name]["outliers"] = cb.n_outliers
    state, aliases = plain_state(model, set(found))
    tensors.update({f"state.{k}": v for k, v in state.items()})
    data: dict[str, Any] = {"codebook_dtype": name_dtype, "layers": layers, "aliases": aliases}
    if any("outliers" in layer for layer in layers.values()):
        data = {"version": SECTION_VERSION, **data}
    return Saved(tensors, data, model)


def _expect(ok: bool, stored: Stored, what: str) -> None:
    if not ok:
        raise ArtifactError(f"{stored.path.parent / 'fewbits.json'}: malformed manifest: {what}; save the model again.")


def _check_layer(name: str, layer: object, stored: Stored) -> None:
    where = f"layer {name!r}"
    _expect(isinstance(layer, dict), stored, f"{where} must be an object")
    shape, bits, n_groups = layer.get("shape"), layer.get("bits"), layer.get("n_groups")
    _expect(isinstance(shape, list) and len(shape) >= 1 and all(is_int(s, 1) for s in shape), stored,
            f"{where}: 'shape' must be a list of positive ints")
    _expect(is_int(bits, 1) and bits <= MAX_BITS, stored, f"{where}: 'bits' must be an int in [1, {MAX_BITS}]")
    _expect(is_int(n_groups, 1) and math.prod(shape) % n_groups == 0, stored,
            f"{where}: 'n_groups' must be a positive int dividing the weight's size")
    _expect(layer.get("dtype") in DTYPE_NAMES and DTYPE_NAMES[layer["dtype"]].is_floating_point, stored,
            f"{where}: 'dtype' must name a floating-point dtype")
    _expect(isinstance(layer.get("scheme"), str), stored, f"{where}: 'scheme' must be a string")
    tied = layer.get("tied")
    _expect(isinstance(tied, list) and all(isinstance(t, str) for t in tied), stored,
            f"{where}: 'tied' must be a list of names")
    outliers = layer.get("outliers", 0)
    _expect(is_int(outliers) and outliers < math.prod(shape) and (stored.data.get("version", 1) >= 2 or not outliers),
            stored, f"{where}: 'outliers' must be an int in [0, the weight's size) (section version 2)")


def _fail(stored: Stored, problem: str) -> ArtifactError:
    return ArtifactError(f"{stored.path}: {problem}; save the model again.")


def check(stored: Stored) -> None:
    """Types and ranges of the section; every layer has its codes and codebook at the sizes its bits imply."""
    data, entries = stored.data, stored.entries
    version = data.get("version", 1)
    _expect(is_int(version, 1), stored, "'version' must be a positive int")
    if version > SECTION_VERSION:
        raise ArtifactError(f"{stored.path.parent / 'fewbits.json'}: its codebook section has version {version}, "
                            f"newer than the version {SECTION_VERSION} this fewbits reads; upgrade fewbits.")
    _expect(data.get("codebook_dtype") in CODEBOOK_DTYPES, stored, f"'codebook_dtype' must be one of {CODEBOOK_DTYPES}")
    _expect(isinstance(data.get("layers"), dict), stored, "'layers' must be an object")
    aliases = data.get("aliases")
    _expect(isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()),
            stored, "'aliases' must map names to names")
    codebook_dtype = DTYPE_NAMES[data["codebook_dtype"]]
    for name, layer in data["layers"].items():
        _check_layer(name, layer, stored)
        codes, book = entries.get(f"codes.{name}"), entries.get(f"codebook.{name}")
        if codes is None or book is None:
            raise _fail(stored, f"layer {name!r} of the manifest has no codes or codebook tensor")
        n_bytes = packed_nbytes(math.prod(layer["shape"]), layer["bits"])
        if codes.dtype != torch.uint8 or codes.shape != (n_bytes,):
            raise _fail(stored, f"codes of layer {name!r}: expected {n_bytes} uint8 bytes for {layer['bits']}-bit codes "
                                f"of shape {layer['shape']}, found {codes.dtype} {list(codes.shape)}")
        want = (layer["n_groups"], 1 << layer["bits"])
        if book.dtype != codebook_dtype or book.shape != want:
            raise _fail(stored, f"codebook of layer {name!r}: expected {data['codebook_dtype']} {list(want)}, "
                                f"found {book.dtype} {list(book.shape)}")
        k = layer.get("outliers", 0)
        index, values = (entries.get(f"{kind}.{name}") for kind in OUTLIER_TENSORS)
        if k and (index is None or values is None or index.dtype != torch.int32 or index.shape != (k,)
                  or values.dtype != codebook_dtype or values.shape != (k,)):
            raise _fail(stored, f"outliers of layer {name!r}: expected {k} int32 positions and {k} "
                                f"{data['codebook_dtype']} values")
    known = {f"{kind}.{name}" for name, layer in data["layers"].items()
             for kind in ("codes", "codebook") + (OUTLIER_TENSORS if layer.get("outliers") else ())}
    stray = sorted(n for n in entries if n not in known and not n.startswith("state."))
    if stray:
        raise _fail(stored, f"unexpected tensors {stray[:5]}")
    kept = {n.removeprefix("state.") for n in entries if n.startswith("state.")}
    dangling = sorted(k for k, v in aliases.items() if v not in kept)
    if dangling:
        raise _fail(stored, f"aliases {dangling[:5]} point to tensors that are not stored")


def fit(model: nn.Module, stored: Stored, where: str = "") -> None:
    """Layers and state must match the base model (an artifact for another base fails here, before any change).

    Reads only shapes and dtypes, so it runs on a model built on the meta device (``fewbits info``, and
    loading before the base is allocated)."""
    where = where or f"{stored.path} does not fit the base model {stored.base_note}".rstrip()
    modules = dict(model.named_modules())
    replaced: set[str] = set()
    for name, layer in stored.data["layers"].items():
        for member in [name, *layer["tied"]]:
            module = modules.get(member)
            if module is None or not isinstance(module._parameters.get("weight"), torch.Tensor):
                raise ArtifactError(f"{where}: it has no layer {member!r} with a weight (an artifact for another "
                                    "base model?).")
            if list(module.weight.shape) != layer["shape"]:
                raise ArtifactError(f"{where}: layer {member!r} has shape {layer['shape']} in the artifact but "
                                    f"{list(module.weight.shape)} in the base model (an artifact for another base model?).")
            replaced.add(member)
    dropped = {f"{member}.weight" for member in replaced}
    expected = {k: v for k, v in model.state_dict().items() if k not in dropped}
    kept = {n.removeprefix("state."): e for n, e in stored.entries.items() if n.startswith("state.")}
    given = set(kept) | set(stored.data["aliases"])
    missing, unexpected = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{where}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]} "
                            "(an artifact for another base model?).")
    for key, entry in kept.items():
        if tuple(expected[key].shape) != entry.shape or expected[key].dtype != entry.dtype:
            raise ArtifactError(f"{where}: tensor {key!r} is {dtype_name(entry.dtype)} {list(entry.shape)} in the "
                                f"artifact but {dtype_name(expected[key].dtype)} {list(expected[key].shape)} in the base model.")


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Loading by assignment gives each state key its own Parameter: make aliases the same object again (tied)."""
    for alias, key in aliases.items():
        (alias_owner, _, alias_name), (owner, _, name) = alias.rpartition("."), key.rpartition(".")
        source, target = model.get_submodule(owner), model.get_submodule(alias_owner)
        value = source._parameters[name] if name in source._parameters else source._buffers[name]
        (target._parameters if alias_name in target._parameters else target._buffers)[alias_name] = value


def _codebook(stored: Stored, name: str, layer: dict, tensors: dict[str, torch.Tensor], book: torch.Tensor) -> Codebook:
    """The training form of one stored layer: codes unpacked, its outliers (if any) written over the rebuilt weight."""
    shape, bits = layer["shape"], layer["bits"]
    index = values = None
    if layer.get("outliers"):
        index, values = tensors[f"outlier_index.{name}"].long(), tensors[f"outlier_values.{name}"]
    try:
        return Codebook(unpack(tensors[f"codes.{name}"], bits, math.prod(shape)).reshape(shape), book, bits,
                        layer["scheme"], index, values)
    except FewbitsValueError as exc:
        raise ArtifactError(f"{stored.path}: layer {name!r}: {exc}") from exc


def read(model: nn.Module, stored: Stored, *, where: str = "") -> nn.Module:
    """Fill a freshly built base model (parameters may be on the meta device): plain state assigned, then on
    every stored layer a packed run-time layer (``fewbits.runtime``: the packed codes as stored), or with
    ``stored.trainable`` a Codebook parametrization (codes unpacked, codebook trainable); returns the model."""
    fit(model, stored, where)
    tensors = stored.load_tensors()
    state = {n.removeprefix("state."): t for n, t in tensors.items() if n.startswith("state.")}
    state.update({alias: state[key] for alias, key in stored.data["aliases"].items()})
    with torch.no_grad():
        model.load_state_dict(state, strict=False, assign=True)
    _retie(model, stored.data["aliases"])
    for name, layer in stored.data["layers"].items():
        shape, bits, members = layer["shape"], layer["bits"], [name, *layer["tied"]]
        book = tensors[f"codebook.{name}"].to(DTYPE_NAMES[layer["dtype"]])
        if not stored.trainable and not layer.get("outliers"):  # outliers keep the Codebook form (exact values)
            model = install(model, members, PackedWeight(tensors[f"codes.{name}"], book, shape, bits, layer["scheme"]))
            continue
        cb = _codebook(stored, name, layer, tensors, book)
        for member in members:
            module = model.get_submodule(member)
            module._parameters["weight"] = nn.Parameter(torch.empty(0, dtype=book.dtype), requires_grad=False)
            register_weight_parametrization(module, cb, drop_original=True)
    return model
