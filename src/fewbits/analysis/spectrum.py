"""Hessian spectrum by Lanczos: extreme and top-n eigenvalues, spectral density, per-layer traces.

Lanczos with full reorthogonalisation on Hessian-vector products builds a tridiagonal ``T`` whose
eigenvalues (Ritz values) approach both ends of the spectrum at once; each Ritz value ``theta``
comes with a residual ``beta_m |y_m|`` that bounds its distance to an eigenvalue of ``H``, which is
the stopping rule (power iteration's "the Rayleigh quotient stopped moving" reported a smallest
eigenvalue of +0.005 as converged where the true one was -0.1). The basis is kept: ``steps``
vectors of the parameters' size and dtype. The density is stochastic Lanczos quadrature
(Ubaru, Chen & Saad 2017): per random probe, the Ritz values with the squared first components
of their eigenvectors as weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fewbits.analysis.hessian import Vector, _Hessian
from fewbits.analysis.objective import LossFn
from fewbits.errors import bad_param


def _flatten(op: _Hessian, vector: Vector) -> torch.Tensor:
    return torch.cat([vector[n].reshape(-1) for n in op.names])


def _unflatten(op: _Hessian, flat: torch.Tensor) -> Vector:
    out, start = {}, 0
    for n in op.names:
        size = op.base[n].numel()
        out[n] = flat[start:start + size].view_as(op.base[n])
        start += size
    return out


@dataclass(frozen=True)
class Lanczos:
    """A Lanczos run: ``alphas`` (m,), ``betas`` (m,) (``betas[-1]`` is the residual norm), and the
    Ritz values with their eigenvectors of ``T``."""

    alphas: np.ndarray
    betas: np.ndarray

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), residual bounds ``beta_m |y_m|``, and squared first components."""
        m = self.alphas.size
        t = np.diag(self.alphas) + np.diag(self.betas[:m - 1], 1) + np.diag(self.betas[:m - 1], -1)
        theta, y = np.linalg.eigh(t)
        return theta, np.abs(self.betas[-1] * y[-1]), y[0] ** 2


def _lanczos(op: _Hessian, start: torch.Tensor, steps: int,
             done: Any = None) -> Lanczos:
    """``steps`` Lanczos steps from ``start`` with full reorthogonalisation; stops early at an
    invariant subspace or when ``done(run)`` says so (checked after every step from the second)."""
    dim = start.numel()
    steps = min(steps, dim)
    basis = torch.empty(steps, dim, dtype=start.dtype, device=start.device)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    for j in range(steps):
        _, hv = op.apply(_unflatten(op, basis[j]))
        assert hv is not None
        w = _flatten(op, hv).to(basis.dtype)
        alphas.append(float(w.double() @ basis[j].double()))
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(w.double().norm())
        betas.append(beta)
        run = Lanczos(np.array(alphas), np.array(betas))
        scale = max(abs(a) for a in alphas) + max(betas)
        if j + 1 == steps or beta <= 1e-10 * max(scale, 1e-300) or (j >= 1 and done is not None and done(run)):
            return run
        basis[j + 1] = w / beta
    return Lanczos(np.array(alphas), np.array(betas))


def _start(op: _Hessian, generator: torch.Generator, fill: str) -> torch.Tensor:
    return _flatten(op, op.like(fill, generator))


def _check_int(name: str, value: Any, low: int, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_param(name, f"an int >= {low}", value, owner)


def _converged(theta: np.ndarray, residual: np.ndarray, index: np.ndarray, tol: float) -> bool:
    """Each Ritz value in ``index`` has residual at most ``tol`` times its size (floored at 1e-3 of
    the largest, so an eigenvalue near 0 can converge)."""
    floor = 1e-3 * float(np.abs(theta).max())
    return bool(np.all(residual[index] <= tol * np.maximum(np.abs(theta[index]), floor)))


@dataclass(frozen=True)
class EigenEstimate:
    """Hessian eigenvalues by Lanczos.

    ``largest_magnitude``: the eigenvalue of largest |lambda|, with its sign. With ``which="both"``,
    ``largest`` and ``smallest`` (algebraic) are the two ends of the spectrum; otherwise None.
    ``top``: the ``n`` largest (algebraic, descending) with their ``residuals`` (each Ritz value is
    within its residual of an eigenvalue of H). ``iterations`` counts Hessian-vector products;
    ``converged``: every value asked for reached the tolerance.
    """

    largest_magnitude: float
    largest: float | None
    smallest: float | None
    iterations: int
    converged: bool
    top: tuple[float, ...] = ()
    residuals: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON."""
        d = dict(self.__dict__)
        d["top"], d["residuals"] = list(self.top), list(self.residuals)
        return d


def top_eigenvalue(model: nn.Module, batches: Iterable[Any], *, which: str = "magnitude", max_iter: int = 100,
                   tol: float = 1e-4, seed: int = 0, loss_fn: LossFn | None = None,
                   params: Sequence[str] | None = None, n: int = 1) -> EigenEstimate:
    """Extreme Hessian eigenvalues of the dataset loss by Lanczos (full reorthogonalisation).

    ``which="magnitude"``: the eigenvalue of largest absolute value (signed); ``"both"`` also the
    largest and smallest algebraic ones (negative curvature away from a minimum). ``n``: how many
    of the largest to report in ``top``. Stops when each value asked for has a residual bound at
    most ``tol`` times its magnitude, or after ``max_iter`` products (one per step).
    Example: ``top_eigenvalue(model, batches, which="both", n=5).top``.
    """
    if which not in ("magnitude", "both"):
        raise bad_param("which", "'magnitude' or 'both'", which, "top_eigenvalue")
    _check_int("max_iter", max_iter, 2, "top_eigenvalue")
    _check_int("n", n, 1, "top_eigenvalue")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise bad_param("tol", "a positive number", tol, "top_eigenvalue")
    op = _Hessian(model, batches, loss_fn, params, "top_eigenvalue")
    generator = torch.Generator().manual_seed(seed)

    def wanted(theta: np.ndarray) -> np.ndarray:
        top = np.arange(theta.size - 1, max(theta.size - 1 - n, -1), -1)
        ends = [int(np.argmax(np.abs(theta)))] + ([0, theta.size - 1] if which == "both" else [])
        return np.unique(np.concatenate([top, ends]))

    def done(run: Lanczos) -> bool:
        theta, residual, _ = run.ritz()
        return theta.size > n and _converged(theta, residual, wanted(theta), tol)

    run = _lanczos(op, _start(op, generator, "normal"), max_iter, done)
    theta, residual, _ = run.ritz()
    dim = sum(op.base[name].numel() for name in op.names)
    converged = run.alphas.size == dim or run.betas[-1] <= 1e-10 * max(np.abs(theta).max(), 1e-300) or \
        _converged(theta, residual, wanted(theta), tol)
    mag = float(theta[int(np.argmax(np.abs(theta)))])
    top = theta[::-1][:n]
    both = which == "both"
    return EigenEstimate(mag, float(theta[-1]) if both else None, float(theta[0]) if both else None,
                         int(run.alphas.size), bool(converged), tuple(map(float, top)),
                         tuple(map(float, residual[::-1][:n])))


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: per probe, Ritz ``nodes`` and ``weights`` (rows sum to 1).

    The density is ``mean over probes of sum_k weights[p, k] * N(lambda; nodes[p, k], sigma**2)``;
    ``sum(weights * nodes**j) / probes`` estimates ``tr(H**j) / dim`` (exactly for one probe's
    ``v^T H^j v / v^T v`` when ``j < 2 * steps``).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The density on ``grid`` with Gaussian kernels of width ``sigma`` (integrates to 1)."""
        g = np.asarray(grid, np.float64)[:, None, None]
        kernel = np.exp(-0.5 * ((g - self.nodes[None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(axis=2).mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON."""
        return {"nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "dim": self.dim}


def spectral_density(model: nn.Module, batches: Iterable[Any], *, steps: int = 30, probes: int = 5, seed: int = 0,
                     loss_fn: LossFn | None = None, params: Sequence[str] | None = None) -> SpectralDensity:
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature (``probes`` Rademacher
    starts, ``steps`` Lanczos steps each; ``probes * steps`` Hessian-vector products).
    Example: ``sd = spectral_density(model, batches); sd.density(np.linspace(-1, 10, 200), 0.05)``.
    """
    _check_int("steps", steps, 2, "spectral_density")
    _check_int("probes", probes, 1, "spectral_density")
    op = _Hessian(model, batches, loss_fn, params, "spectral_density")
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(probes):
        theta, _, first = _lanczos(op, _start(op, generator, "rademacher"), steps).ritz()
        pad = steps - theta.size  # an invariant subspace reached early: zero-weight nodes
        nodes.append(np.concatenate([theta, np.full(pad, theta[-1])]))
        weights.append(np.concatenate([first, np.zeros(pad)]))
    dim = sum(op.base[name].numel() for name in op.names)
    return SpectralDensity(np.array(nodes), np.array(weights), dim)


@dataclass(frozen=True)
class LayerTraces:
    """Hutchinson estimate of the trace of each parameter tensor's diagonal block of H: ``traces``
    and ``standard_errors`` by name, over ``probes`` Rademacher probes (the same probes for all,
    so they sum to the whole trace's estimate)."""

    traces: dict[str, float]
    standard_errors: dict[str, float]
    probes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON."""
        return {"traces": self.traces, "standard_errors": self.standard_errors, "probes": self.probes}


def layer_traces(model: nn.Module, batches: Iterable[Any], *, probes: int = 50, seed: int = 0,
                 loss_fn: LossFn | None = None, params: Sequence[str] | None = None) -> LayerTraces:
    """Per-parameter-tensor traces of the Hessian: ``mean of v_p^T (H v)_p`` over Rademacher ``v``.
    Example: ``layer_traces(model, batches).traces["0.weight"]``.
    """
    _check_int("probes", probes, 2, "layer_traces")
    op = _Hessian(model, batches, loss_fn, params, "layer_traces")
    generator = torch.Generator().manual_seed(seed)
    samples = {name: [] for name in op.names}
    for _ in range(probes):
        v = op.like("rademacher", generator)
        _, hv = op.apply(v)
        assert hv is not None
        for name in op.names:
            samples[name].append(float((hv[name].double() * v[name].double()).sum()))
    arr = {name: np.asarray(s) for name, s in samples.items()}
    return LayerTraces({n: float(a.mean()) for n, a in arr.items()},
                       {n: float(a.std(ddof=1) / math.sqrt(a.size)) for n, a in arr.items()}, probes)
