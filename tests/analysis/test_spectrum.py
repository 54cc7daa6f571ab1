"""Lanczos eigenvalues, spectral density and per-layer traces against exact spectra of small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import batches, exact_hessian, mlp
from test_hessian import Quadratic, quadratic_loss
from torch import nn

from fewbits.analysis import hutchinson_trace, layer_traces, spectral_density, top_eigenvalue
from fewbits.errors import FewbitsError


def tiny_cnn() -> nn.Sequential:
    """A 1-D CNN in float64: conv (2 channels, width 3), ReLU, linear head; 6 + 2 + 3*12 + 3 = 47 parameters."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8, 3)).double()


MODELS = {"mlp": lambda: mlp(2, sizes=(6, 8, 3)), "cnn": tiny_cnn}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_both_ends_and_top_n_match_the_exact_spectrum(kind):
    model, data = MODELS[kind](), batches()
    hessian, _, _ = exact_hessian(model, data)
    exact = torch.linalg.eigvalsh(hessian).numpy()
    assert exact[0] < -1e-3  # the test needs negative curvature
    eig = top_eigenvalue(model, data, which="both", n=4, max_iter=200, tol=1e-8)
    assert eig.converged
    assert eig.smallest == pytest.approx(exact[0], rel=1e-6, abs=1e-9)
    assert eig.largest == pytest.approx(exact[-1], rel=1e-6)
    assert eig.top == pytest.approx(exact[::-1][:4], rel=1e-6, abs=1e-9)
    assert eig.largest_magnitude == pytest.approx(exact[np.argmax(np.abs(exact))], rel=1e-6)


def test_diagonal_spectrum_with_a_small_negative_end_is_found():
    """The issue's case: 10, 1998 values in [0, 0.01] and -0.1; power iteration said +0.005."""
    values = np.concatenate([[10.0, -0.1], np.random.default_rng(0).uniform(0, 0.01, 1998)])
    model = Quadratic(torch.diag(torch.from_numpy(values)))
    model.W = nn.Parameter(torch.randn(40, 50, dtype=torch.float64))
    eig = top_eigenvalue(model, [None], loss_fn=quadratic_loss, which="both", max_iter=300, tol=1e-6)
    assert eig.converged
    assert eig.largest == pytest.approx(10.0, rel=1e-9)
    assert eig.smallest == pytest.approx(-0.1, rel=1e-5)
    assert eig.iterations < 300


def test_not_converged_is_reported_when_the_budget_is_too_small():
    values = np.concatenate([[10.0, -0.1], np.random.default_rng(0).uniform(0, 0.01, 1998)])
    model = Quadratic(torch.diag(torch.from_numpy(values)))
    model.W = nn.Parameter(torch.randn(40, 50, dtype=torch.float64))
    eig = top_eigenvalue(model, [None], loss_fn=quadratic_loss, which="both", max_iter=3, tol=1e-10)
    assert not eig.converged and eig.iterations == 3


def test_density_nodes_are_eigenvalues_and_moments_are_exact():
    model, data = tiny_cnn(), batches()
    hessian, _, _ = exact_hessian(model, data)
    exact = torch.linalg.eigvalsh(hessian).numpy()
    dim = exact.size
    sd = spectral_density(model, data, steps=dim, probes=3, seed=1)
    assert sd.dim == dim and sd.nodes.shape == sd.weights.shape == (3, dim)
    assert sd.weights.sum(axis=1) == pytest.approx(np.ones(3))
    for p in range(3):
        heavy = sd.nodes[p][sd.weights[p] > 1e-8]
        assert np.abs(heavy[:, None] - exact[None]).min(axis=1).max() < 1e-6 * np.abs(exact).max()
    # a probe's quadrature is exact for polynomials: sum w * theta = v^T H v / v^T v, averaged over probes
    g = torch.Generator().manual_seed(1)
    moments = []
    for _ in range(3):
        v = torch.cat([torch.randint(0, 2, tuple(p.shape), generator=g, dtype=torch.int64).mul(2).sub(1).reshape(-1)
                       for p in model.parameters()]).double()
        moments.append(float(v @ hessian @ v / (v @ v)))
    assert (sd.weights * sd.nodes).sum(axis=1) == pytest.approx(moments, rel=1e-8, abs=1e-12)
    grid = np.linspace(exact[0] - 1, exact[-1] + 1, 4001)
    assert np.trapezoid(sd.density(grid, 0.05), grid) == pytest.approx(1.0, rel=1e-3)


def test_layer_traces_match_the_exact_diagonal_blocks_and_sum_to_hutchinson():
    model, data = mlp(2, sizes=(6, 8, 3)), batches()
    hessian, names, sizes = exact_hessian(model, data)
    per = layer_traces(model, data, probes=200, seed=4)
    start = 0
    for name, size in zip(names, sizes):
        block = float(hessian[start:start + size, start:start + size].trace())
        start += size
        assert abs(per.traces[name] - block) <= 5 * per.standard_errors[name] + 1e-12
    whole = hutchinson_trace(model, data, max_probes=200, min_probes=200, seed=4)
    assert sum(per.traces.values()) == pytest.approx(whole.trace, rel=1e-10)


@pytest.mark.parametrize("call, kwargs, name", [
    (top_eigenvalue, {"n": 0}, "n"),
    (top_eigenvalue, {"max_iter": 1}, "max_iter"),
    (spectral_density, {"steps": 1}, "steps"),
    (spectral_density, {"probes": 0}, "probes"),
    (layer_traces, {"probes": 1}, "probes"),
])
def test_bad_arguments_name_the_parameter(call, kwargs, name):
    with pytest.raises(FewbitsError, match=f"'{name}'"):
        call(mlp(), batches(), **kwargs)
