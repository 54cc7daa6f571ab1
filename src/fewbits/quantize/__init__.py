"""Pure tensor quantizers: ``weight -> QuantizedTensor`` (no nn.Module, no I/O).

Schemes: ``linear`` (P1's equal-width bins, bin value = mean), ``kmeans`` (k-means++ and Lloyd),
``optimal`` (least squared error, exact dynamic program), ``uniform`` (round to a fixed grid; its
differentiable form ``fake_quantize`` serves straight-through training). Every scheme takes
``groups=N``, ``groups="channel"`` or ``group_size=G``; one codebook row per group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fewbits.errors import bad_param
from fewbits.quantize.base import QuantizedTensor, resolve_group_size
from fewbits.quantize.cluster import OPTIMAL_MODES, histogram_bins, kmeans, linear, optimal
from fewbits.quantize.pack import pack, packed_nbytes, unpack
from fewbits.quantize.uniform import fake_quantize, round_ste, uniform, uniform_scale

#: Scheme name -> quantizer; each is ``f(weight, bits, **kw) -> QuantizedTensor``.
SCHEMES: dict[str, Callable[..., QuantizedTensor]] = {
    "linear": linear,
    "kmeans": kmeans,
    "optimal": optimal,
    "uniform": uniform,
}


def quantize(weight: torch.Tensor, scheme: str, bits: int, **kw: object) -> QuantizedTensor:
    """Quantize ``weight`` with the named scheme; ``kw`` goes to it (groups, sample_weight, seed, ...).

    Example: ``quantize(w, "kmeans", 3, groups=128, max_iter=None)``.
    """
    if scheme not in SCHEMES:
        raise bad_param("scheme", f"one of {sorted(SCHEMES)}", scheme, "quantize")
    return SCHEMES[scheme](weight, bits, **kw)


__all__ = [
    "OPTIMAL_MODES", "QuantizedTensor", "SCHEMES", "fake_quantize", "histogram_bins", "kmeans", "linear",
    "optimal", "pack", "packed_nbytes", "quantize", "resolve_group_size", "round_ste", "uniform",
    "uniform_scale", "unpack",
]
