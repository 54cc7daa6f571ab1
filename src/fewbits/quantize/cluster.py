"""Codebook quantizers: ``linear`` (P1's equal-width bins), ``kmeans`` (k-means++ and Lloyd) and
``optimal`` (globally least squared error, Wang & Song's dynamic program).

Each works group by group on float64 copies of the values (float32 codebook out) and returns a
:class:`QuantizedTensor`. 1-D clustering needs no distance matrix: ``kmeans`` sorts each group
once, after which a Lloyd iteration is ``2**bits`` binary searches and prefix-sum means;
``optimal`` runs its dynamic program on the sorted distinct values, or, for groups larger than
:func:`histogram_bins`, on a fine adaptive histogram of them (no sort). The compiled loops live
in :mod:`fewbits.quantize._kernels`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fewbits.errors import bad_param
from fewbits.quantize import _kernels, _optimal_dp
from fewbits.quantize.base import (QuantizedTensor, check_bits, check_sample_weight, check_weight,
                                   resolve_group_size)

def histogram_bins(bits: int, n_groups: int = 1) -> int:
    """Bins per group of ``optimal``'s histogram mode, and the group size above which "auto" uses it.

    2**14, fewer when many groups would make the dynamic program (cost ~ ``n_groups * 2**bits *
    bins``) slow, never under ``256 * 2**bits``: per tensor 16,384 at 1-6 bits and 65,536 at 8; with
    128 groups 16,384 at 1 bit down to 4,096 at 3-4 bits. Measured gap to the exact optimum, bins
    placed as :func:`fewbits.quantize._kernels.histogram_atoms` places them (every MiniLM-L6
    weight at 1-4 bits, every distinct shape at 5-8, and two Laplace tensors): per tensor at most
    4.2e-7 at 1-3 bits, 1.4e-6 at 4, 3.7e-6 at 5 and 1.3e-5 at 6-8; with 128 groups at most 1.5e-6
    at 1-4 bits.
    """
    budget = 1 << max(22 - bits - (n_groups - 1).bit_length(), 0)
    return max(min(1 << 14, budget), 256 << bits)


OPTIMAL_MODES = ("auto", "exact", "histogram")
#: Largest back-pointer table (``4 * 2**bits * group_size`` bytes) ``mode="exact"`` will allocate.
EXACT_TABLE_BYTES = 1 << 32


@dataclass
class _Groups:
    """Validated input as ``(n_groups, group_size)`` arrays, plus per-group range and center."""

    shape: torch.Size
    x: np.ndarray  # float32 or float64
    sw: np.ndarray | None  # float64, same shape as x
    lo: np.ndarray
    hi: np.ndarray
    center: np.ndarray

    @property
    def n_groups(self) -> int:
        return self.x.shape[0]

    def sw_arg(self) -> tuple[np.ndarray, bool]:
        """The kernels' (sample_weight, has_sample_weight) pair."""
        return (self.sw, True) if self.sw is not None else (np.ones((1, 1)), False)


def _prepare(weight: torch.Tensor, bits: int, groups: int | str | None, group_size: int | None,
             sample_weight: torch.Tensor | None, owner: str) -> _Groups:
    """Validate everything, then lay the values out one group per row (no copy when possible)."""
    check_bits(bits, owner)
    w = check_weight(weight, owner)
    gs = resolve_group_size(w.shape, groups, group_size, owner)
    sw_t = check_sample_weight(sample_weight, w, owner)
    w = w.cpu()
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    x = w.contiguous().numpy().reshape(-1, gs)
    sw = None
    if sw_t is not None:
        sw = sw_t.cpu().contiguous().numpy().reshape(-1, gs)
        dead = sw.sum(axis=1) <= 0
        if dead.any():
            warnings.warn(f"{owner}: {int(dead.sum())} of {sw.shape[0]} groups have all sample_weight zero; "
                          "those groups use uniform weights.", UserWarning, stacklevel=3)
            sw = sw.copy()
            sw[dead] = 1.0
    lo = x.min(axis=1).astype(np.float64)
    hi = x.max(axis=1).astype(np.float64)
    return _Groups(w.shape, x, sw, lo, hi, (lo + hi) / 2)


def _result(data: _Groups, codes: np.ndarray, codebook: np.ndarray, bits: int, scheme: str) -> QuantizedTensor:
    return QuantizedTensor(codes=torch.from_numpy(codes).reshape(data.shape),
                           codebook=torch.from_numpy(codebook.astype(np.float32)), bits=bits, scheme=scheme)


def _assign(data: _Groups, centroids: np.ndarray, accumulate: bool = True) -> tuple[np.ndarray, ...]:
    """Nearest-centroid codes (centroids sorted, centered), each code's weight and centered sum."""
    k = centroids.shape[1]
    codes = np.empty(data.x.shape, np.uint8)
    wsum = np.zeros((data.n_groups, k))
    xsum = np.zeros((data.n_groups, k))
    sw, has_sw = data.sw_arg()
    n_cells = min(max(data.x.shape[1] // 4, 64), 1 << 16)
    _kernels.assign(data.x, sw, has_sw, centroids, data.lo, data.hi, data.center, n_cells, accumulate,
                    codes, wsum, xsum)
    return codes, wsum, xsum


def _sorted_atoms(data: _Groups, centred: bool = True) -> tuple[np.ndarray, ...]:
    """Each group sorted once and run-length encoded: (ptr, value, weight, w*x, w*x**2), centred on
    the group's median (which becomes ``data.center``), or with ``centred=False`` left exactly as
    given (center 0: ``optimal``'s exact program pivots its own sums, and a shift would round
    values that differ by less than an ulp of it)."""
    if data.sw is None:
        xs, sws = np.sort(data.x, axis=1), np.ones((1, 1))
    else:
        order = np.argsort(data.x, axis=1, kind="stable")
        xs, sws = np.take_along_axis(data.x, order, 1), np.take_along_axis(data.sw, order, 1)
    # a value of the bulk, not (min + max) / 2: outliers far out would round every value to their scale
    data.center = xs[:, xs.shape[1] // 2].astype(np.float64) if centred else np.zeros(data.n_groups)
    n = data.x.size
    ptr = np.empty(data.n_groups + 1, np.int64)
    v, c, s, q = (np.empty(n) for _ in range(4))
    _kernels.sorted_atoms(xs, sws, data.sw is not None, data.center, ptr, v, c, s, q)
    m = ptr[-1]
    return ptr, v[:m], c[:m], s[:m], q[:m]


def coarse_bins(bits: int) -> int:
    """Equal-width coarse bins of ``optimal``'s histogram: 16 per cluster, at least 4096."""
    return max(4096, 16 << bits)


def _histogram_atoms(data: _Groups, bits: int, n_bins: int) -> tuple[np.ndarray, ...]:
    """Each group's non-empty bins of an adaptive histogram of about ``n_bins`` bins, as atoms.

    The sums of squares stay zero: the dynamic program does not need them (they are additive).
    At most ``n_bins // 16`` values per side beyond the bulk are kept as exact atoms (a quarter of
    them by the sample that finds the bulk): with ``n_bins // 4`` MiniLM-L6's weights held 1.5x
    ``n_bins`` atoms and the program took 7x the time of the pre-outlier code at 8 bits.
    """
    n_coarse = coarse_bins(bits)
    tail_cap = n_bins // 16
    size = data.n_groups * min(n_coarse + 2 * n_bins + 2 * tail_cap, data.x.shape[1])
    ptr = np.empty(data.n_groups + 1, np.int64)
    v, c, s = (np.empty(size) for _ in range(3))
    sw, has_sw = data.sw_arg()
    _kernels.histogram_atoms(data.x, sw, has_sw, data.lo, data.hi, n_coarse, n_bins, tail_cap, data.center, ptr,
                             v, c, s)
    m = ptr[-1]
    return ptr, v[:m], c[:m], s[:m], np.zeros(m)


def linear(weight: torch.Tensor, bits: int, *, groups: int | str | None = None,
           group_size: int | None = None) -> QuantizedTensor:
    """P1's linear scheme: ``2**bits`` equal-width bins over each group's [min, max].

    A weight ``v`` gets code ``min(floor((v - min) / w), 2**bits - 1)`` with
    ``w = (max - min) / 2**bits``; a bin's codebook value is the MEAN of the weights in it, and the
    bin centre ``min + (j + 1/2) * w`` when the bin is empty. A constant group has zero error.
    Example: ``qt = linear(w, 3, groups=128)``.
    """
    data = _prepare(weight, bits, groups, group_size, None, "linear")
    k = 1 << bits
    codes = np.empty(data.x.shape, np.uint8)
    wsum = np.zeros((data.n_groups, k))
    xsum = np.zeros((data.n_groups, k))
    _kernels.linear_codes(data.x, data.lo, data.hi, bits, codes, wsum, xsum, data.center)
    width = (data.hi - data.lo) / k
    centres = data.lo[:, None] + (np.arange(k) + 0.5) * width[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = xsum / wsum + data.center[:, None]
    return _result(data, codes, np.where(wsum > 0, means, centres), bits, "linear")


def n_local_trials(bits: int) -> int:
    """Candidates tried per new centre by greedy k-means++ (scikit-learn's ``2 + log(k)``)."""
    return 2 + int(math.log(1 << bits))


def kmeans(weight: torch.Tensor, bits: int, *, groups: int | str | None = None, group_size: int | None = None,
           sample_weight: torch.Tensor | None = None, max_iter: int | None = 3, tol: float = 1e-6,
           seed: int = 0, n_init: int = 1) -> QuantizedTensor:
    """k-means with ``2**bits`` centroids per group: greedy k-means++ seeding, then Lloyd iterations.

    Seeding draws ``n_local_trials(bits)`` candidates per centre with probability proportional to
    the (sample_weight-weighted) squared distance to the nearest chosen centre and keeps the best,
    using ``numpy.random.default_rng(seed)``: same seed, same result. Lloyd runs at most
    ``max_iter`` iterations (P1 uses 3; ``None``: until convergence) and stops early at a fixed
    point or when the squared error falls by less than ``tol`` times itself. ``n_init`` runs (seeding
    and Lloyd) keep the one of least error; P1 uses one, and in 1-D each extra run costs little next
    to the one sort. Codes are the nearest final centroid; the codebook holds the final centroids.
    ``sample_weight`` (finite, >= 0, the weight's shape) weights the squared error, e.g. by Fisher
    information.
    Example: ``qt = kmeans(w, 2, max_iter=None, sample_weight=fisher)``.
    """
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0):
        raise bad_param("max_iter", "a non-negative int or None (until convergence)", max_iter, "kmeans")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or not math.isfinite(tol):
        raise bad_param("tol", "a finite float >= 0", tol, "kmeans")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise bad_param("seed", "a non-negative int", seed, "kmeans")
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise bad_param("n_init", "a positive int", n_init, "kmeans")
    data = _prepare(weight, bits, groups, group_size, sample_weight, "kmeans")
    k = 1 << bits
    trials = n_local_trials(bits)
    uniforms = np.random.default_rng(seed).random((n_init, 1 + (k - 1) * trials))
    ptr, v, c, s, q = _sorted_atoms(data)
    centroids = np.empty((data.n_groups, k))
    iters = np.zeros(data.n_groups, np.int64)
    _kernels.kmeans_centroids(ptr, v, c, s, q, k, trials, n_init, uniforms, -1 if max_iter is None else max_iter,
                              float(tol), centroids, iters)
    codes, _, _ = _assign(data, centroids, accumulate=False)
    return _result(data, codes, centroids + data.center[:, None], bits, "kmeans")


def optimal(weight: torch.Tensor, bits: int, *, groups: int | str | None = None, group_size: int | None = None,
            sample_weight: torch.Tensor | None = None, mode: str = "auto") -> QuantizedTensor:
    """Globally optimal 1-D k-means: the ``2**bits`` codebook of least (weighted) squared error.

    ``mode="exact"``: Wang & Song's dynamic program (Ckmeans.1d.dp) over each group's sorted
    distinct values, row minima by divide and conquer: O(2**bits * n log n) time and
    ``4 * 2**bits * n`` bytes for the back-pointers; provably optimal. ``mode="histogram"``: the
    same program over the non-empty bins of a histogram with about :func:`histogram_bins` bins
    (two passes, no sort): equal-width coarse bins that nest linear's, each cut in a power of two
    of parts by the cube root of its share of the values (where an optimal quantizer's levels
    are dense); optimal among partitions at bin edges, which include linear's, so never worse than
    ``linear``; then one exact Lloyd step (codes = nearest centroid, codebook = mean of its
    weights) which can only lower the error. Measured gap to the exact optimum: at most 1.6e-5
    (MiniLM-L6 weights at 1-8 bits; BENCHMARKS.md). ``mode="auto"``: exact for groups of at most
    ``histogram_bins(bits, n_groups)`` values, else histogram. Exact at 8 bits on many mid-sized
    groups is slow (about 14 s for 128 groups of a 768x3072 matrix, BENCHMARKS.md); lower bits or
    per-tensor codebooks take well under a second.
    Example: ``qt = optimal(w, 3)``; ``optimal(w, 2, groups="channel", mode="exact")``.
    """
    if mode not in OPTIMAL_MODES:
        raise bad_param("mode", f"one of {OPTIMAL_MODES}", mode, "optimal")
    data = _prepare(weight, bits, groups, group_size, sample_weight, "optimal")
    k = 1 << bits
    n_bins = histogram_bins(bits, data.n_groups)
    if mode == "auto":
        mode = "exact" if data.x.shape[1] <= n_bins else "histogram"
    if mode == "exact" and 4 * k * data.x.shape[1] > EXACT_TABLE_BYTES:
        raise bad_param("mode", f"'histogram' or 'auto' for groups of {data.x.shape[1]} values at {bits} bits "
                        f"(the exact table would take {4 * k * data.x.shape[1] / 2**30:.1f} GiB)", mode, "optimal")
    ptr, v, c, _, _ = _sorted_atoms(data, centred=False) if mode == "exact" else _histogram_atoms(data, bits, n_bins)
    centroids = np.empty((data.n_groups, k))
    trust = _optimal_dp.EXACT_TRUST if mode == "exact" else _optimal_dp.HISTOGRAM_TRUST
    _optimal_dp.optimal_centroids(ptr, v, c, k, trust, centroids)
    codes, wsum, xsum = _assign(data, centroids)
    with np.errstate(invalid="ignore", divide="ignore"):
        codebook = np.where(wsum > 0, xsum / wsum, centroids)
    return _result(data, codes, codebook + data.center[:, None], bits, "optimal")
