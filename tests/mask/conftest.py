"""Tiny models and a tiny quantizer shared by the mask tests (no pretrained weights, no quantizer package)."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from fewbits.quantize.base import QuantizedTensor


def tiny_bert(seed: int = 0, num_labels: int = 2) -> BertForSequenceClassification:
    """A 2-layer BERT with hidden size 32, randomly initialised from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def sign_quantizer(weight: torch.Tensor, bits: int, *, group_size: int, **_) -> QuantizedTensor:
    """1-bit codes by sign, each codebook entry the mean of its members (any ``bits``: upper codes unused)."""
    codes = (weight > 0).to(torch.uint8)
    flat = weight.reshape(-1)
    neg = flat[flat <= 0].mean() if bool((flat <= 0).any()) else torch.tensor(0.0)
    pos = flat[flat > 0].mean() if bool((flat > 0).any()) else torch.tensor(0.0)
    codebook = torch.zeros(1, 1 << bits)
    codebook[0, 0], codebook[0, 1] = neg, pos
    return QuantizedTensor(codes, codebook, bits, "sign")


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 60, (8, 6), generator=gen),
            "labels": torch.randint(0, 2, (8,), generator=gen)}


@pytest.fixture(scope="session")
def make_bert():
    """``make_bert(seed=0, num_labels=2)`` -> a fresh tiny BERT."""
    return tiny_bert


@pytest.fixture(scope="session")
def quantizer():
    """A deterministic 1-bit-by-sign quantizer usable as ``compress(model, quantizer, bits)``."""
    return sign_quantizer
