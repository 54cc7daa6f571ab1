"""Tiny models and a hand-written quantizer shared by the fewbits.nn tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewbits.quantize import QuantizedTensor


def bin_quantizer(weight: torch.Tensor, bits: int, *, group_size: int, **_: object) -> QuantizedTensor:
    """Equal-width bins per group, each bin's value at its centre: simple, exact, deterministic."""
    w = weight.detach().float().reshape(-1, group_size)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    k = 1 << bits
    codes = ((w - lo) / (hi - lo).clamp_min(1e-12) * k).floor().clamp(0, k - 1).to(torch.uint8)
    codebook = lo + (torch.arange(k, dtype=torch.float32) + 0.5) * (hi - lo) / k
    return QuantizedTensor(codes.reshape(weight.shape), codebook, bits, "bins")


def tiny_bert(num_labels: int = 2, seed: int = 0) -> nn.Module:
    """A 2-layer BERT with hidden size 32 (about 25k weights), in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


class TinyCNN(nn.Module):
    """Conv2d -> Conv1d -> Linear -> Linear: every plain layer type, the last Linear is the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.hidden = nn.Linear(4 * 16, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 4, 4)
        h = torch.relu(self.conv2d(x)).flatten(2)  # (N, 4, 16)
        h = torch.relu(self.conv1d(h)).flatten(1)  # (N, 64)
        return self.fc(torch.relu(self.hidden(h)))  # (N, 3)


@pytest.fixture
def bert() -> nn.Module:
    return tiny_bert()


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def quantizer():
    return bin_quantizer
