"""Uniform (round-to-nearest on a fixed grid) quantization, and its straight-through fake-quantizer.

Two grids of ``2**bits`` levels, ``scale`` apart:

- symmetric (mid-rise): levels ``(k + 1/2) * scale`` for ``k`` in ``[-2**(bits-1), 2**(bits-1) - 1]``,
  symmetric about 0, with 0 itself not a level. 1 bit: ``{-scale/2, +scale/2}`` (sign binarization);
  2 bits: ``{-1.5, -0.5, 0.5, 1.5} * scale``; 8 bits: ``{-127.5, ..., 127.5} * scale``.
  :func:`uniform_scale` picks ``scale = 2 * max|x| / (2**bits - 1)`` so the outer levels are
  ``+-max|x|`` (2 bits: ``{-1, -1/3, 1/3, 1} * max|x|``), except at 1 bit, where outer levels at
  ``+-max|x|`` would move almost every weight far away: there ``scale = 2 * mean|x|``, so the
  levels are ``+-mean|x|``, the least-squares binary scale (as in binary-weight networks).
- asymmetric (mid-tread, with an integer ``zero_point``): levels ``(k - zero_point) * scale`` for
  ``k`` in ``[0, 2**bits - 1]``; 0 is exactly a level. :func:`uniform_scale` widens ``[min, max]``
  to contain 0 (as PyTorch's observers do, so ReLU zeros stay exact), takes
  ``scale = (max - min) / (2**bits - 1)`` and ``zero_point = round(-min / scale)``.

:func:`fake_quantize` is differentiable: only the rounding is straight-through, so the gradient
reaches ``x`` inside the clip range (1) and not outside (0), and reaches ``scale`` as in LSQ.
:func:`uniform` returns a :class:`QuantizedTensor` whose values are exactly those of
``fake_quantize(weight.float(), bits, *uniform_scale(weight.float(), bits, ...))``.
"""

from __future__ import annotations

import math

import torch

from fewbits.errors import FewbitsTypeError, bad_param
from fewbits.quantize.base import QuantizedTensor, check_bits, check_weight, resolve_group_size

# fake_quantize also serves activations, where 16-bit grids are meaningful; codes (uint8) stop at 8.
MAX_FAKE_BITS = 16


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even) in the forward pass; identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def grid_limits(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of the grid index: symmetric is centred, asymmetric starts at 0."""
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with zeros replaced by 1, so that a zero scale (an all-zero group) divides safely."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _grid_index(x: torch.Tensor, bits: int, scale: torch.Tensor, zero_point: torch.Tensor | None,
                symmetric: bool, ste: bool) -> torch.Tensor:
    """Grid index as a float tensor (integer-valued), in ``[qmin, qmax]``."""
    qmin, qmax = grid_limits(bits, symmetric)
    v = x / _safe(scale)
    v = v - 0.5 if symmetric else v + zero_point
    v = torch.clamp(v, qmin, qmax)
    return round_ste(v) if ste else torch.round(v)


def _check_fake_args(x: object, bits: object, symmetric: bool, zero_point: object, owner: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise FewbitsTypeError(
            f"The 'x' parameter of {owner} must be a floating-point torch.Tensor. Got {got} instead.")
    check_bits(bits, owner, MAX_FAKE_BITS)
    if symmetric and zero_point is not None:
        raise bad_param(
            "zero_point", "None when symmetric=True (the symmetric grid has no zero point)", "a tensor", owner)


def fake_quantize(x: torch.Tensor, bits: int, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
                  *, symmetric: bool = True) -> torch.Tensor:
    """Round ``x`` to the uniform grid given by ``scale`` (and ``zero_point``), differentiably.

    Symmetric: ``(round_ste(clamp(x/scale - 1/2, qmin, qmax)) + 1/2) * scale``; asymmetric:
    ``(round_ste(clamp(x/scale + zero_point, 0, 2**bits - 1)) - zero_point) * scale``. ``scale`` and
    ``zero_point`` broadcast against ``x`` (a scalar tensor, or per channel ``(C, 1, ...)``); a zero
    scale maps to 0. Bits 1 to 16. Gradient: 1 to ``x`` inside the clip range, 0 outside; LSQ's
    gradient to ``scale``. Example: ``fake_quantize(w, 2, *uniform_scale(w, 2, groups="channel"))``.
    """
    _check_fake_args(x, bits, symmetric, zero_point, "fake_quantize")
    if not symmetric and zero_point is None:
        raise bad_param(
            "zero_point", "a tensor when symmetric=False (take it from uniform_scale)", None, "fake_quantize")
    q = _grid_index(x, bits, scale, zero_point, symmetric, ste=True)
    return (q + 0.5) * scale if symmetric else (q - zero_point) * scale


def _group_stats(flat: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row scale (and zero point) of a ``(n_groups, group_size)`` tensor, each ``(n_groups, 1)``."""
    levels = (1 << bits) - 1
    if symmetric:
        size = flat.abs().mean(dim=1, keepdim=True) if bits == 1 else flat.abs().amax(dim=1, keepdim=True)
        return size * (2.0 / levels), None
    lo = flat.amin(dim=1, keepdim=True).clamp(max=0)
    hi = flat.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / levels
    zero_point = torch.round(-lo / _safe(scale)).clamp(0, levels)
    return scale, zero_point


def _broadcast_shape(shape: torch.Size, group_size: int) -> tuple[int, ...]:
    """Shortest leading-dims shape (trailing dims 1) at which groups of ``group_size`` are whole slices."""
    for k in range(len(shape) + 1):
        trailing = math.prod(shape[k:])
        if group_size % trailing == 0:
            return tuple(shape[:k]) + (1,) * (len(shape) - k)
    return tuple(shape)  # unreachable: k = ndim gives trailing = 1


def uniform_scale(x: torch.Tensor, bits: int, *, symmetric: bool = True, groups: int | str | None = None,
                  group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max-abs (symmetric; mean-abs at 1 bit) or min/max (asymmetric) ``scale`` and ``zero_point`` of each group.

    Both are shaped to broadcast against ``x``: ``(1, ..., 1)`` per tensor, ``(C, 1, ...)`` per
    channel; a group that spans several rows repeats its value on each, and groups smaller than a
    row give a tensor of ``x``'s shape. ``zero_point`` is None when symmetric. See the module
    docstring for the grids. Example: ``scale, zp = uniform_scale(a, 4, symmetric=False)``.
    """
    _check_fake_args(x, bits, symmetric, None, "uniform_scale")
    if x.numel() == 0:
        raise bad_param("x", "a non-empty tensor", tuple(x.shape), "uniform_scale")
    gs = resolve_group_size(x.shape, groups, group_size, "uniform_scale")
    xd = x.detach()
    scale, zero_point = _group_stats(xd.reshape(-1, gs), bits, symmetric)
    shape = _broadcast_shape(x.shape, gs)
    rows = math.prod(shape)
    per_row = rows // (x.numel() // gs)  # each group's value repeated over the slices it covers

    def spread(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).repeat_interleave(per_row).reshape(shape) if per_row > 1 else t.reshape(shape)

    return spread(scale), (None if zero_point is None else spread(zero_point))


def uniform(weight: torch.Tensor, bits: int, *, symmetric: bool = True, groups: int | str | None = None,
            group_size: int | None = None) -> QuantizedTensor:
    """Uniform quantization: codes = grid index, codebook row = the ``2**bits`` grid values of the group.

    Computed in float32; ``qt.dequantize()`` equals ``fake_quantize(w, bits, *uniform_scale(w, bits,
    ...))`` for ``w = weight.float()``. Example: ``qt = uniform(w, 4, symmetric=False, groups=128)``.
    """
    check_bits(bits, "uniform")
    w = check_weight(weight, "uniform").to(torch.float32)
    gs = resolve_group_size(w.shape, groups, group_size, "uniform")
    flat = w.reshape(-1, gs)
    scale, zero_point = _group_stats(flat, bits, symmetric)
    qmin, _ = grid_limits(bits, symmetric)
    q = _grid_index(flat, bits, scale, zero_point, symmetric, ste=False)
    codes = (q - qmin).to(torch.uint8).reshape(w.shape)
    k = torch.arange(qmin, qmin + (1 << bits), dtype=torch.float32).unsqueeze(0)
    codebook = (k + 0.5) * scale if symmetric else (k - zero_point) * scale
    return QuantizedTensor(codes=codes, codebook=codebook.contiguous(), bits=bits, scheme="uniform")
