"""Bit packing: ``n`` codes of ``bits`` bits each in exactly ``ceil(n * bits / 8)`` bytes.

Codes are written least-significant bit first, code after code, into a little-endian bit stream;
the layout is fixed and part of the artifact format.
"""

from __future__ import annotations

import numpy as np
import torch

from fewbits.errors import bad_param
from fewbits.quantize.base import check_bits


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take once packed."""
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 ``codes`` (any shape, each < 2**bits) into a flat uint8 tensor of ceil(n*bits/8) bytes.

    Example: ``pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 2)`` -> ``tensor([57], dtype=uint8)``.
    """
    check_bits(bits, "pack")
    if codes.dtype != torch.uint8:
        raise bad_param("codes", "a uint8 tensor", str(codes.dtype), "pack")
    flat = codes.detach().reshape(-1).cpu().numpy()
    if flat.size and int(flat.max()) >= (1 << bits):
        raise bad_param("codes", f"values below 2**bits = {1 << bits}", int(flat.max()), "pack")
    if bits == 8:
        return torch.from_numpy(flat.copy())
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, shift-and-or without a bit matrix
        per = 8 // bits
        padded = np.zeros(-(-flat.size // per) * per, dtype=np.uint8)
        padded[: flat.size] = flat
        lanes = padded.reshape(-1, per)
        out = np.zeros(lanes.shape[0], dtype=np.uint8)
        for j in range(per):
            out |= lanes[:, j] << np.uint8(j * bits)
        return torch.from_numpy(out)
    bit_matrix = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits), LSB first
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes as a flat uint8 tensor."""
    check_bits(bits, "unpack")
    if packed.dtype != torch.uint8:
        raise bad_param("packed", "a uint8 tensor", str(packed.dtype), "unpack")
    data = packed.detach().reshape(-1).cpu().numpy()
    if data.size != packed_nbytes(n, bits):
        raise bad_param("packed", f"{packed_nbytes(n, bits)} bytes for {n} codes of {bits} bits", data.size, "unpack")
    if bits == 8:
        return torch.from_numpy(data.copy())
    if 8 % bits == 0:
        per = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        lanes = np.stack([(data >> np.uint8(j * bits)) & mask for j in range(per)], axis=1)
        return torch.from_numpy(np.ascontiguousarray(lanes.reshape(-1)[:n]))
    bit_stream = np.unpackbits(data, count=n * bits, bitorder="little").reshape(n, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return torch.from_numpy((bit_stream.astype(np.uint16) @ weights).astype(np.uint8))
