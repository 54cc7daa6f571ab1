"""The result type shared by every quantizer, grouping, and input validation.

A quantized tensor is a code per weight plus a codebook row per group: the weight is rebuilt as
``codebook[group, codes]``. Groups are equal contiguous chunks of the row-major flattened tensor,
so per output channel is simply ``group_size = numel // shape[0]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param

MAX_BITS = 8


@dataclass(frozen=True)
class QuantizedTensor:
    """Codes (uint8, the weight's shape) and a codebook (float32, ``(n_groups, 2**bits)``).

    Example: ``qt = kmeans(w, bits=3); w_hat = qt.dequantize()``.
    """

    codes: torch.Tensor
    codebook: torch.Tensor
    bits: int
    scheme: str

    @property
    def shape(self) -> torch.Size:
        """Shape of the original weight."""
        return self.codes.shape

    @property
    def n_groups(self) -> int:
        """Number of codebook rows (1 for a per-tensor codebook)."""
        return self.codebook.shape[0]

    @property
    def group_size(self) -> int:
        """Number of consecutive weights (row-major) that share a codebook row."""
        return self.codes.numel() // self.n_groups

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rebuild the weight: each code replaced by its group's codebook value."""
        codes = self.codes.reshape(self.n_groups, self.group_size).long()
        return self.codebook.gather(1, codes).reshape(self.shape).to(dtype)

    def squared_error(self, weight: torch.Tensor, sample_weight: torch.Tensor | None = None) -> float:
        """Sum of (optionally importance-weighted) squared differences to ``weight``."""
        diff = (weight.detach().double() - self.dequantize(torch.float64)).pow_(2)
        if sample_weight is not None:
            diff.mul_(sample_weight.double())
        return float(diff.sum())


def check_bits(bits: object, owner: str, max_bits: int = MAX_BITS) -> int:
    """Return ``bits`` if it is an int in [1, max_bits], else raise the template error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= max_bits:
        raise bad_param("bits", f"an int in [1, {max_bits}]", bits, owner)
    return bits


def _all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()``, through numpy where it can (about 100x faster on CPU here)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())


def check_weight(weight: object, owner: str) -> torch.Tensor:
    """Return ``weight`` detached if it is a non-empty, finite, floating-point tensor."""
    if not isinstance(weight, torch.Tensor):
        raise FewbitsTypeError(
            f"The 'weight' parameter of {owner} must be a torch.Tensor. Got {type(weight).__name__} instead."
        )
    if not weight.is_floating_point():
        raise FewbitsTypeError(
            f"The 'weight' parameter of {owner} must have a floating-point dtype. Got {weight.dtype} instead; "
            "convert it with weight.float()."
        )
    if weight.numel() == 0:
        raise bad_param("weight", "a non-empty tensor", tuple(weight.shape), owner)
    if not _all_finite(weight):
        bad = int((~torch.isfinite(weight)).sum())
        raise FewbitsValueError(
            f"The 'weight' parameter of {owner} must be finite. Got {bad} NaN or inf value(s) instead."
        )
    return weight.detach()


def resolve_group_size(
    shape: torch.Size | tuple[int, ...],
    groups: int | str | None = None,
    group_size: int | None = None,
    owner: str = "quantize",
) -> int:
    """Number of consecutive weights per codebook row.

    ``groups=None`` and ``group_size=None``: one codebook for the tensor. ``groups=N``: N equal
    groups (P1's group-wise uses 128). ``groups="channel"``: one group per output channel (dim 0).
    ``group_size=G``: groups of G consecutive weights. N or G must divide the tensor evenly.
    """
    numel = math.prod(shape)
    if groups is not None and group_size is not None:
        raise FewbitsValueError(f"{owner}: give 'groups' or 'group_size', not both (got {groups!r} and {group_size!r}).")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise bad_param("group_size", "a positive int", group_size, owner)
        if numel % group_size:
            raise bad_param("group_size", f"a divisor of the tensor's {numel} elements", group_size, owner)
        return group_size
    if groups is None:
        return numel
    if groups == "channel":
        return numel // shape[0]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise bad_param("groups", "a positive int, 'channel' or None", groups, owner)
    if numel % groups:
        raise bad_param("groups", f"a divisor of the tensor's {numel} elements", groups, owner)
    return numel // groups


def check_sample_weight(sample_weight: object, weight: torch.Tensor, owner: str) -> torch.Tensor | None:
    """Validate per-weight importances: same shape, finite, non-negative; all-zero -> None (uniform)."""
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, torch.Tensor):
        raise FewbitsTypeError(
            f"The 'sample_weight' parameter of {owner} must be a torch.Tensor or None. "
            f"Got {type(sample_weight).__name__} instead."
        )
    if sample_weight.shape != weight.shape:
        raise bad_param("sample_weight", f"a tensor of the weight's shape {tuple(weight.shape)}",
                        tuple(sample_weight.shape), owner)
    sw = sample_weight.detach().cpu().to(torch.float64)
    a = sw.numpy()
    if not np.isfinite(a).all() or a.min() < 0:
        raise FewbitsValueError(
            f"The 'sample_weight' parameter of {owner} must be finite and non-negative; it holds "
            f"{int((~np.isfinite(a)).sum())} NaN/inf and {int((a < 0).sum())} negative value(s). "
            "Raw importance estimates can be negative or NaN: clamp or take absolute values first."
        )
    if not a.max() > 0:
        warnings.warn(f"{owner}: every sample_weight is zero; using uniform weights instead.",
                      UserWarning, stacklevel=3)
        return None
    return sw
