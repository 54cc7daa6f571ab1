"""Lossless codecs for binary masks: plain bit packing, or Golomb-Rice coding of run lengths.

A learned mask keeps most weights (P3 finds good masks from a few percent to about half of the
weights removed), so its bits are far from uniform: a mask keeping a fraction p of the weights
carries only H(p) = -p log2 p - (1-p) log2 (1-p) bits per weight (0.29 at p = 0.95, 0.08 at
p = 0.99). Two methods, chosen per tensor by exact encoded size (:func:`encode`):

- ``bitpack``: one bit per weight, LSB first (:func:`fewbits.quantize.pack` with ``bits=1``).
- ``rice``: the positions of the minority symbol, as gaps (the number of majority bits before
  each minority bit, after the previous one), each coded with a Golomb-Rice code of parameter
  ``k``: the quotient ``gap >> k`` in unary (that many 1 bits, then a 0) and the low ``k`` bits.
  For independent bits the gaps are geometric, for which Golomb codes are optimal, so the size
  lands within a few percent of H(p) when p is near 0 or 1. The unary parts and the low bits are
  stored as two consecutive bit streams (unary first, each LSB first and padded to a byte), which
  makes both encoding and decoding a few vectorised numpy passes. ``k`` is chosen exactly: the
  encoded size of each candidate is computed and the smallest wins.

Decoding checks every length and count and raises :class:`~fewbits.errors.ArtifactError` on
inconsistent data, so a truncated or altered mask never loads silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fewbits.errors import ArtifactError, FewbitsTypeError, bad_param
from fewbits.quantize.pack import pack, unpack

METHODS = ("bitpack", "rice")


@dataclass(frozen=True)
class EncodedMask:
    """A mask as stored: ``method``, the mask's ``shape``, the bytes (flat uint8) and the codec ``params``.

    ``params`` is empty for ``bitpack``; for ``rice`` it holds ``k``, ``minority`` (0 or 1: the
    symbol whose positions are coded), ``count`` (how many minority bits) and ``unary_bits``
    (length of the unary stream). All are JSON-safe ints.
    """

    method: str
    shape: tuple[int, ...]
    data: torch.Tensor
    params: dict[str, int] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """Number of mask bits (weights)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the encoded bytes."""
        return int(self.data.numel())

    @property
    def bits_per_weight(self) -> float:
        """Encoded bits per weight (1.0 for ``bitpack`` up to the last byte's padding)."""
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0


def _as_bool_numpy(mask: object, owner: str) -> np.ndarray:
    """Flat numpy bool copy of a bool/0-1 tensor; rejects anything else."""
    if not isinstance(mask, torch.Tensor):
        raise FewbitsTypeError(f"The 'mask' parameter of {owner} must be a torch.Tensor. "
                               f"Got {type(mask).__name__} instead.")
    flat = mask.detach().reshape(-1).cpu()
    if flat.dtype != torch.bool:
        if flat.is_floating_point() or flat.is_complex() or (flat.numel() and bool(((flat != 0) & (flat != 1)).any())):
            raise bad_param("mask", "a bool tensor (or integers 0/1)", str(mask.dtype), owner)
        flat = flat != 0
    return flat.numpy()


def entropy_bits(mask: torch.Tensor) -> float:
    """Order-0 entropy of the mask in bits per weight: the floor for coding independent bits."""
    flat = _as_bool_numpy(mask, "entropy_bits")
    if flat.size == 0:
        return 0.0
    p = np.count_nonzero(flat) / flat.size
    return 0.0 if p in (0.0, 1.0) else float(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))


def _rice_cost(gaps: np.ndarray, k: int) -> int:
    """Exact size in bits of the unary and low-bit streams for parameter ``k`` (padding excluded)."""
    return int((gaps >> k).sum()) + gaps.size * (1 + k)


def _best_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the smallest exact cost, searched around log2 of the mean gap."""
    if gaps.size == 0:
        return 0
    guess = max(0, int(math.log2(float(gaps.mean()) + 1.0)))
    candidates = range(max(0, guess - 3), min(62, guess + 4))
    return min(candidates, key=lambda k: (_rice_cost(gaps, k), k))


def _rice_streams(flat: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Golomb-Rice code of the minority positions: the bytes and the params (see module docstring)."""
    ones = int(np.count_nonzero(flat))
    minority = 0 if ones >= flat.size - ones else 1
    positions = np.flatnonzero(flat) if minority else np.flatnonzero(~flat)
    gaps = np.diff(positions, prepend=-1) - 1  # int64, >= 0: majority bits before each minority bit
    k = _best_k(gaps)
    quotients = gaps >> k
    unary_bits = int(quotients.sum()) + gaps.size
    unary = np.ones(unary_bits, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each code ends with a 0 after its q ones
    low = ((gaps[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(np.uint8)  # (count, k), LSB first
    data = np.concatenate([np.packbits(unary, bitorder="little"),
                           np.packbits(low.reshape(-1), bitorder="little")])
    return data, {"k": k, "minority": minority, "count": int(gaps.size), "unary_bits": unary_bits}


def encode(mask: torch.Tensor, method: str = "auto") -> EncodedMask:
    """Encode a bool mask losslessly; ``method="auto"`` keeps the smaller of ``bitpack`` and ``rice``.

    Ties go to ``bitpack``. Example: ``enc = encode(scores > 0); assert torch.equal(decode(enc), scores > 0)``.
    """
    if method not in ("auto", *METHODS):
        raise bad_param("method", f"one of {['auto', *METHODS]}", method, "encode")
    flat = _as_bool_numpy(mask, "encode")
    shape = tuple(int(s) for s in mask.shape)
    candidates = []
    if method in ("auto", "rice"):
        data, params = _rice_streams(flat)
        candidates.append(EncodedMask("rice", shape, torch.from_numpy(data), params))
    if method in ("auto", "bitpack"):
        packed = pack(torch.from_numpy(flat.astype(np.uint8)), 1)
        candidates.append(EncodedMask("bitpack", shape, packed, {}))
    return min(candidates, key=lambda e: (e.nbytes, e.method != "bitpack"))


def _corrupt(name: str, detail: str) -> ArtifactError:
    return ArtifactError(f"Mask {name!r} cannot be decoded: {detail}. The artifact is truncated or altered; "
                         "save it again.")


def _decode_rice(data: np.ndarray, numel: int, params: dict[str, int], name: str) -> np.ndarray:
    """Inverse of :func:`_rice_streams`, with every length and count checked."""
    try:
        k, minority, count, unary_bits = (int(params[key]) for key in ("k", "minority", "count", "unary_bits"))
    except (KeyError, TypeError, ValueError):
        raise _corrupt(name, f"rice params {params!r} lack k, minority, count or unary_bits") from None
    if not (0 <= k < 63 and minority in (0, 1) and 0 <= count <= numel and count <= unary_bits):
        raise _corrupt(name, f"rice params {params!r} are out of range for {numel} weights")
    unary_bytes, low_bytes = -(-unary_bits // 8), -(-count * k // 8)
    if data.size != unary_bytes + low_bytes:
        raise _corrupt(name, f"{data.size} bytes, expected {unary_bytes + low_bytes}")
    unary = np.unpackbits(data[:unary_bytes], count=unary_bits, bitorder="little")
    ends = np.flatnonzero(unary == 0)
    trailing = unary_bits - 1 - int(ends[-1]) if count else unary_bits  # bits after the last code
    if ends.size != count or trailing:
        raise _corrupt(name, f"{ends.size} unary codes, expected {count}")
    gaps = (np.diff(ends, prepend=-1) - 1) << k
    if k:
        low = np.unpackbits(data[unary_bytes:], count=count * k, bitorder="little").reshape(count, k)
        gaps |= (low.astype(np.int64) << np.arange(k, dtype=np.int64)).sum(axis=1)
    positions = np.cumsum(gaps + 1) - 1
    if count and positions[-1] >= numel:
        raise _corrupt(name, f"a position {int(positions[-1])} beyond the {numel} weights")
    flat = np.full(numel, not minority, dtype=bool)
    flat[positions] = bool(minority)
    return flat


def decode(encoded: EncodedMask, name: str = "mask") -> torch.Tensor:
    """Rebuild the bool mask (in its shape) from :func:`encode`'s output; ``name`` labels errors."""
    numel = encoded.numel
    data = encoded.data.detach().reshape(-1).cpu()
    if data.dtype != torch.uint8:
        raise _corrupt(name, f"data of dtype {data.dtype}, expected uint8")
    if encoded.method == "bitpack":
        if data.numel() != -(-numel // 8):
            raise _corrupt(name, f"{data.numel()} bytes, expected {-(-numel // 8)} for {numel} weights")
        flat = unpack(data, 1, numel).numpy().astype(bool)
    elif encoded.method == "rice":
        flat = _decode_rice(data.numpy(), numel, encoded.params, name)
    else:
        raise _corrupt(name, f"unknown method {encoded.method!r} (known: {list(METHODS)})")
    return torch.from_numpy(flat).reshape(encoded.shape)
