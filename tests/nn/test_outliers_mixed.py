"""Codebook outliers (exact weights beside the codebook), compress with per-layer bits and outliers, plan_bits."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsValueError, TargetsNotFoundError
from fewbits.methods.codebook import codebook_modules, compress, decompress, plan_bits, replan
from fewbits.nn import Codebook
from fewbits.quantize import optimal
from fewbits.quantize.allocate import layer_bytes
from fewbits.quantize.outliers import split_outliers


def _codebook_with_outliers() -> tuple[Codebook, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    w.view(-1)[[2, 17]] = torch.tensor([9.0, -7.0])
    ds = split_outliers(w, optimal, 1, 0.07)  # 2 of 30 kept
    cb = Codebook(ds.quantized.codes, ds.quantized.codebook, 1, "optimal", ds.index, ds.values)
    return cb, w, ds.index


def test_codebook_outliers_are_exact_and_train_as_weights():
    cb, w, index = _codebook_with_outliers()
    assert index.tolist() == [2, 17] and cb.n_outliers == 2
    with torch.no_grad():
        rebuilt = cb()
    assert torch.equal(rebuilt.reshape(-1)[index], w.reshape(-1)[index])
    grad = torch.randn(6, 5)
    (cb() * grad).sum().backward()
    assert torch.equal(cb.outlier_values.grad, grad.reshape(-1)[index])
    # each centroid's gradient: the mean over its members, outlier positions excluded
    members = torch.ones(30, dtype=torch.bool)
    members[index] = False
    codes = cb.codes.reshape(-1).long()
    for c in range(2):
        chosen = members & (codes == c)
        assert cb.codebook.grad[0, c] == pytest.approx(float(grad.reshape(-1)[chosen].mean()), rel=1e-5)


def test_codebook_cache_sees_outlier_updates_and_state_dict_keys():
    cb, _, index = _codebook_with_outliers()
    cb.requires_grad_(False)
    first = cb().clone()
    with torch.no_grad():
        cb.outlier_values.add_(1.0)
    assert torch.equal(cb().reshape(-1)[index], first.reshape(-1)[index] + 1.0)
    assert {"outlier_index", "outlier_values"} <= set(cb.state_dict())
    plain = Codebook(cb.codes, cb.codebook.detach(), 1)
    assert set(plain.state_dict()) == {"codes", "codebook"} and plain.n_outliers == 0


@pytest.mark.parametrize("index, values, match", [
    (torch.tensor([3, 1]), torch.zeros(2), "sorted unique positions"),
    (torch.tensor([1, 30]), torch.zeros(2), "sorted unique positions"),
    (torch.tensor([1, 2]), torch.zeros(3), "'outlier_index'"),
    (torch.tensor([1.0]), torch.zeros(1), "'outlier_index'"),
    (torch.tensor([1]), None, "'outlier_index'"),
])
def test_codebook_rejects_bad_outliers(index, values, match):
    with pytest.raises(FewbitsValueError, match=match):
        Codebook(torch.zeros(6, 5, dtype=torch.uint8), torch.zeros(1, 2), 1, "x", index, values)


def test_compress_with_outliers_round_trips_them_exactly(bert):
    original = copy.deepcopy(bert)
    reports = compress(bert, "optimal", 2, outliers=0.01)
    for r in reports:
        module, cb = codebook_modules(bert)[r.name]
        w = original.get_submodule(r.name).weight
        assert r.outliers == cb.n_outliers == int(w.numel() * 0.01)
        if cb.n_outliers:  # a 64-weight layer keeps none
            assert torch.equal(module.weight.reshape(-1)[cb.outlier_index], w.reshape(-1)[cb.outlier_index])
    cb = codebook_modules(bert)["bert.pooler.dense"][1]
    decompress(bert)
    assert torch.equal(bert.bert.pooler.dense.weight.reshape(-1)[cb.outlier_index],
                       original.bert.pooler.dense.weight.reshape(-1)[cb.outlier_index])


def test_compress_with_per_layer_bits(bert):
    names = [n for n, m in bert.named_modules() if isinstance(m, (nn.Linear, nn.Embedding)) and n != "classifier"]
    bits = {n: 1 + i % 3 for i, n in enumerate(names)}
    reports = compress(bert, "optimal", bits)
    assert {r.name: r.bits for r in reports} == bits
    assert bert.bert.pooler.dense.parametrizations.weight[0].bits == bits["bert.pooler.dense"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"scheme": "linear", "bits": 2, "outliers": 0.01}, FewbitsValueError, "cannot leave weights out of its fit"),
    ({"scheme": "uniform", "bits": 2, "sample_weights": {"bert.pooler.dense": torch.ones(32, 32)}},
     FewbitsValueError, "does not weight weights by importance"),
    ({"scheme": "optimal", "bits": 2, "outliers": 0.5}, FewbitsValueError, r"a fraction in \[0, 0.5\)"),
    ({"scheme": "optimal", "bits": 2, "outliers": -0.01}, FewbitsValueError, r"a fraction in \[0, 0.5\)"),
    ({"scheme": "optimal", "bits": {"bert.pooler.dense": 2}}, FewbitsValueError, "no width for"),
    ({"scheme": "optimal", "bits": {"nope": 2}}, TargetsNotFoundError, "'nope'"),
    ({"scheme": "optimal", "bits": 9}, FewbitsValueError, r"an int in \[1, 8\]"),
])
def test_compress_rejects_bad_options_before_changing_anything(bert, kwargs, error, match):
    before = copy.deepcopy(bert.state_dict())
    with pytest.raises(error, match=match):
        compress(bert, **kwargs)
    assert not codebook_modules(bert)
    assert all(torch.equal(before[k], v) for k, v in bert.state_dict().items())


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.relu(self.a(x))))


def test_plan_equals_brute_force_and_the_budget_holds():
    model = TwoLayers()
    targets = ["a", "b"]
    importance = {"a": torch.rand(8, 16), "b": torch.rand(8, 8) * 10}
    plan = plan_bits(model, 2.5, "optimal", targets=targets, sample_weights=importance, bits_options=[1, 2, 3, 4])
    budget = int(2.5 * (128 + 64) / 8)
    assert plan.budget_bytes == budget and plan.bytes <= budget
    table = {}
    for name in targets:
        w = model.get_submodule(name).weight
        table[name] = [(optimal(w, b, sample_weight=importance[name]).squared_error(w, importance[name]),
                        layer_bytes(w.numel(), b)) for b in [1, 2, 3, 4]]
    best = min((sum(table[n][j][0] for n, j in zip(targets, choice)), choice)
               for choice in itertools.product(range(4), repeat=2)
               if sum(table[n][j][1] for n, j in zip(targets, choice)) <= budget)
    assert plan.predicted_loss == pytest.approx(best[0])
    assert [plan.bits[n] for n in targets] == [[1, 2, 3, 4][j] for j in best[1]]
    assert 8 * plan.bytes / 192 == pytest.approx(plan.average_bits)
    reports = compress(model, "optimal", plan.bits, targets=targets, sample_weights=importance)
    assert sum(layer_bytes(r.shape[0] * r.shape[1], r.bits) for r in reports) == plan.bytes


def test_importance_weighting_lowers_the_weighted_error():
    model = TwoLayers()
    importance = {"a": torch.rand(8, 16) ** 4, "b": torch.rand(8, 8) ** 4}
    weighted = plan_bits(model, 8, "optimal", targets=["a", "b"], sample_weights=importance, bits_options=[2])
    for name in ["a", "b"]:
        w = model.get_submodule(name).weight
        unweighted_fit = optimal(w, 2).squared_error(w, importance[name])
        assert weighted.losses[name][0] < unweighted_fit


def test_trace_sensitivity_scales_the_plain_error_and_replan_is_free():
    model = TwoLayers()
    plain = plan_bits(model, 3, "optimal", targets=["a", "b"], bits_options=[1, 2, 3])
    hawq = plan_bits(model, 3, "optimal", targets=["a", "b"], bits_options=[1, 2, 3], sensitivity="trace",
                     traces={"a": 128.0, "b": -1.0})
    assert hawq.losses["a"] == pytest.approx(plain.losses["a"]) and hawq.losses["b"] == [0.0, 0.0, 0.0]
    assert hawq.bits["b"] == 1  # a layer of no curvature gets the fewest bits
    lower = replan(plain, 2.0)
    assert lower.bytes <= lower.budget_bytes == 48 and lower.losses == plain.losses
    assert sum(lower.bits.values()) < sum(plain.bits.values())


@pytest.mark.parametrize("kwargs, match", [
    ({"budget_bits": 0.5}, r"average number of bits in \[1, 8\]"),
    ({"budget_bits": 8.5}, r"average number of bits in \[1, 8\]"),
    ({"budget_bits": 1.0}, "an average of at least 1.6"),
    ({"budget_bits": 2, "sensitivity": "hessian"}, "'sensitivity'"),
    ({"budget_bits": 2, "sensitivity": "trace"}, "'traces'"),
    ({"budget_bits": 2, "traces": {"a": 1.0, "b": 1.0}}, "'traces'"),
    ({"budget_bits": 2, "sensitivity": "trace", "traces": {"a": 1.0}}, "'traces'"),
    ({"budget_bits": 2, "bits_options": [0, 2]}, r"an int in \[1, 8\]"),
    ({"budget_bits": 2, "codebook_dtype": "int8"}, "'codebook_dtype'"),
])
def test_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(FewbitsValueError, match=match):
        plan_bits(TwoLayers(), scheme="optimal", targets=["a", "b"], **kwargs)


def test_plan_with_importance_on_a_scheme_that_cannot_weight_fails():
    with pytest.raises(FewbitsValueError, match="does not weight weights by importance"):
        plan_bits(TwoLayers(), 2, "linear", targets=["a"], sample_weights={"a": torch.ones(8, 16)})
