"""Inference layers that compute from a :class:`PackedWeight`: Linear, Embedding, Conv1d/2d/3d, Hugging Face Conv1D.

Each holds the packed weight, the original bias, and the original module emptied of its weight (its
*skeleton*: hyper-parameters such as stride or padding_idx, and the class to go back to). Nothing
decoded is kept between calls:

- Linear decodes ``TILE_BYTES`` of rows at a time into one buffer reused across tiles and runs the
  dense matmul (BLAS) on each tile. A numba lookup-table matrix-vector kernel (inputs summed into
  ``2**bits`` buckets per row, dotted with the codebook) and a fused decode-and-dot kernel were
  measured against it on MiniLM-sized layers and lost even at one input row (0.51-1.19 and 0.44-0.59
  ns per weight against 0.38; FP32 0.43), so they are not shipped (see BENCHMARKS.md, serve).
- Embedding decodes only the rows it looks up, straight into its output.
- Convolutions and Conv1D decode their whole weight per call (their reductions span the rows).

Outputs equal the training representation's bit for bit on CPU: decoded values are the codebook's
values, and the matmul of a tile of rows gives the same sums as the matmul of the whole weight.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.nn import functional as F

from fewbits.runtime.packed import PackedWeight

TILE_BYTES = 16 << 20  # most float32 bytes decoded at once (MiniLM's largest layer: 2.25 MiB, decoded whole)
_WORKSPACE = threading.local()


def _workspace(n: int) -> torch.Tensor:
    """This thread's reused decode buffer of at least ``n`` float32 values (never freshly paged in per call)."""
    buf = getattr(_WORKSPACE, "buffer", None)
    if buf is None or buf.numel() < n:
        buf = _WORKSPACE.buffer = torch.empty(n, dtype=torch.float32)
    return buf


class PackedLayer(nn.Module):
    """Base of the packed layers: ``packed_weight``, ``bias`` and the weightless original module."""

    def __init__(self, skeleton: nn.Module, weight: PackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.packed_weight = weight
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        object.__setattr__(self, "_skeleton", skeleton)  # not a submodule: it holds no tensor

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight, for code that reads ``module.weight`` (decoded afresh on every access)."""
        return self.packed_weight.decode()

    @property
    def skeleton(self) -> nn.Module:
        """The original module without its weight and bias (hyper-parameters, class)."""
        return self._skeleton

    def extra_repr(self) -> str:
        return f"{type(self._skeleton).__name__}, bias={self.bias is not None}"


class PackedLinear(PackedLayer):
    """``y = x W^T + b`` with ``W`` decoded a tile of rows at a time into one reused buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.packed_weight
        rows, cols = w.shape
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.linear(x, w.decode(), self.bias)  # autograd keeps the weight: it must own it
        tile = max(1, min(rows, TILE_BYTES // (4 * cols)))
        buffer = _workspace(tile * cols)
        if tile == rows:
            return F.linear(x, w.decode_rows(0, rows, buffer), self.bias)
        out = x.new_empty(*x.shape[:-1], rows)
        for start in range(0, rows, tile):
            stop = min(rows, start + tile)
            bias = None if self.bias is None else self.bias[start:stop]
            out[..., start:stop] = F.linear(x, w.decode_rows(start, stop, buffer), bias)
        return out


class PackedEmbedding(PackedLayer):
    """``weight[ids]`` with only the looked-up rows decoded."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.packed_weight.shape[0]
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
            raise IndexError(f"index out of range in self (ids must lie in [0, {n}))")
        rows = self.packed_weight.decode_rows_at(flat.to(torch.int64).contiguous())
        return rows.view(*ids.shape, *self.packed_weight.shape[1:])


class PackedConv(PackedLayer):
    """nn.Conv1d/2d/3d with the weight decoded for the call (padding modes as the original)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._skeleton._conv_forward(x, self.packed_weight.decode(), self.bias)


class PackedConv1D(PackedLayer):
    """Hugging Face ``Conv1D`` (GPT-2's transposed Linear): ``x @ W + b`` with ``W`` of shape (in, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.packed_weight.decode())
        return out.view(*x.shape[:-1], self.packed_weight.shape[1])
