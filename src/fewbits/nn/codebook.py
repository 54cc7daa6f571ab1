"""The codebook parametrization: frozen codes and a trainable codebook rebuild a layer's weight.

The forward pass rebuilds the weight as ``codebook[group, codes]`` with one gather over a flat index
computed once (``group * 2**bits + code``), whatever the number of groups, so group-wise codebooks
cost no more than one per tensor. The backward pass gives each codebook entry the MEAN of the
gradients of the weights that use it (P1's centroid fine-tuning), with one scatter-add and a divide
by member counts; entries without members get a zero gradient. Optional outliers (dense-and-sparse,
:mod:`fewbits.quantize.outliers`) are exact values at some flat positions written over the gathered
weight; they train like any weight, and their positions are no codebook entry's members.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from fewbits.errors import FewbitsTypeError, bad_param
from fewbits.quantize.base import MAX_BITS, QuantizedTensor, check_bits


def _version(t: torch.Tensor) -> int | None:
    """In-place edit counter (None for inference tensors, which keep none)."""
    return None if t.is_inference() else t._version


class _GatherMean(torch.autograd.Function):
    """``flat_codebook[index]`` forward; backward averages the gradient over each entry's members."""

    @staticmethod
    def forward(ctx, codebook: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, counts)
        ctx.codebook_shape = codebook.shape
        return codebook.reshape(-1).index_select(0, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        index, counts = ctx.saved_tensors
        total = grad.new_zeros(counts.numel()).index_add_(0, index, grad.reshape(-1))
        mean = total.div_(counts.clamp(min=1).to(total.dtype))  # (n_groups * 2**bits,), zero where no member
        return mean.view(ctx.codebook_shape), None, None


class Codebook(nn.Module):
    """Weight parametrization ``weight = codebook[group, codes]`` with frozen codes.

    ``codes``: uint8 buffer in the weight's shape (never trained). ``codebook``: parameter of shape
    ``(n_groups, 2**bits)``; groups are equal contiguous chunks of the row-major flattened weight.
    Its gradient is the mean of its members' gradients. Freeze it with ``requires_grad_(False)``
    (e.g. to learn a mask over a fixed quantized base); while it cannot receive a gradient, the
    rebuilt weight is cached and reused until the codebook changes.

    Registered by :func:`fewbits.compress`; the module's original weight is then an empty buffer
    (the parametrization ignores it), so the FP32 copy is freed.

    ``outlier_index`` (sorted unique flat positions, int64) and ``outlier_values`` (floating point, same
    length) keep some weights exact: buffer ``outlier_index`` and parameter ``outlier_values`` (both
    None without outliers, so plain codebooks keep their state_dict keys).

    Example: ``cb = Codebook.from_quantized(qt); w = cb()`` rebuilds ``qt.dequantize()``.
    """

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor, bits: int, scheme: str = "custom",
                 outlier_index: torch.Tensor | None = None, outlier_values: torch.Tensor | None = None) -> None:
        super().__init__()
        check_bits(bits, "Codebook", MAX_BITS)
        if codes.dtype != torch.uint8:
            raise FewbitsTypeError(f"The 'codes' parameter of Codebook must be a uint8 tensor. Got {codes.dtype} instead.")
        if not codebook.is_floating_point() or codebook.dim() != 2 or codebook.shape[1] != 1 << bits:
            raise bad_param("codebook", f"a floating-point tensor of shape (n_groups, {1 << bits})",
                            f"{codebook.dtype} {tuple(codebook.shape)}", "Codebook")
        if codebook.shape[0] < 1 or codes.numel() % codebook.shape[0]:
            raise bad_param("codebook", f"a number of rows (groups) dividing the {codes.numel()} codes",
                            codebook.shape[0], "Codebook")
        if codes.numel() and int(codes.max()) >= 1 << bits:
            raise bad_param("codes", f"values below 2**bits = {1 << bits}", int(codes.max()), "Codebook")
        self.bits = bits
        self.scheme = scheme
        self.register_buffer("codes", codes.detach().clone())
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("outlier_index", None)
        self.register_parameter("outlier_values", None)
        if outlier_index is not None or outlier_values is not None:
            self._set_outliers(outlier_index, outlier_values, codebook.dtype)
        self.register_buffer("_index", torch.empty(0, dtype=torch.int32), persistent=False)
        self.register_buffer("_counts", torch.empty(0, dtype=torch.int32), persistent=False)
        self._cache: tuple[tuple, torch.Tensor, int | None] | None = None
        self._build_index()

    def _set_outliers(self, index: torch.Tensor | None, values: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Validate and register the exact values (positions sorted, unique, inside the weight)."""
        if index is None or values is None or index.dim() != 1 or values.shape != index.shape \
                or index.dtype not in (torch.int32, torch.int64) or not values.is_floating_point():
            raise bad_param("outlier_index", "a 1-D int tensor with a floating-point outlier_values of its length",
                            None if index is None else f"{index.dtype} {tuple(index.shape)}", "Codebook")
        index = index.detach().to(self.codes.device, torch.int64)
        if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= self.codes.numel()
                              or not bool((index[1:] > index[:-1]).all())):
            raise bad_param("outlier_index", f"sorted unique positions in [0, {self.codes.numel()})",
                            index[:5].tolist(), "Codebook")
        self.outlier_index = index.clone()
        self.outlier_values = nn.Parameter(values.detach().to(self.codes.device, dtype).clone())

    @property
    def n_outliers(self) -> int:
        """How many weights are kept exact beside the codebook."""
        return 0 if self.outlier_index is None else self.outlier_index.numel()

    @classmethod
    def from_quantized(cls, qt: QuantizedTensor, dtype: torch.dtype | None = None) -> Codebook:
        """Build from a quantizer's result; ``dtype`` of the codebook (default: float32 as stored)."""
        codebook = qt.codebook if dtype is None else qt.codebook.to(dtype)
        return cls(qt.codes, codebook, qt.bits, qt.scheme)

    @property
    def shape(self) -> torch.Size:
        """Shape of the rebuilt weight."""
        return self.codes.shape

    @property
    def n_groups(self) -> int:
        """Number of codebook rows."""
        return self.codebook.shape[0]

    @property
    def group_size(self) -> int:
        """Consecutive weights (row-major) sharing one codebook row."""
        return self.codes.numel() // self.n_groups

    def counts(self) -> torch.Tensor:
        """Members per codebook entry, shape ``(n_groups, 2**bits)`` (int64)."""
        return self._counts.view(self.n_groups, 1 << self.bits).long()

    def quantized(self) -> QuantizedTensor:
        """The current codes and codebook (float32, detached) as a :class:`QuantizedTensor` (outliers apart)."""
        return QuantizedTensor(self.codes, self.codebook.detach().float().clone(), self.bits, self.scheme)

    def _build_index(self) -> None:
        """Precompute the flat gather index ``group * 2**bits + code`` and the member counts."""
        n_entries = self.n_groups << self.bits
        dtype = torch.int32 if n_entries < 2**31 else torch.int64
        device = self.codes.device
        flat = self.codes.reshape(self.n_groups, self.group_size).to(dtype)
        offsets = torch.arange(self.n_groups, device=device, dtype=dtype).mul_(1 << self.bits).unsqueeze(1)
        self._index = flat.add_(offsets).reshape(-1)
        members = self._index
        if self.n_outliers:  # an outlier's code is a placeholder: it is no member of its entry
            keep = torch.ones(self._index.numel(), dtype=torch.bool, device=device)
            keep[self.outlier_index] = False
            members = self._index[keep]
        self._counts = torch.bincount(members, minlength=n_entries).to(torch.int32)
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Loading new codes (``load_state_dict``) must also refresh the derived gather index."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "codes"
        if key in state_dict:
            if int(self.codes.max()) >= 1 << self.bits:
                error_msgs.append(f"{key}: codes must be below 2**bits = {1 << self.bits}")
                return
            self._build_index()

    def forward(self, original: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the weight; ``original`` (the module's emptied weight) is ignored."""
        cb, values = self.codebook, self.outlier_values
        if torch.is_grad_enabled() and (cb.requires_grad or (values is not None and values.requires_grad)):
            self._cache = None  # training: the codebook changes every step
            flat = _GatherMean.apply(cb, self._index, self._counts)
            if values is not None:
                flat = flat.index_put((self.outlier_index,), values.to(flat.dtype))
            return flat.view(self.codes.shape)
        # inference mode makes inference tensors, which autograd refuses to save later: cache them apart
        key = (cb.data_ptr(), cb._version, cb.device, cb.dtype, self._index.data_ptr(),
               torch.is_inference_mode_enabled(), None if values is None else (values.data_ptr(), values._version))
        if self._cache is not None and self._cache[0] == key and _version(self._cache[1]) == self._cache[2]:
            return self._cache[1]
        with torch.no_grad():
            flat = cb.reshape(-1).index_select(0, self._index)
            if values is not None:
                flat.index_put_((self.outlier_index,), values.to(flat.dtype))
            weight = flat.view(self.codes.shape)
        self._cache = (key, weight, _version(weight))
        return weight

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.shape)}, bits={self.bits}, scheme={self.scheme!r}, "
                f"n_groups={self.n_groups}, group_size={self.group_size}"
                + (f", outliers={self.n_outliers}" if self.n_outliers else ""))

    def __getstate__(self) -> dict:
        """Never carry the cached weight into copies or pickles of the module."""
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

