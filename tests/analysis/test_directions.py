"""Filter-normalized directions: per-filter norms, zero filters, seeds, effective weights, files."""

from __future__ import annotations

import math

import pytest
import torch
from analysis_helpers import RoundTo, mlp, quantized_mlp
from torch import nn
from torch.nn.utils import parametrize

from fewbits.analysis import (
    check_directions,
    direction_pairs,
    effective_parameters,
    filter_normalize,
    load_directions,
    save_directions,
)
from fewbits.errors import ArtifactError, FewbitsValueError


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.conv = nn.Conv1d(5, 4, kernel_size=3)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.double().reshape(t.shape[0], -1).norm(dim=1)


def test_per_filter_norms_equal_the_weights():
    torch.manual_seed(0)
    model = Mixed()
    (dx, dy), = direction_pairs(model, 1, seed=3)
    weights = effective_parameters(model)
    assert sorted(dx) == ["conv.weight", "emb.weight", "fc.weight"]  # 1-D biases and norms left out
    for d in (dx, dy):
        for name, t in d.items():
            assert t.shape == weights[name].shape
            torch.testing.assert_close(_filter_norms(t), _filter_norms(weights[name]), rtol=1e-5, atol=0)
    # the direction is not the weight itself (random, only the norms match)
    assert not torch.allclose(dx["fc.weight"], model.fc.weight)


def test_include_1d_normalizes_each_1d_tensor_as_a_whole():
    torch.manual_seed(0)
    model = Mixed()
    (dx, _), = direction_pairs(model, 1, seed=3, include_1d=True)
    for name in ("conv.bias", "norm.weight", "norm.bias", "fc.bias"):
        w = effective_parameters(model)[name]
        assert math.isclose(float(dx[name].norm()), float(w.norm()), rel_tol=1e-5)
    # the multi-dimensional parts do not depend on include_1d
    (dx0, _), = direction_pairs(model, 1, seed=3)
    assert torch.equal(dx0["fc.weight"], dx["fc.weight"])


def test_zero_filters_give_zero_not_nan():
    weights = {"w": torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]), "z": torch.zeros(3), "v": torch.zeros(2, 2)}
    raw = {"w": torch.ones(2, 3), "z": torch.ones(3), "v": torch.zeros(2, 2)}
    d = filter_normalize(raw, weights, include_1d=True)
    assert torch.equal(d["w"][0], torch.zeros(3))
    torch.testing.assert_close(d["w"][1].norm(), torch.tensor(3.0))
    assert torch.equal(d["z"], torch.zeros(3)) and torch.equal(d["v"], torch.zeros(2, 2))
    assert all(torch.isfinite(t).all() for t in d.values())


def test_same_seed_same_directions_and_reusable_on_other_models():
    a, b = mlp(seed=0), mlp(seed=5)
    p1, p2 = direction_pairs(a, 2, seed=11), direction_pairs(a, 2, seed=11)
    for (x1, y1), (x2, y2) in zip(p1, p2):
        for n in x1:
            assert torch.equal(x1[n], x2[n]) and torch.equal(y1[n], y2[n])
    assert not torch.equal(p1[0][0]["0.weight"], p1[1][0]["0.weight"])  # pairs differ
    assert not torch.equal(p1[0][0]["0.weight"], p1[0][1]["0.weight"])  # x and y differ
    assert not torch.equal(direction_pairs(a, 1, seed=12)[0][0]["0.weight"], p1[0][0]["0.weight"])
    check_directions(b, p1[0][0])  # same names and shapes: usable on another model


def test_parametrized_weights_use_effective_values_and_plain_names():
    model = quantized_mlp()
    weights = effective_parameters(model)
    assert "0.weight" in weights and not any("parametrizations" in n for n in weights)
    torch.testing.assert_close(weights["0.weight"], RoundTo()(model[0].parametrizations.weight.original))
    (dx, _), = direction_pairs(model, 1, seed=0)
    torch.testing.assert_close(_filter_norms(dx["0.weight"]), _filter_norms(weights["0.weight"]), rtol=1e-5, atol=1e-7)


def test_tied_weights_appear_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

    model = Tied()
    assert list(effective_parameters(model)) == ["a.weight"]
    parametrize.register_parametrization(model.a, "weight", RoundTo())
    assert "a.weight" in effective_parameters(model)


def test_pairs_are_generated_on_demand_and_independently():
    model = mlp()
    few, many = direction_pairs(model, 3, seed=2), direction_pairs(model, 6, seed=2)
    assert len(few) == 3 and len(many) == 6
    for axis in (0, 1):
        assert torch.equal(few[2][axis]["0.weight"], many[2][axis]["0.weight"])
        assert torch.equal(few[-1][axis]["2.weight"], few[2][axis]["2.weight"])
    assert len(few[1:]) == 2
    with pytest.raises(IndexError):
        few[3]


def test_save_load_round_trip(tmp_path):
    model = mlp(sizes=(6, 64, 3))
    pairs = direction_pairs(model, 3, seed=2)
    path = save_directions(tmp_path / "d.safetensors", pairs, {"seed": 2, "reference": "ste"})
    loaded, meta = load_directions(path)
    assert meta == {"seed": 2, "reference": "ste"} and len(loaded) == 3
    explicit = [(dict(dx), dict(dy)) for dx, dy in pairs]
    explicit_path = save_directions(tmp_path / "e.safetensors", explicit)
    # stored compactly: the reference's filter norms, not 3 x 2 copies of the weights
    assert path.stat().st_size * 5 < explicit_path.stat().st_size
    loaded_explicit, _ = load_directions(explicit_path)
    for (x1, y1), (x2, y2), (x3, y3) in zip(pairs, loaded, loaded_explicit):
        assert sorted(x1) == sorted(x2) == sorted(x3)
        for n in x1:
            assert torch.equal(x1[n], x2[n]) and torch.equal(y1[n], y2[n])
            assert torch.equal(x1[n], x3[n]) and torch.equal(y1[n], y3[n])


def test_malformed_and_mismatched_directions(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="bad.safetensors"):
        load_directions(bad)
    with pytest.raises(FileNotFoundError):
        load_directions(tmp_path / "missing.safetensors")
    (dx, _), = direction_pairs(mlp(sizes=(6, 8, 3)), 1, seed=0)
    with pytest.raises(FewbitsValueError, match="0.weight"):
        check_directions(mlp(sizes=(6, 9, 3)), dx)
    with pytest.raises(FewbitsValueError, match="pairs"):
        direction_pairs(mlp(), 0, seed=0)
