"""Artifacts of layers that keep outliers: codebook section version 2, exact round trip, strict reading."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from _io_helpers import bert_model

import fewbits
from fewbits.errors import ArtifactError
from fewbits.io import MANIFEST_FILE, TENSORS_FILE, describe


@pytest.fixture
def saved(tmp_path):
    model = bert_model()
    fewbits.compress(model, "optimal", {n: 1 + i % 3 for i, n in enumerate(
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
        and n != "classifier")}, outliers=0.02)
    fewbits.save(model, tmp_path / "a")
    return model, tmp_path / "a"


def _manifest(path):
    return json.loads((path / MANIFEST_FILE).read_text())


def test_outliers_and_mixed_bits_round_trip_bit_identically(saved):
    model, path = saved
    data = _manifest(path)["data"]
    assert data["version"] == 2 and data["layers"]["bert.pooler.dense"]["outliers"] == int(32 * 32 * 0.02)
    loaded = fewbits.load(path)
    for name, module in model.named_modules():
        if hasattr(module, "parametrizations"):
            assert torch.equal(loaded.get_submodule(name).weight, module.weight)
    layer = next(x for x in describe(path).layers if x.name == "bert.pooler.dense")
    assert layer.outliers == 20 and layer.outlier_bytes == 20 * 8
    assert layer.bits_per_weight == pytest.approx(8 * (layer.code_bytes + layer.codebook_bytes + layer.outlier_bytes)
                                                  / 1024)


def test_without_outliers_the_section_keeps_version_1(tmp_path):
    model = bert_model()
    fewbits.compress(model, "optimal", 2)
    fewbits.save(model, tmp_path / "b")
    assert "version" not in _manifest(tmp_path / "b")["data"]


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("version"), "'outliers'"),
    (lambda d: d.update(version=3), "newer than the version 2"),
    (lambda d: d["layers"]["bert.pooler.dense"].update(outliers=-1), "'outliers'"),
    (lambda d: d["layers"]["bert.pooler.dense"].update(outliers=5), "outliers of layer 'bert.pooler.dense'"),
    (lambda d: d["layers"]["bert.pooler.dense"].pop("outliers"), "unexpected tensors"),
])
def test_damaged_outlier_entries_are_named(saved, edit, fragment):
    _, path = saved
    manifest = _manifest(path)
    edit(manifest["data"])
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    for reader in (fewbits.load, describe):
        with pytest.raises(ArtifactError, match=fragment):
            reader(path)


def test_unsorted_outlier_positions_are_refused(saved):
    from safetensors.torch import load, save

    _, path = saved
    tensors = load((path / TENSORS_FILE).read_bytes())
    tensors["outlier_index.bert.pooler.dense"] = tensors["outlier_index.bert.pooler.dense"].flip(0).contiguous()
    data = save(tensors)
    (path / TENSORS_FILE).write_bytes(data)
    manifest = _manifest(path)
    manifest["files"][TENSORS_FILE].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="sorted unique positions"):
        fewbits.load(path)
