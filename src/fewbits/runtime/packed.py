"""A weight held for inference exactly as the artifact stores it: bit-packed codes and a codebook.

:class:`PackedWeight` keeps ``ceil(n * bits / 8)`` bytes of codes plus its ``(n_groups, 2**bits)``
codebook and decodes on demand: the whole weight, a range of rows into a caller's buffer, or the rows
an embedding looks up. Decoded values are the codebook's values themselves, so they equal the training
representation's ``codebook[group, codes]`` bit for bit. Decoding runs in numba on CPU tensors; on
another device it runs as torch ops (for the rare GPU user; the compiled path is the measured one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fewbits.errors import bad_param
from fewbits.nn.codebook import Codebook
from fewbits.quantize.base import MAX_BITS, check_bits
from fewbits.quantize.pack import pack, packed_nbytes, unpack
from fewbits.runtime import kernels


class PackedWeight(nn.Module):
    """Bit-packed codes (uint8 buffer ``codes``) and a frozen codebook (buffer ``codebook``) of one weight.

    The decoded weight has the codebook's dtype (it follows ``model.half()`` and ``.to``), the
    ``shape`` given here, and one codebook row per ``numel // n_groups`` consecutive row-major values.
    Example: ``PackedWeight.from_codebook(cb).decode()`` equals ``cb()``.
    """

    def __init__(self, packed: torch.Tensor, codebook: torch.Tensor, shape: tuple[int, ...] | torch.Size, bits: int,
                 scheme: str = "custom") -> None:
        super().__init__()
        check_bits(bits, "PackedWeight", MAX_BITS)
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_nbytes(n, bits):
            raise bad_param("packed", f"a flat uint8 tensor of {packed_nbytes(n, bits)} bytes ({n} codes of {bits} bits)",
                            f"{packed.dtype} {tuple(packed.shape)}", "PackedWeight")
        if (not codebook.is_floating_point() or codebook.dim() != 2 or codebook.shape[1] != 1 << bits
                or codebook.shape[0] < 1 or n % codebook.shape[0]):
            raise bad_param("codebook", f"a floating-point (n_groups, {1 << bits}) tensor, n_groups dividing {n}",
                            f"{codebook.dtype} {tuple(codebook.shape)}", "PackedWeight")
        self.shape, self.bits, self.scheme = shape, bits, scheme
        self.register_buffer("codes", packed.detach())
        self.register_buffer("codebook", codebook.detach())

    @classmethod
    def from_codebook(cls, cb: Codebook) -> PackedWeight:
        """Pack a training-time :class:`Codebook` (codes packed, codebook copied and frozen)."""
        packed = pack(cb.codes, cb.bits).to(cb.codes.device)
        return cls(packed, cb.codebook.detach().clone(), cb.shape, cb.bits, cb.scheme)

    def to_codebook(self) -> Codebook:
        """The training representation again: unpacked codes and a trainable codebook."""
        codes = unpack(self.codes, self.bits, math.prod(self.shape)).reshape(self.shape).to(self.codes.device)
        return Codebook(codes, self.codebook.detach().clone(), self.bits, self.scheme)

    @property
    def group_size(self) -> int:
        """Consecutive weights (row-major) sharing one codebook row."""
        return math.prod(self.shape) // self.codebook.shape[0]

    @property
    def row_size(self) -> int:
        """Values per row (everything after the first dimension)."""
        return math.prod(self.shape[1:])

    def _book(self) -> torch.Tensor:
        return self.codebook.detach().float().contiguous()

    def _decode_span(self, start: int, count: int, out: torch.Tensor) -> torch.Tensor:
        """Decode ``count`` values from flat position ``start`` into ``out`` (float32, contiguous, count values)."""
        if self.codes.device.type == "cpu":
            kernels.decode_span(self.codes.numpy(), self.bits, self._book().numpy(), self.group_size, start, count,
                                out.numpy())
        else:
            out.copy_(self._decode_torch(torch.arange(start, start + count, device=self.codes.device)))
        return out

    def _decode_torch(self, index: torch.Tensor) -> torch.Tensor:
        """Decode the values at flat positions ``index`` with torch ops (devices numba cannot reach)."""
        pos = index * self.bits
        window = self.codes[pos >> 3].long()
        nxt = (pos >> 3) + 1
        window |= torch.where(nxt < self.codes.numel(), self.codes[nxt.clamp(max=self.codes.numel() - 1)].long(), 0) << 8
        code = (window >> (pos & 7)) & ((1 << self.bits) - 1)
        return self._book()[index // self.group_size, code]

    def _cast(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.codebook.dtype == torch.float32 else values.to(self.codebook.dtype)

    def decode(self) -> torch.Tensor:
        """The whole weight, freshly decoded (the caller owns it; nothing is cached)."""
        n = math.prod(self.shape)
        out = torch.empty(n, dtype=torch.float32, device=self.codes.device)
        return self._cast(self._decode_span(0, n, out)).view(self.shape)

    def decode_rows(self, start: int, stop: int, buffer: torch.Tensor) -> torch.Tensor:
        """Rows ``[start, stop)`` decoded into the front of ``buffer`` (float32); returns that view."""
        cols = self.row_size
        count = (stop - start) * cols
        values = self._decode_span(start * cols, count, buffer[:count])
        return self._cast(values).view(stop - start, *self.shape[1:])

    def decode_rows_at(self, rows: torch.Tensor) -> torch.Tensor:
        """``weight[rows]`` for a flat int64 tensor of row indices already checked to be in range."""
        cols = self.row_size
        if self.codes.device.type != "cpu":
            flat = (rows.unsqueeze(1) * cols + torch.arange(cols, device=rows.device)).reshape(-1)
            return self._cast(self._decode_torch(flat)).view(rows.numel(), *self.shape[1:])
        out = torch.empty(rows.numel(), cols, dtype=torch.float32)
        kernels.decode_rows_at(self.codes.numpy(), self.bits, self._book().numpy(), self.group_size, cols,
                               rows.numpy(), out.numpy())
        return self._cast(out).view(rows.numel(), *self.shape[1:])

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, bits={self.bits}, scheme={self.scheme!r}, n_groups={self.codebook.shape[0]}, "
                f"bytes={self.codes.numel()}")
