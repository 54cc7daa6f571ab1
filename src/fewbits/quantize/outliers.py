"""Dense-and-sparse quantization: a fraction of each weight tensor kept exact, the codebook fit to the rest.

SqueezeLLM keeps ~0.5% of the weights in a sparse full-precision matrix so that a few large values
neither stretch the codebook nor lose their precision. Here the kept weights are chosen per tensor
either by magnitude (``"magnitude"``: the largest ``|w|``) or by importance-weighted error
(``"error"``: the largest ``sample_weight * (w - w_hat)**2`` under a first fit of the codebook).
The codebook is then fit with those positions at zero weight and their values clamped into the
range of the rest, so they move neither the centroids nor the quantizer's range. The result keeps
the kept weights' flat positions (sorted) and exact values beside the :class:`QuantizedTensor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fewbits.errors import bad_param
from fewbits.quantize.base import QuantizedTensor

#: How the kept weights are chosen.
OUTLIER_SELECTIONS = ("magnitude", "error")
#: Bytes one kept weight costs on disk: its int32 flat position (the value adds the codebook dtype's size).
INDEX_BYTES = 4


def check_outlier_fraction(fraction: object, owner: str) -> float:
    """Return ``fraction`` as a float if it is a number in [0, 0.5), else raise the template error."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 0.5:
        raise bad_param("outliers", "a fraction in [0, 0.5) (0.005 keeps 0.5% of each layer's weights exact)",
                        fraction, owner)
    return float(fraction)


def check_selection(selection: object, owner: str) -> str:
    """Return ``selection`` if it names a way to choose outliers."""
    if selection not in OUTLIER_SELECTIONS:
        raise bad_param("outlier_selection", f"one of {OUTLIER_SELECTIONS}", selection, owner)
    return str(selection)


def outlier_count(numel: int, fraction: float) -> int:
    """How many of ``numel`` weights a fraction keeps exact (rounded down)."""
    return math.floor(numel * fraction)


@dataclass(frozen=True)
class DenseAndSparse:
    """A quantized tensor plus exact values at some flat positions (row-major), which win over the codes.

    ``index``: int64, sorted, unique, shape ``(k,)``; ``values``: float32, shape ``(k,)``.
    """

    quantized: QuantizedTensor
    index: torch.Tensor
    values: torch.Tensor

    @classmethod
    def plain(cls, quantized: QuantizedTensor) -> DenseAndSparse:
        """No weight kept apart."""
        return cls(quantized, torch.zeros(0, dtype=torch.int64), torch.zeros(0))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rebuilt weight: the codebook's values, with the kept weights exact."""
        w = self.quantized.dequantize(dtype).reshape(-1)
        w[self.index] = self.values.to(dtype)
        return w.reshape(self.quantized.shape)

    def squared_error(self, weight: torch.Tensor, sample_weight: torch.Tensor | None = None) -> float:
        """Sum of (optionally importance-weighted) squared differences to ``weight`` (zero at kept weights)."""
        diff = (weight.detach().double() - self.dequantize(torch.float64)).pow_(2)
        if sample_weight is not None:
            diff.mul_(sample_weight.double())
        return float(diff.sum())


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat positions of the ``k`` largest scores; at the threshold, the earliest positions win.

    A linear-time partition in numpy (a full sort of every weight is ~20x slower on CPU).
    """
    flat = scores.detach().reshape(-1).cpu().double().numpy()
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    above = np.flatnonzero(flat > threshold)
    ties = np.flatnonzero(flat == threshold)[:k - above.size]
    return torch.from_numpy(np.sort(np.concatenate([above, ties])))


def split_outliers(weight: torch.Tensor, quantizer: Callable[..., QuantizedTensor], bits: int, fraction: float, *,
                   selection: str = "magnitude", sample_weight: torch.Tensor | None = None,
                   **kw: object) -> DenseAndSparse:
    """Keep ``fraction`` of ``weight`` exact, quantize the rest with ``quantizer(w, bits, sample_weight=..., **kw)``.

    ``quantizer`` must accept ``sample_weight`` (kmeans, optimal). ``selection``: see the module
    docstring; ``"error"`` costs one extra fit. With ``fraction`` so small that no weight is kept,
    this is the plain quantizer.
    Example: ``ds = split_outliers(w, optimal, 2, 0.005); w_hat = ds.dequantize()``.
    """
    check_outlier_fraction(fraction, "split_outliers")
    check_selection(selection, "split_outliers")
    w = weight.detach()
    k = outlier_count(w.numel(), fraction)
    if k == 0:
        return DenseAndSparse.plain(quantizer(w, bits, sample_weight=sample_weight, **kw))
    if selection == "magnitude":
        index = _top(w.abs(), k)
    else:
        first = quantizer(w, bits, sample_weight=sample_weight, **kw)
        err = (w.double() - first.dequantize(torch.float64)).pow_(2)
        if sample_weight is not None:
            err.mul_(sample_weight.double())
        index = _top(err, k)
    keep = torch.ones(w.numel(), dtype=torch.float64)
    keep[index] = 0.0
    rest = w.reshape(-1)[keep > 0]
    fit_weight = keep.reshape(w.shape) if sample_weight is None else sample_weight.double() * keep.reshape(w.shape)
    fit_values = w.clamp(float(rest.min()), float(rest.max()))  # kept weights must not stretch the range
    qt = quantizer(fit_values, bits, sample_weight=fit_weight, **kw)
    return DenseAndSparse(qt, index, w.reshape(-1)[index].float().clone())
