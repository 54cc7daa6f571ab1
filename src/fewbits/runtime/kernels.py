"""Compiled (numba) loops that decode bit-packed codes; callers validate, these trust their input.

Codes are the artifact's little-endian bit stream (``fewbits.quantize.pack``): code ``i`` of a weight
occupies bits ``[i * bits, (i + 1) * bits)``, the weight is flat and row-major, and its codebook has one
row per group of ``group_size`` consecutive codes. Where a span starts on a multiple of 8 codes inside a
group of whole multiples of 8, eight codes are read at once from ``bits`` whole bytes, with ``bits`` a
compile-time constant (one inlined copy of the loop per bit width: 0.27-0.5 ns per weight on one core,
against 1.0-1.8 ns with ``bits`` a run-time value); any other span is read code by code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NB = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(inline="always")
def _chunks(packed, B, book, byte, n_chunks, out, k):
    """Decode ``8 * n_chunks`` codes starting at ``byte`` (``B`` bits each, ``B`` a constant) into ``out[k:]``."""
    mask = np.uint64((1 << B) - 1)
    for _ in range(n_chunks):
        v = np.uint64(0)
        for t in range(B):
            v |= np.uint64(packed[byte + t]) << np.uint64(8 * t)
        for t in range(8):
            out[k + t] = book[(v >> np.uint64(t * B)) & mask]
        byte += B
        k += 8


@njit(**_NB)
def _aligned(packed, bits, book, byte, n_chunks, out, k):
    """Dispatch to the copy of :func:`_chunks` compiled for this bit width."""
    if bits == 1:
        _chunks(packed, 1, book, byte, n_chunks, out, k)
    elif bits == 2:
        _chunks(packed, 2, book, byte, n_chunks, out, k)
    elif bits == 3:
        _chunks(packed, 3, book, byte, n_chunks, out, k)
    elif bits == 4:
        _chunks(packed, 4, book, byte, n_chunks, out, k)
    elif bits == 5:
        _chunks(packed, 5, book, byte, n_chunks, out, k)
    elif bits == 6:
        _chunks(packed, 6, book, byte, n_chunks, out, k)
    elif bits == 7:
        _chunks(packed, 7, book, byte, n_chunks, out, k)
    else:
        _chunks(packed, 8, book, byte, n_chunks, out, k)


@njit(**_NB)
def _code_at(packed, bits, i):
    """Code number ``i`` of the stream (a 16-bit window holds any code of at most 8 bits)."""
    pos = i * bits
    byte = pos >> 3
    window = np.int64(packed[byte])
    if byte + 1 < packed.shape[0]:
        window |= np.int64(packed[byte + 1]) << 8
    return (window >> (pos & 7)) & ((1 << bits) - 1)


@njit(**_NB)
def decode_span(packed, bits, codebook, group_size, start, count, out):
    """``out[k] = codebook[g, code]`` of weight element ``start + k``, for ``k < count``."""
    i, k, end = start, 0, start + count
    aligned = start % 8 == 0 and group_size % 8 == 0
    while i < end:
        g = i // group_size
        stop = min(end, (g + 1) * group_size)
        book = codebook[g]
        if aligned and stop - i >= 8:
            n_chunks = (stop - i) >> 3
            _aligned(packed, bits, book, (i >> 3) * bits, n_chunks, out, k)
            i += n_chunks << 3
            k += n_chunks << 3
        while i < stop:
            out[k] = book[_code_at(packed, bits, i)]
            i += 1
            k += 1


@njit(**_NB)
def decode_rows_at(packed, bits, codebook, group_size, cols, rows, out):
    """``out[r] = weight[rows[r]]`` of a ``(n, cols)`` weight: decode only the rows looked up."""
    for r in range(rows.shape[0]):
        decode_span(packed, bits, codebook, group_size, rows[r] * cols, cols, out[r])
