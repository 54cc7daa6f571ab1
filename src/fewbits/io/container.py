"""The one artifact container: save any method's model as a directory, and read it back bit-identically.

``save`` asks the model's method (the registry, by name) for its tensors and manifest section, writes
them into one safetensors file, adds what rebuilds the base model (a Hugging Face config, a
built-in model's name and arguments, or the checksum of a base artifact) and the tokenizer, and
lists every file with its size and sha256 in ``fewbits.json``; nothing is pickled and the
directory appears atomically. :func:`read_artifact` opens, reads and hashes every file once,
checking sizes before reading and checksums after; :func:`load` dispatches on the manifest's
``method`` through the registry. The base model arrives through a callback (``build_base``):
this layer never imports the model zoo. Every problem is an ArtifactError naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from fewbits._util.fs import atomic_directory, sha256_hex
from fewbits._util.untrusted import check_member, parse_json, read_member
from fewbits._util.tensorfile import TensorEntry, parse_header, tensor_views
from fewbits.errors import ArtifactError, FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.io import v1
from fewbits.io.format import (CONFIG_FILE, FORMAT, FORMAT_VERSION, MANIFEST_FILE, TENSORS_FILE, check_manifest,
                               check_version, fail, read_manifest_text)
from fewbits.methods import registry
from fewbits.methods.base import Stored

BuildBase = Callable[["Artifact"], nn.Module]
MAX_UNRECORDED_BYTES = 1 << 30  # version 1 did not record config and tokenizer sizes: bound what is read


@dataclass(frozen=True)
class Artifact:
    """An artifact read and verified once: its manifest fields, every file's bytes, the tensors' header."""

    directory: Path
    format_version: int
    method: str
    base: dict[str, Any]
    data: dict[str, Any]
    files: dict[str, bytearray]
    tokenizer_files: list[str]
    tensors_file: str
    entries: dict[str, TensorEntry]
    header_bytes: int  # safetensors header (8 + JSON)
    manifest_bytes: int
    fewbits_version: str = "?"

    def stored(self, trainable: bool = True) -> Stored:
        """The view a method checks and reads: its section, the parsed header and the tensors on demand."""
        path = self.directory / self.tensors_file

        def load_tensors() -> dict[str, torch.Tensor]:  # the header was checked when read: views of the bytes read
            views = tensor_views(self.files[self.tensors_file], self.entries, self.header_bytes)
            return {k: v.clone() for k, v in views.items()} if trainable else views

        note = f"from {self.directory / CONFIG_FILE}" if self.base.get("kind") == "transformers" else ""
        return Stored(path, self.data, self.entries, load_tensors, note, trainable)

    def config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` of the base, parsed from the bytes read once."""
        if CONFIG_FILE not in self.files:
            raise ArtifactError(f"{self.directory / CONFIG_FILE}: missing; the base model cannot be rebuilt.")
        return parse_json(self.files[CONFIG_FILE], self.directory / CONFIG_FILE, fix="save the model again")


def _base_recipe(model: nn.Module) -> dict[str, Any]:
    """How to rebuild the architecture: a transformers class + config, a built-in spec, or just the class name."""
    spec = getattr(model, "fewbits_spec", None)
    if isinstance(spec, dict) and "fewbits_model" in spec:
        return {"kind": "builtin", "name": spec["fewbits_model"], "args": dict(spec.get("args", {}))}
    if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
        import transformers  # deferred: only a Hugging Face model reaches here

        if getattr(transformers, type(model).__name__, None) is type(model):
            return {"kind": "transformers", "class": type(model).__name__, "config": CONFIG_FILE}
    return {"kind": "module", "class": type(model).__qualname__}


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise bad_param("directory", "a directory path", str(target), "fewbits.save")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise FewbitsValueError(f"fewbits.save: {target} exists and is not a fewbits artifact; give a new or "
                                "empty directory (an existing artifact is replaced).")


def _version() -> str:
    from fewbits import __version__  # the package root: only its version string

    return __version__


def save(model: nn.Module, directory: str | os.PathLike, *, method: str | None = None, tokenizer: Any = None,
         **options: Any) -> Path:
    """Write ``model`` as an artifact directory of ``method`` (``options`` go to the method's writer); returns it.

    ``method`` defaults to the method of ``options["config"]`` when one is given (a QATConfig: ``qat``),
    else ``codebook`` (every Codebook stored packed, every other tensor as is; ``codebook_dtype``
    ``"float16"`` halves codebook bytes at the cost of rounding them).

    An existing artifact at ``directory`` is replaced atomically; ``tokenizer`` (anything with
    ``save_pretrained``) is saved beside it and covered by the checksums.
    """
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of fewbits.save must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise bad_param("tokenizer", "None or an object with save_pretrained (a Hugging Face tokenizer)",
                        type(tokenizer).__name__, "fewbits.save")
    target = Path(directory).expanduser()
    _check_target(target)
    if method is None:
        method = registry.method_of(options["config"]).name if "config" in options else "codebook"
    saved = registry.get(method).write(model, **options)
    data = st_save(saved.tensors, metadata={"format": FORMAT})
    base = saved.base if saved.model is None else _base_recipe(saved.model)
    with atomic_directory(target) as tmp:
        (tmp / TENSORS_FILE).write_bytes(data)
        if base["kind"] == "transformers":
            saved.model.config.save_pretrained(tmp)
        before = set(os.listdir(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {}
        for name in sorted(os.listdir(tmp)):
            content = (tmp / name).read_bytes()
            files[name] = {"bytes": len(content), "sha256": sha256_hex(content)}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "fewbits_version": _version(),
                    "method": method, "base": base, "files": files,
                    "tokenizer_files": sorted(set(files) - before), "data": saved.data}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
    return target


def _read_files(directory: Path, files: dict[str, dict[str, Any]]) -> dict[str, bytearray]:
    """Every listed file: first each one's kind and size (a regular file of the recorded size; links, FIFOs and
    devices refused unopened), then each is read once and its checksum checked (None: not recorded, version 1:
    then bounded by :data:`MAX_UNRECORDED_BYTES`)."""
    for name, info in files.items():
        check_member(directory, name, size=info["bytes"], max_bytes=MAX_UNRECORDED_BYTES, fix="save the model again")
    out = {}
    for name, info in files.items():
        content = read_member(directory, name, size=info["bytes"], max_bytes=MAX_UNRECORDED_BYTES,
                              fix="save the model again")
        if info["sha256"] is not None and sha256_hex(content) != info["sha256"]:
            raise fail(directory / name, "sha256 checksum differs from the manifest (the file was altered or damaged)")
        out[name] = content
    return out


def read_artifact(directory: str | os.PathLike) -> Artifact:
    """Open, read and verify an artifact once (any format version this fewbits reads)."""
    directory = Path(directory).expanduser()
    manifest = read_manifest_text(directory)
    path = directory / MANIFEST_FILE
    if manifest.get("format") == FORMAT and check_version(manifest, path) >= 2:
        check_manifest(manifest, path)
        fields = {k: manifest[k] for k in ("method", "base", "files", "tokenizer_files", "data")}
        fields.update(format_version=manifest["format_version"], tensors_file=TENSORS_FILE)
    else:
        fields = v1.upgrade(manifest, directory)
    try:
        method = registry.get(fields["method"])
    except FewbitsValueError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    files = _read_files(directory, fields["files"])
    tensors_file = fields["tensors_file"]
    entries, header_bytes = parse_header(files[tensors_file], directory / tensors_file)
    artifact = Artifact(directory, fields["format_version"], fields["method"], fields["base"], fields["data"], files,
                        list(fields["tokenizer_files"]), tensors_file, entries, header_bytes, path.stat().st_size,
                        str(manifest.get("fewbits_version", "?")))
    method.check(artifact.stored())
    return artifact


def load(directory: str | os.PathLike | Artifact, *, model: nn.Module | None = None,
         build_base: BuildBase | None = None, trainable: bool = False) -> nn.Module:
    """Rebuild the model saved by :func:`save`, in eval mode; outputs are bit-identical.

    The base model is ``model`` (a fresh, plain instance, filled in place) or ``build_base(artifact)``
    (whose parameters may be on the meta device: the method fills them). ``trainable`` asks for the
    training representation instead of packed run-time layers (see :mod:`fewbits.runtime`).
    """
    artifact = directory if isinstance(directory, Artifact) else read_artifact(directory)
    if model is None:
        if build_base is None:
            raise ArtifactError(f"{artifact.directory / MANIFEST_FILE}: no base model to fill; pass model= or "
                                "build_base= (fewbits.load passes both as needed).")
        model = build_base(artifact)
    elif not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of fewbits.load must be a torch.nn.Module or None. "
                               f"Got {type(model).__name__} instead.")
    elif any(parametrize.is_parametrized(m) for m in model.modules()) and artifact.base["kind"] != "artifact":
        raise bad_param("model", "a plain base model without parametrizations", type(model).__name__, "fewbits.load")
    elif artifact.base.get("class", type(model).__name__) not in (type(model).__name__, type(model).__qualname__):
        raise ArtifactError(f"{artifact.directory / MANIFEST_FILE}: saved from a {artifact.base['class']}, "
                            f"not a {type(model).__name__}.")
    return registry.get(artifact.method).read(model, artifact.stored(trainable)).eval()
