"""Save a compressed model as a compact artifact directory, and load it back bit-identically.

``save`` writes bit-packed codes, codebooks and every uncompressed tensor into one safetensors file,
a JSON manifest, and what rebuilds the base model (a Hugging Face config, or a built-in model's name
and arguments); nothing is pickled and the directory appears atomically (written beside it, then
renamed). ``load`` checks the checksum and that the artifact fits the base model before it changes
anything; every problem is an :class:`~fewbits.errors.ArtifactError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import ArtifactError, FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.io.format import (CODEBOOK_DTYPES, CONFIG_FILE, DTYPE_NAMES, FORMAT, FORMAT_VERSION, MANIFEST_FILE,
                               TENSORS_FILE, dtype_name, read_manifest, read_tensors_file, sha256_hex)
from fewbits.nn.codebook import Codebook
from fewbits.nn.compress import codebook_modules
from fewbits.nn.targets import register_weight_parametrization
from fewbits.quantize.pack import pack, unpack


def _base_recipe(model: nn.Module) -> dict[str, Any]:
    """How to rebuild the architecture: a transformers class + config, a built-in spec, or just the class name."""
    spec = getattr(model, "fewbits_spec", None)
    if isinstance(spec, dict) and "fewbits_model" in spec:
        return {"kind": "builtin", "name": spec["fewbits_model"], "args": dict(spec.get("args", {}))}
    if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
        import transformers

        if getattr(transformers, type(model).__name__, None) is type(model):
            return {"kind": "transformers", "class": type(model).__name__, "config": CONFIG_FILE}
    return {"kind": "module", "class": type(model).__qualname__}


def _check_saveable(model: nn.Module) -> dict[str, tuple[nn.Module, Codebook]]:
    """Only codebook parametrizations can be stored yet: refuse anything else before writing."""
    found = codebook_modules(model)
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            kinds = [type(p).__name__ for p in plist]
            if tensor_name != "weight" or kinds != ["Codebook"]:
                hint = (" Masks are saved apart, as a task mask artifact (fewbits.io.mask_codec."
                        "write_mask_artifact, as `fewbits mask` does), over a base saved without them."
                        if "Mask" in kinds else "")
                raise FewbitsValueError(
                    f"fewbits.save stores only Codebook parametrizations; {name}.{tensor_name} carries {kinds}. "
                    f"Remove the others first.{hint}")
    return found


@contextlib.contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target`` by renames."""
    if target.exists() and not target.is_dir():
        raise bad_param("directory", "a directory path", str(target), "fewbits.save")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise FewbitsValueError(f"fewbits.save: {target} exists and is not a fewbits artifact; give a new or "
                                "empty directory (an existing artifact is replaced).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plain_state(model: nn.Module, skip: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every state_dict entry outside the codebook layers, stored once per shared tensor (aliases)."""
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


def save(model: nn.Module, directory: str | os.PathLike, *, tokenizer: Any = None,
         codebook_dtype: str | torch.dtype = "float32") -> Path:
    """Write ``model`` (compressed or not) as an artifact directory; returns its path.

    Compressed layers are stored as bit-packed codes plus a codebook (``codebook_dtype``
    ``"float32"``, or ``"float16"`` to halve codebook bytes at the cost of rounding them), every other
    tensor as is. ``tokenizer`` (anything with ``save_pretrained``) is saved beside it; get it back
    with :func:`load_tokenizer`. An existing artifact at ``directory`` is replaced atomically.
    Example: ``fewbits.save(model, "out/minilm-4bit", tokenizer=tokenizer)``.
    """
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of fewbits.save must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    name_dtype = dtype_name(codebook_dtype) if isinstance(codebook_dtype, torch.dtype) else codebook_dtype
    if name_dtype not in CODEBOOK_DTYPES:
        raise bad_param("codebook_dtype", f"one of {list(CODEBOOK_DTYPES)}", codebook_dtype, "fewbits.save")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise bad_param("tokenizer", "None or an object with save_pretrained (a Hugging Face tokenizer)",
                        type(tokenizer).__name__, "fewbits.save")
    found = _check_saveable(model)
    from safetensors.torch import save as st_save

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
    state, aliases = _plain_state(model, set(found))
    tensors.update({f"state.{k}": v for k, v in state.items()})
    data = st_save(tensors, metadata={"format": FORMAT})
    recipe = _base_recipe(model)

    target = Path(directory).expanduser()
    with _atomic_directory(target) as tmp:
        (tmp / TENSORS_FILE).write_bytes(data)
        if recipe["kind"] == "transformers":
            model.config.save_pretrained(tmp)
        before = set(os.listdir(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fewbits_version": _version(), "base": recipe,
            "tensors": {"file": TENSORS_FILE, "bytes": len(data), "sha256": sha256_hex(data)},
            "codebook_dtype": name_dtype, "layers": layers, "aliases": aliases,
            "tokenizer_files": sorted(set(os.listdir(tmp)) - before),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
    return target


def _version() -> str:
    from fewbits import __version__

    return __version__


def _build_base(directory: Path, recipe: dict[str, Any]) -> nn.Module:
    """A freshly initialized base model from the recipe (the global RNG is left untouched)."""
    kind = recipe["kind"]
    if kind == "module":
        raise ArtifactError(f"{directory / MANIFEST_FILE}: the base model is a plain {recipe['class']} that fewbits "
                            f"cannot rebuild; pass one: fewbits.load(directory, model={recipe['class']}(...)).")
    with torch.random.fork_rng(devices=[]):
        if kind == "builtin":
            from fewbits.models import BUILTIN_MODELS, build_model

            if recipe["name"] not in BUILTIN_MODELS:
                raise ArtifactError(f"{directory / MANIFEST_FILE}: unknown built-in model {recipe['name']!r} "
                                    f"(known: {sorted(BUILTIN_MODELS)}); upgrade fewbits.")
            try:
                return build_model(recipe["name"], **recipe["args"])
            except (FewbitsValueError, TypeError) as exc:
                raise ArtifactError(f"{directory / MANIFEST_FILE}: cannot build {recipe['name']!r} with "
                                    f"{recipe['args']}: {exc}") from exc
        import transformers

        from fewbits.models.hf import quiet_transformers

        config_path = directory / CONFIG_FILE
        cls = getattr(transformers, recipe["class"], None)
        if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
            raise ArtifactError(f"{directory / MANIFEST_FILE}: {recipe['class']!r} is not a transformers model "
                                f"class of transformers {transformers.__version__}.")
        if not config_path.is_file():
            raise ArtifactError(f"{config_path}: missing; the base model cannot be rebuilt.")
        try:
            with quiet_transformers():
                config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
                return cls(config)
        except Exception as exc:  # transformers raises many kinds for a bad config
            raise ArtifactError(f"{config_path}: cannot rebuild {recipe['class']} from it "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).") from exc


def _fit_to_base(model: nn.Module, manifest: dict[str, Any], entries: dict, directory: Path) -> set[str]:
    """Check that layers and state match the base model; return the modules that get a codebook."""
    where = f"{directory / TENSORS_FILE} does not fit the base model " + (
        f"from {directory / CONFIG_FILE}" if manifest["base"]["kind"] == "transformers" else "")
    modules = dict(model.named_modules())
    replaced: set[str] = set()
    for name, layer in manifest["layers"].items():
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
    stored = {n.removeprefix("state."): e for n, e in entries.items() if n.startswith("state.")}
    given = set(stored) | set(manifest["aliases"])
    missing, unexpected = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{where}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]} "
                            "(an artifact for another base model?).")
    for key, entry in stored.items():
        if tuple(expected[key].shape) != entry.shape or expected[key].dtype != entry.dtype:
            raise ArtifactError(f"{where}: tensor {key!r} is {dtype_name(entry.dtype)} {list(entry.shape)} in the "
                                f"artifact but {dtype_name(expected[key].dtype)} {list(expected[key].shape)} in the base model.")
    return replaced


def load(directory: str | os.PathLike, *, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the compressed model saved by :func:`save`, in eval mode; outputs are bit-identical.

    The base model is rebuilt from the artifact (Hugging Face config or built-in name); for a plain
    ``nn.Module`` pass a fresh instance of its class as ``model`` (it is filled in place).
    Raises ArtifactError (naming the file) for a missing, truncated or altered file, a newer format
    version, or an artifact that does not fit the base model.
    Example: ``model = fewbits.load("out/minilm-4bit")``.
    """
    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    data, entries, _ = read_tensors_file(directory, manifest)
    if model is None:
        model = _build_base(directory, manifest["base"])
    elif not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of fewbits.load must be a torch.nn.Module or None. "
                               f"Got {type(model).__name__} instead.")
    elif any(parametrize.is_parametrized(m) for m in model.modules()):
        raise bad_param("model", "a plain base model without parametrizations", type(model).__name__, "fewbits.load")
    elif manifest["base"].get("class", type(model).__name__) not in (type(model).__name__, type(model).__qualname__):
        raise ArtifactError(f"{directory / MANIFEST_FILE}: saved from a {manifest['base']['class']}, "
                            f"not a {type(model).__name__}.")
    _fit_to_base(model, manifest, entries, directory)

    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise ArtifactError(f"{directory / TENSORS_FILE}: unreadable ({exc}).") from exc
    state = {n.removeprefix("state."): t for n, t in tensors.items() if n.startswith("state.")}
    state.update({alias: state[key] for alias, key in manifest["aliases"].items()})
    modules = dict(model.named_modules())
    codebooks = []
    for name, layer in manifest["layers"].items():
        shape, bits = layer["shape"], layer["bits"]
        codes = unpack(tensors[f"codes.{name}"], bits, math.prod(shape)).reshape(shape)
        device = modules[name].weight.device
        book = tensors[f"codebook.{name}"].to(device, DTYPE_NAMES[layer["dtype"]])
        codebooks.append(([name, *layer["tied"]], Codebook(codes.to(device), book, bits, layer["scheme"])))
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    for members, cb in codebooks:
        for member in members:
            register_weight_parametrization(modules[member], cb, drop_original=True)
    return model.eval()


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved with the artifact (``fewbits.save(..., tokenizer=...)``)."""
    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    if not manifest["tokenizer_files"]:
        raise ArtifactError(f"{directory / MANIFEST_FILE}: the artifact was saved without a tokenizer; "
                            "pass tokenizer= to fewbits.save.")
    missing = [f for f in manifest["tokenizer_files"] if not (directory / f).is_file()]
    if missing:
        raise ArtifactError(f"{directory / missing[0]}: tokenizer file missing.")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for damaged tokenizer files
        raise ArtifactError(f"{directory}: cannot load the tokenizer ({type(exc).__name__}: {exc}).") from exc
