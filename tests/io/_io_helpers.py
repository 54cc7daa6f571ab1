"""Tiny models and a hand-written quantizer for the fewbits.io tests (a uniquely named module: no conftest imports)."""

from __future__ import annotations

import torch
from torch import nn

from fewbits.quantize import QuantizedTensor


def bin_quantizer(weight: torch.Tensor, bits: int, *, group_size: int, **_: object) -> QuantizedTensor:
    """Equal-width bins per group with the bin centres as codebook: simple and deterministic."""
    w = weight.detach().float().reshape(-1, group_size)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    k = 1 << bits
    codes = ((w - lo) / (hi - lo).clamp_min(1e-12) * k).floor().clamp(0, k - 1).to(torch.uint8)
    codebook = lo + (torch.arange(k, dtype=torch.float32) + 0.5) * (hi - lo) / k
    return QuantizedTensor(codes.reshape(weight.shape), codebook, bits, "bins")


def bert_model(hidden: int = 32, vocab: int = 96, layers: int = 2, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=32)
    return BertForSequenceClassification(config).eval()


def nudge_codebooks(model: nn.Module) -> None:
    """Move every trainable parameter a little, as centroid fine-tuning would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)


class PlainNet(nn.Module):
    """A plain nn.Module that fewbits cannot rebuild by itself (load needs model=PlainNet())."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.body(x))))
