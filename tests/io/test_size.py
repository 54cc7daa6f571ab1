"""Artifact size against the theory, and what `fewbits info` reports."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from _io_helpers import bert_model, bin_quantizer

import fewbits
from fewbits.commands import info
from fewbits.errors import ArtifactError
from fewbits.io import TENSORS_FILE, describe


@pytest.fixture(scope="module")
def big_bert():
    return bert_model(hidden=128, vocab=30000)  # 4.2M weights: even at 1 bit, headers must stay under 2%


@pytest.mark.parametrize("bits, groups", [(1, None), (3, 128), (4, None)])
def test_size_within_two_percent_of_theory(tmp_path, big_bert, bits, groups):
    model = copy.deepcopy(big_bert)
    reports = fewbits.compress(model, bin_quantizer, bits, groups=groups)
    # the theory, computed from the model itself
    codes = sum(math.ceil(math.prod(r.shape) * bits / 8) for r in reports)
    codebooks = sum(r.n_groups * (1 << bits) * 4 for r in reports)
    compressed = {f"{r.name}.weight" for r in reports}
    plain = [p for n, p in model.named_parameters() if not n.endswith((".codebook", ".original"))]
    plain_bytes = sum(p.numel() * p.element_size() for p in plain)
    plain_bytes += sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                       if ".parametrizations." not in n and n in model.state_dict())
    assert not compressed & {n for n, _ in model.named_parameters()}
    theory = codes + codebooks + plain_bytes

    fewbits.save(model, tmp_path / "a")
    summary = describe(tmp_path / "a")
    assert summary.theory_bytes == theory
    on_disk = sum(f.stat().st_size for f in (tmp_path / "a").iterdir())
    assert summary.total_bytes == on_disk
    assert on_disk <= 1.02 * theory, (on_disk, theory)


def test_summary_numbers(tmp_path):
    model = bert_model()
    reports = fewbits.compress(model, bin_quantizer, 2)
    fewbits.save(model, tmp_path / "a", codebook_dtype="float16")
    s = describe(tmp_path / "a")
    pooler = next(layer for layer in s.layers if layer.name == "bert.pooler.dense")
    assert (pooler.bits, pooler.n_groups, pooler.code_bytes, pooler.codebook_bytes) == (2, 1, 32 * 32 * 2 // 8, 4 * 2)
    assert pooler.bits_per_weight == pytest.approx(8 * (256 + 8) / 1024)
    n_params = sum(math.prod(r.shape) for r in reports) + s.uncompressed_values
    assert s.parameters == n_params == sum(v.numel() for k, v in bert_model().state_dict().items())
    assert s.bits_per_weight == pytest.approx(8 * s.total_bytes / n_params)
    assert s.ratio == pytest.approx(4 * n_params / s.total_bytes)  # every stored value is float32 here
    assert s.tokenizer_bytes == 0


def test_info_prints_layers_bits_and_ratio(tmp_path, capsys):
    model = bert_model()
    fewbits.compress(model, bin_quantizer, 4)
    fewbits.save(model, tmp_path / "a")
    s = describe(tmp_path / "a")
    assert info.run(argparse.Namespace(directory=str(tmp_path / "a"), layers=None)) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.1.output.dense" in out
    assert f"true bits per weight {s.bits_per_weight:.3f}" in out
    assert f"compression ratio {s.ratio:.2f}x" in out
    info.run(argparse.Namespace(directory=str(tmp_path / "a"), layers=2))
    out = capsys.readouterr().out
    assert "bert.embeddings.word_embeddings" in out and "... and 14 smaller layers" in out


def test_info_on_a_damaged_artifact(tmp_path):
    model = bert_model()
    fewbits.save(model, tmp_path / "a")
    data = (tmp_path / "a" / TENSORS_FILE).read_bytes()
    (tmp_path / "a" / TENSORS_FILE).write_bytes(data[:-3])
    with pytest.raises(ArtifactError, match=TENSORS_FILE):
        info.run(argparse.Namespace(directory=str(tmp_path / "a"), layers=None))


def test_float16_codebooks_halve_codebook_bytes(tmp_path):
    model = bert_model()
    fewbits.compress(model, bin_quantizer, 8, groups=4)
    fewbits.save(model, tmp_path / "f32")
    fewbits.save(model, tmp_path / "f16", codebook_dtype=torch.float16)
    full, half = describe(tmp_path / "f32"), describe(tmp_path / "f16")
    assert sum(x.codebook_bytes for x in half.layers) * 2 == sum(x.codebook_bytes for x in full.layers)
