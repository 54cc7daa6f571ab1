"""Hessian products, Hutchinson trace, power iteration and P2's temperature bound against closed forms."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from analysis_helpers import assert_unchanged, batches, exact_hessian, mlp, quantized_mlp, snapshot
from torch import nn

from fewbits.analysis import (
    BatchLoss,
    effective_parameters,
    head_inputs,
    hessian_vector_product,
    hutchinson_trace,
    softmax_curvature,
    temperature_sweep,
    top_eigenvalue,
)
from fewbits.errors import FewbitsValueError


class SoftmaxLayer(nn.Module):
    """Logistic regression at a temperature: logits = x W^T / T."""

    def __init__(self, classes: int, features: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.W = nn.Parameter(torch.randn(classes, features, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T / self.temperature


def exact_softmax_hessian_trace(model: SoftmaxLayer, data) -> float:
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def loss(W: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x @ W.T / model.temperature, y)

    H = torch.autograd.functional.hessian(loss, model.W.detach())
    return float(H.reshape(model.W.numel(), -1).trace())


def test_exact_softmax_trace_matches_autograd_and_obeys_the_bound():
    for temperature in (0.5, 1.0, 2.0, 4.0, 8.0):
        _check_softmax_trace_and_bound(temperature)


def _check_softmax_trace_and_bound(temperature: float) -> None:
    torch.manual_seed(0)
    model = SoftmaxLayer(classes=4, features=5, temperature=temperature)
    data = batches(sizes=(20, 17), features=5, classes=4)
    x = torch.cat([b[0] for b in data])
    c = softmax_curvature(x, model.W, temperature=temperature)
    assert c.trace == pytest.approx(exact_softmax_hessian_trace(model, data), rel=1e-10)
    assert 0 < c.trace <= c.bound <= c.bound_p2
    assert c.bound == pytest.approx(3 / (4 * temperature**2) * float(x.pow(2).sum(1).mean()), rel=1e-12)
    assert c.bound_p2 == pytest.approx(5 * c.bound)
    total = softmax_curvature(x, model.W, temperature=temperature, reduction="sum")
    assert total.trace == pytest.approx(c.trace * x.shape[0]) and total.bound == pytest.approx(c.bound * x.shape[0])


def test_bound_is_attained_at_uniform_probabilities_and_falls_like_inverse_square():
    x = torch.randn(9, 3, dtype=torch.float64)
    sweep = temperature_sweep(x, torch.zeros(5, 3, dtype=torch.float64), None, [1, 2, 4, 8])
    for c in sweep:
        assert c.trace == pytest.approx(c.bound, rel=1e-12)
    assert [c.bound * c.temperature**2 for c in sweep] == pytest.approx([sweep[0].bound] * 4)


def test_bias_enters_the_probabilities():
    x = torch.randn(6, 3, dtype=torch.float64)
    W = torch.randn(4, 3, dtype=torch.float64)
    b = torch.tensor([5.0, -5.0, 0.0, 0.0], dtype=torch.float64)
    with_bias = softmax_curvature(x, W, b)
    augmented = softmax_curvature(torch.cat([x, torch.ones(6, 1, dtype=x.dtype)], 1), torch.cat([W, b[:, None]], 1))
    assert with_bias.trace != pytest.approx(softmax_curvature(x, W).trace)
    # the W-part of the augmented layer's trace is the trace with bias, plus the bias's own terms
    q = torch.softmax(x @ W.T + b, -1)
    assert augmented.trace == pytest.approx(with_bias.trace + float((q * (1 - q)).sum(1).mean()), rel=1e-12)


def test_hutchinson_within_five_standard_errors_of_the_exact_trace():
    torch.manual_seed(0)
    model = SoftmaxLayer(classes=4, features=5, temperature=2.0)
    data = batches(sizes=(23, 17), features=5, classes=4)
    exact = exact_softmax_hessian_trace(model, data)
    before = snapshot(model)
    est = hutchinson_trace(model, data, max_probes=40, min_probes=10, tol=0.02, seed=1)
    assert 0 < est.standard_error < 0.1 * exact and 10 <= est.probes <= 40  # a tight enough estimate to test
    assert abs(est.trace - exact) <= 5 * est.standard_error
    assert est.samples.shape == (est.probes,)
    assert_unchanged(model, before)


def test_hutchinson_stopping_rule():
    model = mlp()
    data = batches()
    loose = hutchinson_trace(model, data, max_probes=30, min_probes=4, tol=10.0)
    assert loose.converged and loose.probes == 4
    strict = hutchinson_trace(model, data, max_probes=6, min_probes=4, tol=1e-9)
    assert not strict.converged and strict.probes == 6
    with pytest.raises(FewbitsValueError, match="min_probes"):
        hutchinson_trace(model, data, max_probes=3, min_probes=5)


def test_hvp_matches_full_hessian_and_ignores_the_batch_split():
    model = mlp()
    data = batches(sizes=(12, 10, 8))
    H, names, _ = exact_hessian(model, data)
    g = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}
    flat_v = torch.cat([v[n].reshape(-1) for n in names])
    hv = hessian_vector_product(model, data, v)
    flat_hv = torch.cat([hv[n].reshape(-1) for n in names])
    torch.testing.assert_close(flat_hv, H @ flat_v, rtol=1e-9, atol=1e-12)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    for sizes in ((30,), (1, 29), (25, 2, 3)):
        split = [(xs, ys) for xs, ys in zip(x.split(list(sizes)), y.split(list(sizes)))]
        other = hessian_vector_product(model, split, v)
        for n in names:
            torch.testing.assert_close(other[n], hv[n], rtol=1e-10, atol=1e-13)


class PartlyFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 8).double().requires_grad_(False)
        self.head = nn.Linear(8, 3).double()
        self.unused = nn.Linear(4, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.frozen(x)))


def test_parameters_without_gradient_do_not_crash():
    torch.manual_seed(0)
    model = PartlyFrozen()
    data = batches()
    default = effective_parameters(model, trainable_only=True)
    assert "frozen.weight" not in default and "unused.weight" in default
    est = hutchinson_trace(model, data, max_probes=5, min_probes=3)
    assert np.isfinite(est.trace) and est.trace > 0
    v = {n: torch.ones_like(t) for n, t in default.items()}
    hv = hessian_vector_product(model, data, v)
    assert torch.equal(hv["unused.weight"], torch.zeros(4, 4, dtype=torch.float64))
    assert hv["head.weight"].abs().sum() > 0
    # naming the frozen weights explicitly differentiates through them too
    named = ["frozen.weight", "unused.bias"]
    hv2 = hessian_vector_product(model, data, {n: torch.ones_like(effective_parameters(model)[n]) for n in named},
                                 params=named)
    assert hv2["frozen.weight"].abs().sum() > 0 and torch.equal(hv2["unused.bias"], torch.zeros(4, dtype=torch.float64))
    eig = top_eigenvalue(model, data, max_iter=20)
    assert np.isfinite(eig.largest_magnitude)
    with pytest.raises(FewbitsValueError, match="params"):
        hessian_vector_product(model, data, v, params=["nope.weight"])


def test_a_loss_linear_in_the_parameters_has_zero_hessian():
    model = nn.Linear(3, 1, bias=False).double()

    def linear_loss(m: nn.Module, batch: object) -> BatchLoss:
        return BatchLoss(m.weight.sum(), None, 1)

    assert hutchinson_trace(model, [None], loss_fn=linear_loss, max_probes=3, min_probes=2).trace == 0.0


def test_no_graph_outlives_a_call():
    model = mlp()
    data = batches()
    alive: list[weakref.ref] = []

    class Box:
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    def pack(t: torch.Tensor) -> Box:
        box = Box(t)
        alive.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t):
        est = hutchinson_trace(model, data, max_probes=3, min_probes=2)
        eig = top_eigenvalue(model, data, max_iter=3)
    gc.collect()
    assert alive and all(ref() is None for ref in alive)
    assert not est.samples.dtype == object and isinstance(eig.largest_magnitude, float)
    assert all(p.grad is None for p in model.parameters())


class Quadratic(nn.Module):
    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.W = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))


def quadratic_loss(model: nn.Module, batch: object) -> BatchLoss:
    w = model.W.reshape(-1)
    return BatchLoss(0.5 * w @ model.A @ w, None, 1)


def test_power_iteration_magnitude_versus_algebraic():
    spectrum = torch.tensor([-5.0, 3.0, 1.0, 0.5, 0.2, 0.1, 0.0, 0.0, -0.1, -0.3, 0.4, 0.05], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    model = Quadratic(Q @ torch.diag(spectrum) @ Q.T)
    mag = top_eigenvalue(model, [None], loss_fn=quadratic_loss, tol=1e-10, max_iter=500)
    assert mag.largest_magnitude == pytest.approx(-5.0, rel=1e-6) and mag.largest is None and mag.converged
    both = top_eigenvalue(model, [None], loss_fn=quadratic_loss, which="both", tol=1e-10, max_iter=500)
    assert both.largest == pytest.approx(3.0, rel=1e-6) and both.smallest == pytest.approx(-5.0, rel=1e-6)
    trace = hutchinson_trace(model, [None], loss_fn=quadratic_loss, max_probes=200, tol=1e-3, seed=3)
    assert abs(trace.trace - float(spectrum.sum())) <= 5 * trace.standard_error


def test_quantized_model_hessian_is_taken_at_the_effective_weights():
    data = batches()
    model = quantized_mlp()
    plain = mlp()
    with torch.no_grad():
        plain[0].weight.copy_(model[0].weight)
    before = snapshot(model)
    g = torch.Generator().manual_seed(0)
    v = {n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in effective_parameters(plain).items()}
    hq = hessian_vector_product(model, data, v)
    hp = hessian_vector_product(plain, data, v)
    assert sorted(hq) == sorted(hp)
    for n in hp:
        torch.testing.assert_close(hq[n], hp[n], rtol=1e-12, atol=1e-14)
    assert_unchanged(model, before)


def test_head_inputs_are_the_penultimate_activations():
    model = mlp()
    data = batches()
    features, weight, bias = head_inputs(model, data)
    x = torch.cat([b[0] for b in data])
    torch.testing.assert_close(features, torch.relu(model[0](x)).detach())
    assert torch.equal(weight, model[2].weight.detach()) and torch.equal(bias, model[2].bias.detach())
    with pytest.raises(FewbitsValueError, match="head"):
        head_inputs(model, data, head="missing")
