"""Surfaces and paraboloid fits against closed forms; invariances; the model is left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import RoundTo, assert_unchanged, batches, mlp, quantized_mlp, snapshot
from torch import nn
from torch.nn.utils import parametrize

from fewbits.analysis import (
    BatchLoss,
    Surface2D,
    direction_pairs,
    effective_parameters,
    evaluate,
    fit_paraboloid,
    grid_coordinates,
    landscape,
    surface_1d,
    surface_2d,
)
from fewbits.errors import FewbitsValueError


class Quadratic(nn.Module):
    """Holds a weight W (3, 4); the loss is 0.5 vec(W)^T A vec(W)."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.W = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))


def quadratic_loss(model: nn.Module, batch: object) -> BatchLoss:
    w = model.W.reshape(-1)
    return BatchLoss(0.5 * w @ model.A @ w, None, 1)


@pytest.fixture
def quadratic():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = (B + B.T) / 2  # symmetric, indefinite
    torch.manual_seed(1)
    model = Quadratic(A)
    dx = {"W": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    dy = {"W": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    return model, A, dx, dy


def test_quadratic_every_grid_point_and_exact_fit(quadratic):
    model, A, dx, dy = quadratic
    alphas = np.array([-1.0, -0.25, 0.5, 1.5])  # 4 points, asymmetric
    betas = np.array([-0.5, 0.0, 2.0])  # 3 points, asymmetric
    before = snapshot(model)
    s = surface_2d(model, [None], (dx, dy), alphas, betas, loss_fn=quadratic_loss)
    assert s.loss.shape == (4, 3) and s.accuracy is None
    w0 = model.W.detach().reshape(-1)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            w = w0 + a * dx["W"].reshape(-1) + b * dy["W"].reshape(-1)
            assert s.loss[i, j] == pytest.approx(float(0.5 * w @ A @ w), rel=1e-12, abs=1e-12)
    D = torch.stack([dx["W"].reshape(-1), dy["W"].reshape(-1)], dim=1)  # (12, 2)
    fit = fit_paraboloid(s)
    np.testing.assert_allclose(fit.hessian, (D.T @ A @ D).numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fit.gradient, (D.T @ A @ w0).numpy(), rtol=1e-9, atol=1e-9)
    assert fit.value == pytest.approx(float(0.5 * w0 @ A @ w0), rel=1e-9, abs=1e-9)
    H = D.T @ A @ D
    assert fit.trace == pytest.approx(float(H.trace()), rel=1e-9, abs=1e-9)
    assert fit.determinant == pytest.approx(float(torch.linalg.det(H)), rel=1e-8, abs=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.points == 12 and fit.dropped == 0
    assert_unchanged(model, before)


def test_quadratic_1d_slice(quadratic):
    model, A, dx, _ = quadratic
    alphas = [-2.0, 0.0, 0.5, 3.0]
    s = surface_1d(model, [None], dx, alphas, loss_fn=quadratic_loss)
    w0, d = model.W.detach().reshape(-1), dx["W"].reshape(-1)
    expected = [float(0.5 * (w0 + a * d) @ A @ (w0 + a * d)) for a in alphas]
    np.testing.assert_allclose(s.loss, expected, rtol=1e-12)


def test_fit_threshold_and_radius_drop_points(quadratic):
    model, _, dx, dy = quadratic
    coords = grid_coordinates(9, 2.0)
    s = surface_2d(model, [None], (dx, dy), coords, loss_fn=quadratic_loss)
    cutoff = float(np.median(s.loss))
    fit = fit_paraboloid(s, max_loss=cutoff)
    assert fit.dropped == int((s.loss > cutoff).sum()) > 0
    assert fit.points + fit.dropped == 81
    inner = fit_paraboloid(s, radius=1.0)
    a, b = np.meshgrid(coords, coords, indexing="ij")
    assert inner.points == int((np.hypot(a, b) <= 1.0).sum()) and inner.dropped == 0
    with pytest.raises(FewbitsValueError, match="at least 6 points"):
        fit_paraboloid(s, radius=0.3)
    s.loss[0, 0] = np.nan
    assert fit_paraboloid(s).dropped == 1


def test_fit_r2_below_one_for_a_non_quadratic_surface():
    a = grid_coordinates(11, 1.0)
    loss = np.abs(a)[:, None] + np.cos(3 * a)[None, :]
    fit = fit_paraboloid(Surface2D(a, a, loss))
    assert 0.0 < fit.r2 < 0.99


def test_relu_rescaling_gives_identical_normalized_surfaces():
    data = batches()
    model = mlp(seed=3)
    scaled = mlp(seed=3)
    c = 7.0
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    assert abs(evaluate(model, data).loss - evaluate(scaled, data).loss) < 1e-12
    coords = np.array([-1.0, -0.3, 0.4, 1.0])
    s1 = surface_2d(model, data, direction_pairs(model, 1, seed=4)[0], coords, coords[:3])
    s2 = surface_2d(scaled, data, direction_pairs(scaled, 1, seed=4)[0], coords, coords[:3])
    np.testing.assert_allclose(s1.loss, s2.loss, rtol=1e-10)
    np.testing.assert_array_equal(s1.accuracy, s2.accuracy)
    # without normalization (same raw directions on both) the surfaces differ
    raw = ({n: torch.randn_like(w) for n, w in model.state_dict().items() if w.ndim == 2},) * 2
    r1 = surface_2d(model, data, raw, coords[:2])
    r2 = surface_2d(scaled, data, raw, coords[:2])
    assert not np.allclose(r1.loss, r2.loss)


def test_centre_equals_evaluation_and_accuracy_grid():
    data = batches()
    model = mlp()
    s = surface_2d(model, data, direction_pairs(model, 1, seed=0)[0], [-0.5, 0.0, 0.5], [0.0, 1.0])
    ev = evaluate(model, data)
    assert s.loss[1, 0] == pytest.approx(ev.loss, rel=1e-12)
    assert s.accuracy[1, 0] == pytest.approx(ev.accuracy)
    assert ((s.accuracy >= 0) & (s.accuracy <= 1)).all()
    slices = s.slices()
    np.testing.assert_array_equal(slices["x"].loss, s.loss[:, 0])
    np.testing.assert_array_equal(slices["y"].loss, s.loss[1, :])


def test_quantized_model_surface_is_around_effective_weights_without_requantizing():
    data = batches()
    model = quantized_mlp()
    pair = direction_pairs(model, 1, seed=0)[0]
    before = snapshot(model)
    s = surface_2d(model, data, pair, [0.0, 0.3], [0.0, -0.2])
    plain = mlp()
    with torch.no_grad():
        plain[0].weight.copy_(model[0].weight + 0.3 * pair[0]["0.weight"] - 0.2 * pair[1]["0.weight"])
        plain[2].weight.add_(0.3 * pair[0]["2.weight"] - 0.2 * pair[1]["2.weight"])
    assert s.loss[1, 1] == pytest.approx(evaluate(plain, data).loss, rel=1e-12)
    assert s.loss[0, 0] == pytest.approx(evaluate(model, data).loss, rel=1e-12)
    assert_unchanged(model, before)
    assert parametrize.is_parametrized(model[0], "weight")
    assert isinstance(model[0].parametrizations.weight[0], RoundTo)


def test_model_unchanged_flags_restored_and_exception_safe():
    data = batches()
    model = mlp()
    model.train()
    model[2].eval()  # mixed flags must come back as they were
    before = snapshot(model)
    pair = direction_pairs(model, 1, seed=0)[0]
    calls = []

    def failing(m: nn.Module, batch: object) -> BatchLoss:
        calls.append(m.training)
        if len(calls) == 5:
            raise RuntimeError("boom")
        logits = m(batch[0])
        return BatchLoss(torch.nn.functional.cross_entropy(logits, batch[1]), None, len(batch[1]))

    with pytest.raises(RuntimeError, match="boom"):
        surface_2d(model, data, pair, [0.5, 1.0], loss_fn=failing)
    assert not any(calls)  # evaluated in eval mode
    assert_unchanged(model, before)
    assert model.training and model[0].training and not model[2].training


def test_landscape_summary_and_reused_directions():
    data = batches()
    reference, other = mlp(seed=0), mlp(seed=1)
    pairs = direction_pairs(reference, 3, seed=9)
    result = landscape(other, data, directions=pairs, grid=5, span=0.5)
    traces = [f.trace for f in result.fits]
    assert len(result.surfaces) == 3 and result.summary["pairs"] == 3
    assert result.summary["trace"]["mean"] == pytest.approx(np.mean(traces))
    assert result.summary["trace"]["sd"] == pytest.approx(np.std(traces, ddof=1))
    assert result.surfaces[0].loss.shape == (5, 5)
    own = landscape(other, data, pairs=3, seed=9, grid=5, span=0.5)
    assert not np.allclose(own.surfaces[0].loss, result.surfaces[0].loss)  # normalized against itself instead


def test_bad_coordinates_rejected():
    model = mlp()
    pair = direction_pairs(model, 1, seed=0)[0]
    with pytest.raises(FewbitsValueError, match="alphas"):
        surface_2d(model, batches(), pair, [])
    with pytest.raises(FewbitsValueError, match="grid"):
        grid_coordinates(1, 1.0)
    with pytest.raises(FewbitsValueError, match="span"):
        grid_coordinates(5, -1.0)


def test_codebook_quantized_model_with_tied_weights():
    import fewbits

    class TiedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight
            self.head = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    model = TiedNet().double()
    fewbits.compress(model, "kmeans", bits=2, targets=["a", "b"])
    weights = effective_parameters(model)
    assert "a.weight" in weights and "b.weight" not in weights  # one codebook, one effective tensor
    data = batches()
    before = snapshot(model)
    pair = direction_pairs(model, 1, seed=0)[0]
    s = surface_2d(model, data, pair, [0.0, 0.5], [0.0])
    assert s.loss[0, 0] == pytest.approx(evaluate(model, data).loss, rel=1e-12)
    # the perturbation moves both tied uses of the weight, unquantized
    plain = TiedNet().double()
    with torch.no_grad():
        plain.a.weight.copy_(weights["a.weight"] + 0.5 * pair[0]["a.weight"])
        for name in ("a.bias", "b.bias", "head.bias"):
            plain.get_parameter(name).copy_(weights[name])
        plain.head.weight.copy_(weights["head.weight"] + 0.5 * pair[0]["head.weight"])
    assert s.loss[1, 0] == pytest.approx(evaluate(plain, data).loss, rel=1e-12)
    assert_unchanged(model, before)


def test_loss_fn_must_return_loss_correct_count():
    model = mlp()
    pair = direction_pairs(model, 1, seed=0)[0]
    with pytest.raises(TypeError, match="loss_fn"):
        surface_2d(model, batches(), pair, [0.0], loss_fn=lambda m, b: m(b[0]).sum())
    with pytest.raises(FewbitsValueError, match="count"):
        surface_2d(model, batches(), pair, [0.0], loss_fn=lambda m, b: BatchLoss(m(b[0]).sum(), None, 0))
