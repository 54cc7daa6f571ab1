"""The exact in-plane curvature reported beside the fitted paraboloid: equal on a quadratic, and on a
ReLU network equal to D^T H D of the full (autograd) Hessian while the fit differs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import batches, mlp
from test_spectrum import exact_hessian, tiny_cnn
from test_surface import Quadratic, quadratic_loss

from fewbits.analysis import direction_pairs, fit_paraboloid, in_plane_hessian, landscape, surface_2d
from fewbits.errors import FewbitsError


def test_quadratic_fit_and_exact_in_plane_hessian_agree():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = (B + B.T) / 2
    model = Quadratic(A)
    dx = {"W": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    dy = {"W": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    D = torch.stack([dx["W"].reshape(-1), dy["W"].reshape(-1)], dim=1)
    exact = in_plane_hessian(model, [None], (dx, dy), loss_fn=quadratic_loss)
    np.testing.assert_allclose(exact, (D.T @ A @ D).numpy(), rtol=1e-12, atol=1e-12)
    fit = fit_paraboloid(surface_2d(model, [None], (dx, dy), np.linspace(-1, 1, 5), loss_fn=quadratic_loss))
    assert fit.trace == pytest.approx(float(np.trace(exact)), rel=1e-9)


@pytest.mark.parametrize("make", [lambda: mlp(2, sizes=(6, 8, 3)), tiny_cnn], ids=["mlp", "cnn"])
def test_relu_net_exact_in_plane_curvature_is_d_h_d_of_the_full_hessian(make):
    model, data = make(), batches()
    hessian, names, sizes = exact_hessian(model, data)
    pairs = direction_pairs(model, 2, seed=5, include_1d=True)
    result = landscape(model, data, directions=pairs, grid=7, span=1.0)
    for (dx, dy), h, fit in zip(pairs, result.exact, result.fits):
        D = torch.stack([torch.cat([d[n].reshape(-1) for n in names]) for d in (dx, dy)], dim=1)
        np.testing.assert_allclose(h, (D.T @ hessian @ D).numpy(), rtol=1e-9, atol=1e-12)
    traces = [float(np.trace(h)) for h in result.exact]
    assert result.summary["exact_trace"]["mean"] == pytest.approx(np.mean(traces))
    d = result.to_dict()["fits"][0]
    assert d["exact_trace"] == pytest.approx(traces[0]) and np.shape(d["exact_hessian"]) == (2, 2)
    assert not landscape(model, data, directions=pairs, grid=3, span=1.0, exact=False).exact


def test_in_plane_hessian_needs_shared_names():
    with pytest.raises(FewbitsError, match="'pair'"):
        in_plane_hessian(mlp(), batches(), ({"0.weight": torch.zeros(8, 6)}, {"2.weight": torch.zeros(3, 8)}))
