"""Export a compressed artifact to another runtime, keeping the compression where the runtime can.

``export(artifact, to, out)``:

- ``hf``: a Hugging Face folder of dequantized safetensors (float32, any runtime; outputs identical);
- ``onnx``: one ``.onnx`` file whose compressed layers hold int8 weights per output channel, mapped from
  the codebook values, and run as onnxruntime's integer matmul (:mod:`fewbits.export.onnx`);
- ``coreml``: a Core ML ``.mlpackage`` whose palettized weights are the artifact's codes and codebooks
  (:mod:`fewbits.export.coreml`).

Only compressed-model artifacts (``fewbits.save``, ``fewbits quantize``) export; task masks and QAT
artifacts (whose activation quantizers no export keeps) are refused with a one-line error.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewbits.errors import FewbitsValueError, MissingDependencyError, bad_param
from fewbits.export.coreml import export_coreml
from fewbits.export.hf import export_hf
from fewbits.export.onnx import export_onnx
from fewbits.io.container import read_artifact
from fewbits.loading import load_with_tokenizer

FORMATS = ("hf", "onnx", "coreml")
_NEEDS = {"onnx": ("onnx", "onnxscript"), "coreml": ("coremltools",)}
_EXTRA = {"onnx": "onnx", "coreml": "coreml"}

# input of the built-in models, per example, without the batch dimension (channels from the model's args)
_BUILTIN_INPUTS = {"cnn1d": (40,), "resnet18": (32, 32)}


def require(fmt: str) -> None:
    """Raise a one-line error naming the pip extra when a package that ``fmt`` needs is missing."""
    for package in _NEEDS.get(fmt, ()):
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(f"Export to {fmt} needs the package {package!r}; install it with "
                                         f"pip install 'fewbits[{_EXTRA[fmt]}]'.") from None


def example_inputs(model: nn.Module, base: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], list[str],
                                                                     list[dict[int, str]]]:
    """Inputs to trace ``model`` with (``base``: the artifact's base recipe), their names and dynamic axes."""
    if base["kind"] == "transformers":
        ids = torch.arange(16).remainder(model.config.vocab_size).view(2, 8)
        return (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], [{0: "batch", 1: "sequence"}] * 2
    if base["kind"] == "builtin" and base["name"] in _BUILTIN_INPUTS:
        channels = int(base["args"].get("in_channels", 1 if base["name"] == "cnn1d" else 3))
        x = torch.randn(2, channels, *_BUILTIN_INPUTS[base["name"]], generator=torch.Generator().manual_seed(0))
        return (x,), ["x"], [{0: "batch"}]
    raise FewbitsValueError(f"Cannot export a {base.get('class') or base.get('name')}: exports take Hugging Face "
                            f"models and the built-in models {sorted(_BUILTIN_INPUTS)}.")


def _open(directory: Path) -> tuple[nn.Module, dict[str, Any], Any]:
    """The artifact's model (training representation), base recipe and tokenizer; refuse other kinds of artifact."""
    artifact = read_artifact(directory)
    if artifact.method == "mask":
        raise FewbitsValueError(f"{directory} is a task mask, not a compressed model; export the base with its mask "
                                "applied (fewbits.load(MASK_DIR, base=BASE), fewbits.save) instead.")
    if artifact.method != "codebook":
        raise FewbitsValueError(f"{directory} is a {artifact.method} artifact, whose activation quantizers no export "
                                "format keeps; export an artifact written by fewbits.save or fewbits quantize.")
    model, tokenizer = load_with_tokenizer(directory, trainable=True)
    return model.eval(), artifact.base, tokenizer


def export(artifact: str | os.PathLike, to: str, out: str | os.PathLike) -> Path:
    """Export the artifact directory ``artifact`` to format ``to`` (one of :data:`FORMATS`) at ``out``; returns ``out``.

    ``out`` is a folder for ``hf``, a ``.onnx`` file for ``onnx`` and a ``.mlpackage`` for ``coreml``.
    Example: ``export("out/minilm-3bit", "onnx", "out/minilm-3bit.onnx")``.
    """
    if to not in FORMATS:
        raise bad_param("to", f"one of {list(FORMATS)}", to, "export")
    require(to)
    directory, target = Path(artifact).expanduser(), Path(out).expanduser()
    if target.exists() and target.is_file() == (to != "onnx"):
        raise bad_param("out", "a new path (a folder for hf and coreml, a file for onnx)", str(target), "export")
    model, base, tokenizer = _open(directory)
    if to == "hf":
        if base["kind"] != "transformers":
            raise FewbitsValueError(f"Export to hf needs a Hugging Face model; {directory} holds the built-in "
                                    f"{base.get('name')}: use onnx or coreml.")
        return export_hf(model, target, tokenizer)
    example, names, dynamic = example_inputs(model, base)
    if to == "onnx":
        return export_onnx(model, target, example, names, dynamic)
    return export_coreml(model, target, example, names)
