"""Hugging Face export: a plain model folder (dequantized safetensors) that ``from_pretrained`` loads as is."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from fewbits.models.hf import quiet_transformers
from fewbits.methods.codebook.apply import decompress


def export_hf(model: nn.Module, out: Path, tokenizer: Any = None) -> Path:
    """Write ``model``'s decoded weights with ``save_pretrained`` (and its tokenizer) into the folder ``out``."""
    plain = decompress(copy.deepcopy(model))
    with quiet_transformers():
        plain.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
