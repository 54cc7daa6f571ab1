"""Compressed tiny models and artifacts shared by the fewbits.io tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _io_helpers import bert_model, bin_quantizer, nudge_codebooks
from torch import nn

from fewbits.methods.codebook import compress


@pytest.fixture
def compressed_bert() -> nn.Module:
    model = bert_model()
    compress(model, bin_quantizer, 3, groups=4)
    nudge_codebooks(model)
    return model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def artifact(tmp_path: Path, compressed_bert: nn.Module) -> Path:
    import fewbits

    return fewbits.save(compressed_bert, tmp_path / "artifact")
