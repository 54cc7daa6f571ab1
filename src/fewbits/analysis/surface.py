"""1-D and 2-D loss (and accuracy) surfaces around a model's effective weights.

The model is evaluated at ``w + alpha * dx (+ beta * dy)`` over a FIXED list of batches, in eval
mode without gradients. Index convention: ``surface.loss[i, j]`` is the loss at
``(alphas[i], betas[j])``: the first index follows the x direction (alpha), the second the y
direction (beta), like ``np.meshgrid(alphas, betas, indexing="ij")``.

Cost: the model is entered once; each grid point writes the perturbed weights into preallocated
buffers (one fused add per tensor, from the row's ``w + alpha dx`` kept while alpha repeats) and
runs one evaluation pass, so a surface costs its grid points times one evaluation pass plus a
little (``benchmarks/landscape.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fewbits.analysis.directions import check_against
from fewbits.analysis.objective import LossFn, classification_objective, evaluate_prepared, prepare_batches
from fewbits.analysis.params import effective_parameters, eval_mode, override_parameters
from fewbits.errors import bad_param


@dataclass
class Surface1D:
    """Loss (and accuracy, or None) at each coordinate ``alphas[i]`` along one direction."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON."""
        return {"alphas": self.alphas.tolist(), "loss": self.loss.tolist(),
                "accuracy": None if self.accuracy is None else self.accuracy.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Surface1D:
        """Inverse of :meth:`to_dict`."""
        acc = data.get("accuracy")
        return cls(np.asarray(data["alphas"], float), np.asarray(data["loss"], float),
                   None if acc is None else np.asarray(acc, float))


@dataclass
class Surface2D:
    """Loss (and accuracy, or None) on a grid: ``loss[i, j]`` is at ``(alphas[i], betas[j])``;
    shape (len(alphas), len(betas))."""

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None = None

    def save(self, path: str | Path) -> Path:
        """Write the grid as ``.npz`` (alphas, betas, loss, and accuracy when present)."""
        arrays = {"alphas": self.alphas, "betas": self.betas, "loss": self.loss}
        if self.accuracy is not None:
            arrays["accuracy"] = self.accuracy
        path = Path(path)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Surface2D:
        """Read a grid written by :meth:`save`."""
        with np.load(Path(path)) as data:
            acc = data["accuracy"] if "accuracy" in data.files else None
            return cls(data["alphas"], data["betas"], data["loss"], acc)

    def slices(self) -> dict[str, Surface1D]:
        """The 1-D slices through the centre: ``"x"`` along alpha at beta = 0, ``"y"`` along beta at alpha = 0.

        A slice is present only when the other axis holds the coordinate 0.
        """
        out: dict[str, Surface1D] = {}
        zero_b = np.flatnonzero(np.isclose(self.betas, 0.0))
        zero_a = np.flatnonzero(np.isclose(self.alphas, 0.0))
        if zero_b.size:
            j = int(zero_b[0])
            out["x"] = Surface1D(self.alphas, self.loss[:, j],
                                 None if self.accuracy is None else self.accuracy[:, j])
        if zero_a.size:
            i = int(zero_a[0])
            out["y"] = Surface1D(self.betas, self.loss[i, :],
                                 None if self.accuracy is None else self.accuracy[i, :])
        return out


def grid_coordinates(points: int, span: float) -> np.ndarray:
    """``points`` evenly spaced coordinates from ``-span`` to ``span`` (0 is on the grid when ``points`` is odd)."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise bad_param("grid", "an int >= 2", points, "grid_coordinates")
    if not isinstance(span, (int, float)) or isinstance(span, bool) or not np.isfinite(span) or span <= 0:
        raise bad_param("span", "a positive finite number", span, "grid_coordinates")
    return np.linspace(-float(span), float(span), points)


def _coordinates(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1 or not np.all(np.isfinite(arr)):
        raise bad_param(name, "a non-empty 1-D sequence of finite numbers", values, "surface")
    return arr


def _walk(model: nn.Module, batches: Iterable[Any], directions: Sequence[Mapping[str, torch.Tensor]],
          points: list[tuple[float, ...]], loss_fn: LossFn | None, progress: bool,
          desc: str) -> list[tuple[float, float | None]]:
    """Evaluate at ``w + sum_k c_k d_k`` for each tuple of coefficients ``c`` in ``points``."""
    prepared = prepare_batches(model, batches)
    weights = effective_parameters(model)
    for d in directions:
        check_against(weights, d, warn=False)
    check_against(weights, {n: t for d in directions for n, t in d.items()})
    names = [n for n in weights if any(n in d for d in directions)]
    base = {n: weights[n] for n in names}
    dirs = [{n: d[n].to(base[n].device, base[n].dtype) for n in names if n in d} for d in directions]
    buffers = {n: torch.empty_like(base[n]) for n in names}
    # w + c_1 d_1 + ... + c_{k-1} d_{k-1} is kept while those leading coefficients repeat (a row of
    # the grid), so each point costs one fused add per tensor: buffer = row + c_k d_k
    row = {n: base[n].clone() for n in names}
    row_key: tuple[float, ...] | None = None
    *lead_dirs, last_dir = dirs
    loss_fn = loss_fn or classification_objective
    results: list[tuple[float, float | None]] = []
    with eval_mode(model), torch.no_grad(), override_parameters(model, buffers):
        for coeffs in tqdm(points, desc=desc, leave=False) if progress else points:
            *lead, last = coeffs
            if tuple(lead) != row_key:
                row_key = tuple(lead)
                for n in names:
                    row[n].copy_(base[n])
                    for c, d in zip(lead, lead_dirs):
                        if n in d and c != 0.0:
                            row[n].add_(d[n], alpha=float(c))
            for n in names:
                if n in last_dir and last != 0.0:
                    torch.add(row[n], last_dir[n], alpha=float(last), out=buffers[n])
                else:
                    buffers[n].copy_(row[n])
            ev = evaluate_prepared(model, prepared, loss_fn)
            results.append((ev.loss, ev.accuracy))
    return results


def surface_1d(model: nn.Module, batches: Iterable[Any], direction: Mapping[str, torch.Tensor],
               alphas: Sequence[float] | np.ndarray, *, loss_fn: LossFn | None = None,
               progress: bool = False) -> Surface1D:
    """Loss and accuracy of ``model`` at ``w + alphas[i] * direction`` over the fixed ``batches``.

    The model is left unchanged (weights, parametrizations and train/eval flags).
    """
    a = _coordinates(alphas, "alphas")
    res = _walk(model, batches, [direction], [(float(x),) for x in a], loss_fn, progress, "1-D surface")
    loss = np.array([r[0] for r in res])
    acc = None if any(r[1] is None for r in res) else np.array([r[1] for r in res])
    return Surface1D(a, loss, acc)


def surface_2d(model: nn.Module, batches: Iterable[Any],
               directions: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
               alphas: Sequence[float] | np.ndarray, betas: Sequence[float] | np.ndarray | None = None, *,
               loss_fn: LossFn | None = None, progress: bool = False) -> Surface2D:
    """Loss and accuracy at ``w + alphas[i] * dx + betas[j] * dy``, stored at ``[i, j]``.

    ``directions`` is the pair ``(dx, dy)``; ``betas`` defaults to ``alphas``. The model is left unchanged.

    >>> from fewbits.analysis import direction_pairs
    >>> model = nn.Linear(3, 2); data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    >>> s = surface_2d(model, data, direction_pairs(model, 1, seed=0)[0], [-1, 0, 1], [0, 1])
    >>> s.loss.shape
    (3, 2)
    """
    a = _coordinates(alphas, "alphas")
    b = a if betas is None else _coordinates(betas, "betas")
    dx, dy = directions
    points = [(float(x), float(y)) for x in a for y in b]
    res = _walk(model, batches, [dx, dy], points, loss_fn, progress, "2-D surface")
    loss = np.array([r[0] for r in res]).reshape(a.size, b.size)
    acc = None if any(r[1] is None for r in res) else np.array([r[1] for r in res]).reshape(a.size, b.size)
    return Surface2D(a, b, loss, acc)
