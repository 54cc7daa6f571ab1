"""Helpers of the export tests: a tiny compressed BERT artifact and a batch of token ids."""

from __future__ import annotations

from pathlib import Path

import torch

import fewbits
from fewbits.models.hf import tiny_bert


def make_artifact(directory: Path, bits: int = 3, groups: int | str | None = "channel",
                  group_size: int | None = None) -> Path:
    """Save a 2-layer BERT (hidden 32) compressed with k-means at ``bits``, seeded, with its tokenizer."""
    torch.manual_seed(0)
    model, tokenizer = tiny_bert(2)
    fewbits.compress(model.eval(), "kmeans", bits, groups=None if group_size else groups, group_size=group_size)
    return fewbits.save(model, directory, tokenizer=tokenizer)


def token_batch() -> dict[str, torch.Tensor]:
    """Three padded sequences of ids below the tiny vocabulary's size."""
    ids = torch.randint(5, 90, (3, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}
