"""Every artifact kind fewbits writes, built tiny, with the one call that loads each and its expected outputs.

Kinds: ``codebook-bert`` (a compressed Hugging Face model with config.json and tokenizer files),
``codebook-cnn`` (a compressed built-in model: its arguments live in the manifest), ``qat`` (a QAT export
with activation quantizers) and ``mask`` (a task mask over the codebook-bert base). A uniquely named module
(no conftest imports), shared by the attack suite and the kill-at-every-step test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _io_helpers import bin_quantizer
from torch import nn

import fewbits

KINDS = ("codebook-bert", "codebook-cnn", "qat", "mask")


@dataclass(frozen=True)
class Built:
    """An artifact on disk: where, how to load it (returns the model), an input and the outputs it must give."""

    path: Path
    load: Callable[[Path], nn.Module]
    inputs: torch.Tensor
    outputs: torch.Tensor


def outputs_of(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``inputs`` (token ids or signals), in eval mode."""
    with torch.no_grad():
        out = model.eval()(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _bert(seed: int) -> tuple[nn.Module, object]:
    from fewbits.models.hf import tiny_bert

    torch.manual_seed(seed)
    model, tokenizer = tiny_bert()
    fewbits.compress(model, bin_quantizer, 2, groups=2)
    return model, tokenizer


def _cnn(seed: int) -> nn.Module:
    from fewbits.models import build_model

    torch.manual_seed(seed)
    return build_model("cnn1d", width=4).eval()


def saver(kind: str, seed: int, root: Path) -> Callable[[Path], Path]:
    """``save(path)`` writing the ``kind`` artifact of ``seed`` at ``path`` (a mask's base goes under ``root``)."""
    if kind == "codebook-bert":
        model, tokenizer = _bert(seed)
        return lambda path: fewbits.save(model, path, tokenizer=tokenizer)
    if kind == "codebook-cnn":
        model = _cnn(seed)
        fewbits.compress(model, bin_quantizer, 3)
        return lambda path: fewbits.save(model, path)
    if kind == "qat":
        from fewbits.protocols.qat import export_qat

        model = _cnn(seed)
        config = fewbits.prepare_qat(model, wbits=2, abits=4, keep_first_last=False)
        with torch.no_grad():
            model(torch.randn(8, 40, generator=torch.Generator().manual_seed(seed)))  # sets the activation steps
        return lambda path: export_qat(model, path, config)
    return _mask_saver(seed, root)


def _mask_saver(seed: int, root: Path) -> Callable[[Path], Path]:
    from fewbits.loading import base_checksum
    from fewbits.nn.mask import apply_mask, masks, set_masks

    base_dir = root / "base"
    if not base_dir.exists():
        saver("codebook-bert", 0, root)(base_dir)
    probe = fewbits.load(base_dir, trainable=True)
    apply_mask(probe)  # which layers a mask covers, and their shapes
    gen = torch.Generator().manual_seed(seed)
    model = fewbits.load(base_dir, trainable=True)
    set_masks(model, {name: torch.rand(m.shape, generator=gen) > 0.2 for name, m in masks(probe).items()})
    sha = base_checksum(base_dir)
    return lambda path: fewbits.save(model, path, method="mask", base={"sha256": sha, "source": str(base_dir)})


def build(kind: str, root: Path, seed: int = 0) -> Built:
    """Write the ``kind`` artifact under ``root`` and record what loading it must give."""
    path = saver(kind, seed, root)(root / kind)
    if kind == "mask":
        base = root / "base"
        load: Callable[[Path], nn.Module] = lambda p: fewbits.load(p, base=base)  # noqa: E731
    else:
        load = fewbits.load
    text = kind in ("codebook-bert", "mask")
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, 30, (2, 7), generator=gen) if text else torch.randn(2, 40, generator=gen)
    return Built(path, load, inputs, outputs_of(load(path), inputs))


def fresh_copy(built: Built, into: Path) -> Path:
    """A copy of the artifact folder to damage (the base of a mask stays where it is)."""
    target = into / built.path.name
    shutil.copytree(built.path, target, symlinks=True)
    return target
