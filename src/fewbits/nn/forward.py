"""Calling any model of fewbits on a collated batch, and finding the logits in what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits in a model's outputs: the tensor itself (built-ins) or ``outputs.logits`` (Hugging Face)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def forward_batch(model: nn.Module, batch: Mapping[str, Any]) -> Any:
    """Run ``model`` on a collated batch: ``model(batch["x"])`` for images and signals, else the tokenizer fields."""
    if "x" in batch:
        return model(batch["x"])
    return model(**{k: v for k, v in batch.items() if k != "labels"})
