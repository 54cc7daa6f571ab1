"""The real MiniLM-L6: compress, fine-tune one step, save with its tokenizer, reload bit-identically."""

from __future__ import annotations

import pytest
import torch

import fewbits
from fewbits.io import describe
from fewbits.loading import load_tokenizer
from fewbits.methods.codebook import param_groups


@pytest.mark.slow
def test_minilm_round_trip(tmp_path):
    from fewbits.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model("minilm", num_labels=2)
    reports = fewbits.compress(model, "kmeans", 2, groups=128)
    assert len(reports) == 3 + 6 * 6 + 1 and all(r.relative_error < 0.5 for r in reports)
    opt = torch.optim.AdamW(param_groups(model, lr=5e-5))
    batch = tokenizer(["a fine, warm film", "dull and far too long"], return_tensors="pt", padding=True)
    model.train()
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    opt.step()
    model.eval()

    fewbits.save(model, tmp_path / "minilm", tokenizer=tokenizer)
    again, tok = fewbits.load(tmp_path / "minilm"), load_tokenizer(tmp_path / "minilm")
    batch2 = tok(["a fine, warm film", "dull and far too long"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(again(**batch2).logits, model(**batch).logits)
    s = describe(tmp_path / "minilm")
    assert s.total_bytes <= 1.02 * s.theory_bytes
    assert s.ratio > 12 and s.bits_per_weight < 2.7
