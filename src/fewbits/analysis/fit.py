"""Curvature of a 2-D loss surface: a least-squares paraboloid near the centre, repeated over direction pairs.

The fitted model is ``f(a, b) = c + g_x a + g_y b + (H_xx a^2 + 2 H_xy a b + H_yy b^2) / 2``, so ``H``
is the Hessian of the loss restricted to the plane spanned by the two directions, in grid
coordinates: for a loss ``0.5 w^T A w`` it recovers ``D^T A D`` exactly, with ``D = [dx dy]``.
P2 measures flatness by its trace (sum of curvatures); the authors' scripts also average its
determinant, so both are reported, with the fit's R^2 and the number of points dropped.

A paraboloid fitted over a finite span is not the Hessian at the centre: on a trained MNIST-1D CNN
its trace was 2.4-7.3x the exact in-plane curvature, depending on the radius and loss threshold, and
1.2x on a grid of half-width 0.05 (``benchmarks/curvature.py``).
:func:`landscape` therefore also reports :func:`in_plane_hessian`, the exact ``D^T H D`` from two
Hessian-vector products per pair, whose trace ``dx^T H dx + dy^T H dy`` is the curvature at the
centre along the same directions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from fewbits.analysis.directions import DirectionPair, direction_pairs
from fewbits.analysis.hessian import _Hessian
from fewbits.analysis.objective import LossFn, prepare_batches
from fewbits.analysis.surface import Surface2D, grid_coordinates, surface_2d
from fewbits.errors import FewbitsValueError, bad_param


@dataclass(frozen=True)
class ParaboloidFit:
    """A fitted paraboloid: ``hessian`` (2x2), ``gradient`` (2,), ``value`` at the centre; its
    ``trace`` and ``determinant``; ``r2`` of the fit; ``points`` used; ``dropped`` (loss above
    ``max_loss`` or not finite, within the radius)."""

    hessian: np.ndarray
    gradient: np.ndarray
    value: float
    trace: float
    determinant: float
    r2: float
    points: int
    dropped: int

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists, for JSON."""
        d = asdict(self)
        d["hessian"] = self.hessian.tolist()
        d["gradient"] = self.gradient.tolist()
        return d


def fit_paraboloid(surface: Surface2D, *, radius: float | None = None, max_loss: float | None = None) -> ParaboloidFit:
    """Least-squares paraboloid through the grid points within ``radius`` of (0, 0) (all points if None).

    Points whose loss exceeds ``max_loss`` (the authors' scripts use 3) or is not finite are dropped
    and counted. Needs at least 6 points. R^2 is 1 - SS_res / SS_tot (1.0 for an exact fit of a flat surface).
    """
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0):
        raise bad_param("radius", "a positive number or None", radius, "fit_paraboloid")
    if max_loss is not None and (isinstance(max_loss, bool) or not isinstance(max_loss, (int, float))):
        raise bad_param("max_loss", "a number or None", max_loss, "fit_paraboloid")
    a, b = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    a, b, f = a.ravel(), b.ravel(), np.asarray(surface.loss, np.float64).ravel()
    inside = np.ones_like(f, bool) if radius is None else np.hypot(a, b) <= radius * (1 + 1e-12)
    keep = inside & np.isfinite(f)
    if max_loss is not None:
        keep &= f <= max_loss
    dropped = int(inside.sum() - keep.sum())
    if keep.sum() < 6:
        raise FewbitsValueError(
            f"fit_paraboloid needs at least 6 points but only {int(keep.sum())} remain (radius={radius}, "
            f"max_loss={max_loss}, {dropped} dropped); widen the radius, raise max_loss or use a finer grid."
        )
    a, b, f = a[keep], b[keep], f[keep]
    design = np.stack([np.ones_like(a), a, b, a * a / 2, a * b, b * b / 2], axis=1)
    coef, *_ = np.linalg.lstsq(design, f, rcond=None)
    c, gx, gy, hxx, hxy, hyy = coef
    residual = f - design @ coef
    ss_res, ss_tot = float(residual @ residual), float(((f - f.mean()) ** 2).sum())
    scale = max(float(np.abs(f).max()), 1.0) ** 2 * f.size
    if ss_tot <= 1e-24 * scale:
        r2 = 1.0 if ss_res <= 1e-24 * scale else float("nan")
    else:
        r2 = 1.0 - ss_res / ss_tot
    hessian = np.array([[hxx, hxy], [hxy, hyy]])
    return ParaboloidFit(hessian, np.array([gx, gy]), float(c), float(hxx + hyy),
                         float(hxx * hyy - hxy * hxy), float(r2), int(f.size), dropped)


def in_plane_hessian(model: nn.Module, batches: Iterable[Any], pair: DirectionPair, *,
                     loss_fn: LossFn | None = None) -> np.ndarray:
    """The exact 2x2 Hessian of the loss in the plane of ``pair = (dx, dy)`` at the model's weights:
    ``[[dx^T H dx, dx^T H dy], [dy^T H dx, dy^T H dy]]``, from two Hessian-vector products (``H``
    of the parameters the directions name; the others held fixed). Its trace is what the fitted
    paraboloid's trace approximates.
    """
    dx, dy = pair
    names = [n for n in dx if n in dy]
    if not names:
        raise bad_param("pair", "two directions over the same parameter names", sorted(dx)[:3], "in_plane_hessian")
    op = _Hessian(model, batches, loss_fn, names, "in_plane_hessian")
    vectors = [{n: d[n].to(op.base[n].device, op.base[n].dtype) for n in names} for d in (dx, dy)]
    products = [op.apply(v)[1] for v in vectors]
    out = np.empty((2, 2))
    for i, hv in enumerate(products):
        assert hv is not None
        for j, v in enumerate(vectors):
            out[i, j] = float(sum((hv[n].double() * v[n].double()).sum() for n in names))
    return (out + out.T) / 2


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd}


def summarize_fits(fits: Sequence[ParaboloidFit]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one fit) of trace, determinant and R^2 over pairs."""
    if not fits:
        raise bad_param("fits", "a non-empty sequence of ParaboloidFit", fits, "summarize_fits")
    return {
        "pairs": len(fits),
        "trace": _mean_sd([f.trace for f in fits]),
        "determinant": _mean_sd([f.determinant for f in fits]),
        "r2": _mean_sd([f.r2 for f in fits]),
        "dropped": int(sum(f.dropped for f in fits)),
    }


@dataclass
class Landscape:
    """Surfaces, fits and their summary over several direction pairs (see :func:`landscape`);
    ``exact`` holds each pair's exact in-plane Hessian (:func:`in_plane_hessian`), or is empty
    when it was not computed."""

    surfaces: list[Surface2D]
    fits: list[ParaboloidFit]
    summary: dict[str, Any]
    directions: Sequence[DirectionPair] = field(repr=False)
    exact: list[np.ndarray] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The summary and every fit (with its pair's exact in-plane Hessian and trace), for JSON."""
        fits = [f.to_dict() for f in self.fits]
        for d, h in zip(fits, self.exact):
            d["exact_hessian"], d["exact_trace"] = h.tolist(), float(np.trace(h))
        return {"summary": self.summary, "fits": fits}


def landscape(model: nn.Module, batches: Iterable[Any], *, pairs: int = 10, grid: int = 21, span: float = 1.0,
              seed: int = 0, directions: Sequence[DirectionPair] | None = None, include_1d: bool = False,
              radius: float | None = None, max_loss: float | None = None, loss_fn: LossFn | None = None,
              progress: bool = False, exact: bool = True) -> Landscape:
    """2-D surfaces on a ``grid`` x ``grid`` square of half-width ``span``, one per direction pair, each fitted.

    ``directions`` (e.g. normalized against a reference model, P2's STE model) are used as given;
    otherwise ``pairs`` pairs are drawn from ``seed`` and normalized against ``model`` itself. Each
    pair is generated only when its surface is computed. With ``exact`` (default), each pair's
    exact in-plane Hessian is computed too (two Hessian-vector products, about the cost of a few
    grid points), and the summary gets ``exact_trace`` (mean and sd) beside the fitted ``trace``.
    """
    if directions is None:
        directions = direction_pairs(model, pairs, seed, include_1d=include_1d)
    elif len(directions) == 0:
        raise bad_param("directions", "a non-empty sequence of (dx, dy) pairs or None", directions, "landscape")
    coords = grid_coordinates(grid, span)
    prepared = prepare_batches(model, batches)
    surfaces, fits, hessians = [], [], []
    for pair in tqdm(directions, desc="direction pairs", disable=not progress or len(directions) == 1):
        surface = surface_2d(model, prepared, pair, coords, loss_fn=loss_fn, progress=progress)
        surfaces.append(surface)
        fits.append(fit_paraboloid(surface, radius=radius, max_loss=max_loss))
        if exact:
            hessians.append(in_plane_hessian(model, prepared, pair, loss_fn=loss_fn))
    summary = summarize_fits(fits)
    if hessians:
        summary["exact_trace"] = _mean_sd([float(np.trace(h)) for h in hessians])
    summary.update(grid=grid, span=float(span), radius=radius, max_loss=max_loss)
    return Landscape(surfaces, fits, summary, directions, hessians)
