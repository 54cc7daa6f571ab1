"""One way in for every saved model: ``fewbits.load`` and the loader of every command dispatch the same way.

:func:`load` reads an artifact through the container (``fewbits.io``), which asks the method named in
its manifest to rebuild the model; the base model arrives from here by a callback, built from the
model zoo (``fewbits.models``) or, for a task mask, loaded from the base it was trained on (found by
the checksum of its weights), once its size is checked on the meta device (see below). :func:`load_any` is what the commands call with a ``--model``: an
artifact (or the run folder of one) goes through :func:`load`, anything else to
:func:`fewbits.models.load_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from fewbits._util.fs import sha256_hex
from fewbits._util.untrusted import parse_json, private_copy
from fewbits.errors import ArtifactError, FewbitsValueError, bad_param
from fewbits.io import container
from fewbits.io.container import Artifact, read_artifact
from fewbits.io.format import CONFIG_FILE, MANIFEST_FILE
from fewbits.methods import registry
from fewbits.models import load_model, rebuild
from fewbits.models.hf import MINILM_ALIASES, minilm_path

if TYPE_CHECKING:
    from fewbits.data.base import Task

WEIGHT_SUFFIXES = (".safetensors", ".bin")
RUN_FOLDERS = ("artifact", "model")  # where fewbits quantize and fewbits qat put the artifact of a run


# --- before a base is allocated -------------------------------------------------------------------------------
# The sizes that decide allocation (a config.json's vocabulary size or layer count, a built-in model's arguments
# in the manifest) are believed only once checked against the files: the base is first built on the meta device
# (no memory) with at most MODULES_PER_TENSOR modules per stored tensor, its values counted against what the
# tensors file can fill (at most 8 per byte: a 1-bit code is the smallest a value is stored in), and every stored
# tensor's shape compared with it (Method.fit). Only a base that passes is built for real, so a loader's memory
# stays within a small multiple of the files plus the model they describe. `fewbits info` runs the same checks.

MODULES_PER_TENSOR = 4  # a layer holds 1-4 tensors; containers (ModuleList, blocks) add a few more modules
MODULE_SLACK = 256
VALUES_SLACK = 1 << 20  # buffers a model builds but does not store (position ids, rotary tables)


class _TooManyModules(Exception):
    """Raised inside a meta build that registers more modules than the artifact can fill."""


@contextlib.contextmanager
def _module_budget(limit: int) -> Iterator[None]:
    """Abort a model build (with :class:`_TooManyModules`) once it has registered ``limit`` submodules."""
    count = [0]

    def hook(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        count[0] += 1
        if count[0] > limit:
            raise _TooManyModules

    handle = register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _source(artifact: Artifact) -> Path:
    """The file whose sizes describe the base: config.json for Hugging Face models, else the manifest."""
    return artifact.directory / (CONFIG_FILE if artifact.base.get("kind") == "transformers" else MANIFEST_FILE)


def _check_numbers(artifact: Artifact, tensors: int) -> None:
    """Every int of the base's description (config.json, or a built-in's arguments) at most what the tensors can
    fill, and the label count at most a head the tensors can hold: checked before the config itself is built
    (transformers makes a dict of ``num_labels`` entries at once)."""
    description = artifact.config() if artifact.base.get("kind") == "transformers" else artifact.base.get("args", {})
    stack: list[tuple[str, object]] = [("", description)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}".lstrip("."), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 8 * tensors + VALUES_SLACK:
            raise ArtifactError(f"{_source(artifact)}: {key} = {value} is more than the {tensors:,} bytes of "
                                f"{artifact.tensors_file} can fill (altered?); save the model again.")
    for key in ("num_labels", "num_classes"):
        labels = description.get(key)
        if isinstance(labels, int) and labels > tensors // 2:  # a head row takes at least 16 stored bits
            raise ArtifactError(f"{_source(artifact)}: {key} = {labels} is more than a head {artifact.tensors_file} "
                                "can hold (altered?); save the model again.")


def meta_base(artifact: Artifact, build: Callable[[Artifact], nn.Module]) -> nn.Module:
    """``build(artifact)`` on the meta device, refused when it is larger than the artifact's tensors can fill."""
    tensors = len(artifact.files[artifact.tensors_file])
    _check_numbers(artifact, tensors)
    limit = MODULES_PER_TENSOR * len(artifact.entries) + MODULE_SLACK
    try:
        with _module_budget(limit), torch.device("meta"):
            model = build(artifact)
    except _TooManyModules:
        raise ArtifactError(f"{_source(artifact)}: describes a base model of more than {limit:,} modules, more than "
                            f"the {len(artifact.entries)} tensors of {artifact.tensors_file} can fill (altered?); "
                            "save the model again.") from None
    values = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if values > 8 * tensors + VALUES_SLACK:
        raise ArtifactError(f"{_source(artifact)}: describes a base model of {values:,} values, more than the "
                            f"{tensors:,} bytes of {artifact.tensors_file} can fill (altered?); save the model again.")
    return model


def check_loadable(artifact: Artifact, build: Callable[[Artifact], nn.Module]) -> None:
    """Everything loading checks before allocating: the base's size (built on the meta device) and the fit of
    every stored tensor to it. A task mask's base is another artifact, checked when it is loaded."""
    if artifact.base.get("kind") not in ("transformers", "builtin"):
        return
    method = registry.get(artifact.method)
    model = meta_base(artifact, build)
    if method.fit is not None:
        method.fit(model, artifact.stored())


# --- loading ----------------------------------------------------------------------------------------

def resolve_base(base: str | os.PathLike) -> Path:
    """The directory of a base: itself, or the offline MiniLM's for ``minilm``."""
    path = Path(base).expanduser()
    if not path.exists() and str(base).lower() in MINILM_ALIASES:
        return minilm_path()
    if not path.is_dir():
        raise bad_param("base", "a base directory (fewbits.save artifact or model directory) or 'minilm'",
                        str(base), "fewbits mask")
    return path


def is_artifact(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a fewbits manifest."""
    return (Path(directory).expanduser() / MANIFEST_FILE).is_file()


def base_checksum(base: str | os.PathLike) -> str:
    """sha256 identifying a base's weights: a fewbits artifact's checksum of its tensors file, else the sha256
    over the directory's weight files (``*.safetensors``, ``*.bin``, names and bytes, in name order)."""
    directory = resolve_base(base)
    if is_artifact(directory):
        artifact = read_artifact(directory)
        if artifact.base["kind"] == "artifact":
            raise ArtifactError(f"{directory}: a task mask cannot be the base of another mask; give its base.")
        return sha256_hex(artifact.files[artifact.tensors_file])
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ArtifactError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) and no fewbits.json; "
                            "give a fewbits.save artifact or a model directory.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _build(artifact: Artifact) -> nn.Module:
    """The fresh base model an artifact's recipe describes, once its size and fit are checked on the meta device."""
    check_loadable(artifact, _rebuild)
    return _rebuild(artifact)


def _rebuild(artifact: Artifact) -> nn.Module:
    """The base model of an artifact's recipe (on the current default device); errors name the file."""
    kind = artifact.base["kind"]
    where = artifact.directory / MANIFEST_FILE
    if kind == "module":
        raise ArtifactError(f"{where}: the base model is a plain {artifact.base['class']} that fewbits cannot "
                            f"rebuild; pass one: fewbits.load(directory, model={artifact.base['class']}(...)).")
    try:
        return rebuild(artifact.base, artifact.config, empty=registry.get(artifact.method).fills_base)
    except FewbitsValueError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
    except ArtifactError:
        raise
    except Exception as exc:  # transformers raises many kinds for a bad config
        raise ArtifactError(f"{artifact.directory / 'config.json'}: cannot rebuild {artifact.base['class']} from it "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).") from exc


def verify(directory: str | os.PathLike) -> Artifact:
    """Read an artifact and run every check loading runs before it allocates (``fewbits info`` calls this)."""
    artifact = read_artifact(directory)
    check_loadable(artifact, _rebuild)
    return artifact


def load_base(base: str | os.PathLike, num_labels: int) -> tuple[nn.Module, Any]:
    """A base for mask training or loading: an artifact (FP32 or quantized) or a model directory or ``minilm``."""
    directory = resolve_base(base)
    if is_artifact(directory):
        return load_with_tokenizer(directory, trainable=True)  # masks go over the Codebook parametrizations
    return load_model(directory, num_labels=num_labels, new_head=True)


def _mask_base(artifact: Artifact, base: str | os.PathLike | None) -> tuple[nn.Module, Any]:
    """The base a mask was trained on: ``base``, checked against the checksum the mask recorded."""
    expected = artifact.base["sha256"]
    source = artifact.base.get("source") or "unknown"
    if base is None:
        raise ArtifactError(f"{artifact.directory} is a task mask, which needs the base it was trained on "
                            f"(recorded: {source}): fewbits.load(MASK_DIR, base=BASE), or "
                            f"fewbits eval --model BASE --mask {artifact.directory}.")
    actual = base_checksum(base)
    if expected != actual:
        raise ArtifactError(f"{artifact.directory}: this mask was trained on another base (sha256 {expected[:12]}..., "
                            f"loaded from {source}), not on {base} (sha256 {actual[:12]}...); give the base it was "
                            "trained on.")
    task = artifact.data.get("info", {}).get("task", {})
    return load_base(base, task.get("num_labels") if isinstance(task, dict) else 1)


def load_with_tokenizer(directory: str | os.PathLike, *, model: nn.Module | None = None,
                        base: str | os.PathLike | None = None, trainable: bool = False,
                        tokenizer: bool = True) -> tuple[nn.Module, Any]:
    """:func:`load`, and the tokenizer saved with the artifact (or with its base), else None
    (``tokenizer=False``: not read, None)."""
    artifact = read_artifact(directory)
    found = None
    if artifact.base["kind"] == "artifact" and model is None:
        model, found = _mask_base(artifact, base)
    model = container.load(artifact, model=model, build_base=_build, trainable=trainable)
    if artifact.tokenizer_files and tokenizer:
        found = _tokenizer(artifact)
    return model, (found if tokenizer else None)


def load(directory: str | os.PathLike, *, model: nn.Module | None = None,
         base: str | os.PathLike | None = None, trainable: bool = False) -> nn.Module:
    """Rebuild a saved model (any method: codebook, QAT export, task mask), in eval mode; outputs are bit-identical.

    Compressed layers come as packed run-time layers (:mod:`fewbits.runtime`: the artifact's bit-packed
    codes and codebooks, frozen); ``trainable=True`` gives the training representation instead (a
    :class:`~fewbits.nn.Codebook` parametrization per layer, codebooks trainable). The base is built
    without initialising its weights (meta device), then filled.

    The base model is rebuilt from the artifact (Hugging Face config or built-in name); for a plain
    ``nn.Module`` pass a fresh instance of its class as ``model``. A task mask needs ``base``, the
    base it was trained on (checked by checksum). Raises ArtifactError (naming the file) for a missing,
    truncated or altered file, a newer format version, or an artifact that does not fit the base model.
    Example: ``model = fewbits.load("out/minilm-4bit")``.
    """
    return load_with_tokenizer(directory, model=model, base=base, trainable=trainable, tokenizer=False)[0]


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved with the artifact (``fewbits.save(..., tokenizer=...)``)."""
    return _tokenizer(read_artifact(directory))


def _tokenizer(artifact: Artifact) -> Any:
    """The tokenizer of an artifact already read, from a private copy of its checked bytes."""
    if not artifact.tokenizer_files:
        raise ArtifactError(f"{artifact.directory / MANIFEST_FILE}: the artifact was saved without a tokenizer; "
                            "pass tokenizer= to fewbits.save.")
    from transformers import AutoTokenizer  # deferred: only text models need it

    # transformers reads files by path: give it a private copy of the bytes already read and checked, so that
    # nothing it opens can be a link, a FIFO or a file changed since
    files = {name: artifact.files[name] for name in (*artifact.tokenizer_files, "config.json") if name in artifact.files}
    for name, content in files.items():  # bounded JSON first: transformers' own parsing would recurse without end
        if name.endswith(".json"):
            parse_json(content, artifact.directory / name, fix="save the model again")
    if CONFIG_FILE in files:  # transformers may build the config, which sizes a dict by num_labels
        _check_numbers(artifact, len(artifact.files[artifact.tensors_file]))
    try:
        with private_copy(files) as folder:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for damaged tokenizer files
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ArtifactError(f"{artifact.directory}: cannot load the tokenizer from "
                            f"{', '.join(artifact.tokenizer_files)} ({type(exc).__name__}: {first}).") from exc


def artifact_folder(path: Path) -> Path | None:
    """The artifact in ``path``: itself, or the artifact of a run folder (OUT/artifact, OUT/model); else None."""
    if is_artifact(path):
        return path
    if (path / "config.json").is_file():
        return None
    return next((path / d for d in RUN_FOLDERS if is_artifact(path / d)), None)


def load_any(name_or_dir: str | os.PathLike, task: Task | None = None, *, num_labels: int | None = None,
             new_head: bool = True, **kw: Any) -> tuple[nn.Module, Any]:
    """What every command loads a ``--model`` with: an artifact through :func:`load`, else ``models.load_model``.

    A task mask is refused here (it needs its base: ``--model BASE --mask DIR``).
    """
    path = Path(name_or_dir).expanduser()
    folder = artifact_folder(path) if path.is_dir() else None
    if folder is None:
        return load_model(name_or_dir, task, num_labels=num_labels, new_head=new_head, **kw)
    if kw:
        raise bad_param("kw", f"empty for {str(name_or_dir)!r} (only tiny-bert and built-in models take arguments)",
                        sorted(kw), "load_model")
    artifact = read_artifact(folder)
    if artifact.base["kind"] == "artifact":
        raise FewbitsValueError(f"{folder} is a task mask, which needs the base it was trained on: give the base as "
                                f"the model and this folder as the mask (fewbits eval --model BASE --mask {folder}, "
                                "or fewbits.load(MASK_DIR, base=BASE) in Python).")
    model, tokenizer = load_with_tokenizer(folder)
    if task is not None and (task.kind == "text") != (tokenizer is not None):
        raise FewbitsValueError(f"Model {str(name_or_dir)!r} does not fit task {task.name!r}, whose inputs are "
                                f"{task.kind}s; give a model trained on this task.")
    num_labels = task.num_labels if num_labels is None and task is not None else num_labels
    classes = model.config.num_labels if hasattr(model, "config") else getattr(getattr(model, "fc", None),
                                                                                 "out_features", None)
    if num_labels is not None and classes is not None and classes != num_labels:
        raise FewbitsValueError(f"The model in {folder} has {classes} outputs but the task has {num_labels}; give a "
                                "model trained on this task.")
    return model, tokenizer


__all__ = ["base_checksum", "is_artifact", "load", "load_any", "load_base",
           "load_tokenizer", "load_with_tokenizer", "resolve_base", "verify"]
