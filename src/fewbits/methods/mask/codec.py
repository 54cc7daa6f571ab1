"""Lossless codecs for binary masks: plain bit packing, or Golomb-Rice codes of gaps or run lengths.

A learned mask keeps most weights (P3 finds good masks from a few percent to about half of the
weights removed), so its bits are far from uniform: a mask keeping a fraction p of the weights
carries only H(p) = -p log2 p - (1-p) log2 (1-p) bits per weight (0.29 at p = 0.95, 0.08 at
p = 0.99). Three methods, chosen per tensor by exact encoded size (:func:`encode`):

- ``bitpack``: one bit per weight, LSB first (:func:`fewbits.quantize.pack` with ``bits=1``).
- ``rice``: the positions of the minority symbol, as gaps (the number of majority bits before
  each minority bit, after the previous one), each coded with a Golomb-Rice code of parameter
  ``k``: the quotient ``gap >> k`` in unary (that many 1 bits, then a 0) and the low ``k`` bits.
  For independent bits the gaps are geometric, for which Golomb codes are optimal, so the size
  lands within a few percent of H(p) when p is near 0 or 1 (scattered removals).
- ``runs``: the lengths of the alternating runs of equal bits (minus one), from the first bit,
  Rice-coded with one parameter for the runs of the first symbol and one for the other. It wins
  when removals cluster (whole rows or blocks), where ``rice`` pays for every removed weight.

Rice codes are stored as two consecutive bit streams (all unary parts, then all low bits, each
LSB first and padded to a byte), so that encoding and decoding are a few vectorised numpy
passes. Each ``k`` is chosen exactly: the encoded size of every candidate is computed and the
smallest wins.

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

METHODS = ("bitpack", "rice", "runs")


@dataclass(frozen=True)
class EncodedMask:
    """A mask as stored: ``method``, the mask's ``shape``, the bytes (flat uint8) and the codec ``params``.

    ``params`` is empty for ``bitpack``; for ``rice`` it holds ``k``, ``minority`` (0 or 1: the
    symbol whose positions are coded), ``count`` (how many minority bits) and ``unary_bits``
    (length of the unary stream); for ``runs``: ``first`` (the first bit), ``count`` (runs),
    ``k_first``, ``k_second`` and ``unary_bits``. All are JSON-safe ints.
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


def _rice_cost(values: np.ndarray, k: int) -> int:
    """Exact size in bits of the Rice codes of ``values`` with parameter ``k`` (padding excluded)."""
    return int((values >> k).sum()) + values.size * (1 + k)


def _best_k(values: np.ndarray) -> int:
    """The Rice parameter with the smallest exact cost, searched around log2 of the mean value."""
    if values.size == 0:
        return 0
    guess = max(0, int(math.log2(float(values.mean()) + 1.0)))
    return min(range(max(0, guess - 3), min(62, guess + 4)), key=lambda k: (_rice_cost(values, k), k))


def _rice_pack(values: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, int]:
    """Rice codes of ``values`` (int64 >= 0), value i with parameter ``ks[i]``: bytes and unary length.

    The unary stream (``values[i] >> ks[i]`` ones, then a 0, for every i) comes first, padded to a
    byte; the low ``ks[i]`` bits of every value follow, LSB first, in one stream.
    """
    quotients = values >> ks
    unary_bits = int(quotients.sum()) + values.size
    unary = np.ones(unary_bits, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each code ends with a 0 after its q ones
    width = int(ks.max()) if ks.size else 0
    lanes = np.arange(width, dtype=np.int64)
    low = ((values[:, None] >> lanes) & 1).astype(np.uint8)[lanes < ks[:, None]]  # (sum ks,) in code order
    return np.concatenate([np.packbits(unary, bitorder="little"), np.packbits(low, bitorder="little")]), unary_bits


def _rice_unpack(data: np.ndarray, ks: np.ndarray, unary_bits: int, name: str) -> np.ndarray:
    """Inverse of :func:`_rice_pack` for ``ks.size`` codes, with lengths and counts checked."""
    count = ks.size
    unary_bytes, low_bits = -(-unary_bits // 8), int(ks.sum())
    if data.size != unary_bytes + -(-low_bits // 8):
        raise _corrupt(name, f"{data.size} bytes, expected {unary_bytes + -(-low_bits // 8)}")
    unary = np.unpackbits(data[:unary_bytes], count=unary_bits, bitorder="little")
    ends = np.flatnonzero(unary == 0)
    trailing = unary_bits - 1 - int(ends[-1]) if ends.size else unary_bits  # bits after the last code
    if ends.size != count or trailing:
        raise _corrupt(name, f"{ends.size} unary codes, expected {count}")
    values = (np.diff(ends, prepend=-1) - 1) << ks
    width = int(ks.max()) if count else 0
    if width:
        lanes = np.arange(width, dtype=np.int64)
        valid = lanes < ks[:, None]
        low = np.zeros((count, width), dtype=np.int64)
        low[valid] = np.unpackbits(data[unary_bytes:], count=low_bits, bitorder="little")
        values |= (low << lanes).sum(axis=1)
    return values


def _params(params: dict[str, int], keys: tuple[str, ...], name: str) -> list[int]:
    try:
        return [int(params[key]) for key in keys]
    except (KeyError, TypeError, ValueError):
        raise _corrupt(name, f"params {params!r} lack one of {', '.join(keys)}") from None


def _encode_rice(flat: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """``rice``: the gaps between the minority symbol's positions, one Rice parameter."""
    ones = int(np.count_nonzero(flat))
    minority = 0 if ones >= flat.size - ones else 1
    positions = np.flatnonzero(flat) if minority else np.flatnonzero(~flat)
    gaps = np.diff(positions, prepend=-1) - 1  # int64, >= 0: majority bits before each minority bit
    k = _best_k(gaps)
    data, unary_bits = _rice_pack(gaps, np.full(gaps.size, k, dtype=np.int64))
    return data, {"k": k, "minority": minority, "count": int(gaps.size), "unary_bits": unary_bits}


def _check_unary(unary_bits: int, data: np.ndarray, name: str) -> None:
    """The unary stream fits the bytes (checked before any array of codes is made: counts are bounded by bytes)."""
    if unary_bits > 8 * data.size:
        raise _corrupt(name, f"a unary stream of {unary_bits} bits in {data.size} bytes")


def _rice_positions(data: np.ndarray, numel: int, params: dict[str, int], name: str) -> tuple[np.ndarray, int]:
    """The minority symbol and its positions, checked; memory bounded by the bytes, whatever ``numel`` says."""
    k, minority, count, unary_bits = _params(params, ("k", "minority", "count", "unary_bits"), name)
    if not (0 <= k < 63 and minority in (0, 1) and 0 <= count <= unary_bits <= numel):
        raise _corrupt(name, f"rice params {params!r} are out of range for {numel} weights")
    _check_unary(unary_bits, data, name)
    gaps = _rice_unpack(data, np.full(count, k, dtype=np.int64), unary_bits, name)
    positions = np.cumsum(gaps + 1) - 1
    if count and positions[-1] >= numel:
        raise _corrupt(name, f"a position {int(positions[-1])} beyond the {numel} weights")
    return positions, minority


def _decode_rice(data: np.ndarray, numel: int, params: dict[str, int], name: str) -> np.ndarray:
    positions, minority = _rice_positions(data, numel, params, name)
    flat = np.full(numel, not minority, dtype=bool)
    flat[positions] = bool(minority)
    return flat


def _encode_runs(flat: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """``runs``: alternating run lengths (minus one) from the first bit, a Rice parameter per symbol."""
    if flat.size == 0:
        return np.zeros(0, dtype=np.uint8), {"first": 0, "count": 0, "k_first": 0, "k_second": 0, "unary_bits": 0}
    starts = np.flatnonzero(np.diff(flat.view(np.uint8), prepend=np.uint8(not flat[0])))
    lengths = np.diff(starts, append=flat.size) - 1  # int64, >= 0
    k_first, k_second = _best_k(lengths[0::2]), _best_k(lengths[1::2])
    ks = np.where(np.arange(lengths.size) % 2 == 0, k_first, k_second).astype(np.int64)
    data, unary_bits = _rice_pack(lengths, ks)
    return data, {"first": int(flat[0]), "count": int(lengths.size), "k_first": k_first, "k_second": k_second,
                  "unary_bits": unary_bits}


def _run_lengths(data: np.ndarray, numel: int, params: dict[str, int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every run's length and symbol, checked to cover ``numel`` exactly; memory bounded by the bytes."""
    first, count, k_first, k_second, unary_bits = _params(
        params, ("first", "count", "k_first", "k_second", "unary_bits"), name)
    if not (first in (0, 1) and 0 <= k_first < 63 and 0 <= k_second < 63 and 0 <= count <= unary_bits <= numel
            and (count > 0) == (numel > 0)):
        raise _corrupt(name, f"runs params {params!r} are out of range for {numel} weights")
    _check_unary(unary_bits, data, name)
    ks = np.where(np.arange(count) % 2 == 0, k_first, k_second).astype(np.int64)
    lengths = _rice_unpack(data, ks, unary_bits, name) + 1
    if int(lengths.sum()) != numel:
        raise _corrupt(name, f"runs covering {int(lengths.sum())} weights, expected {numel}")
    return lengths, (np.arange(count) + first) % 2 == 1


def _decode_runs(data: np.ndarray, numel: int, params: dict[str, int], name: str) -> np.ndarray:
    lengths, symbols = _run_lengths(data, numel, params, name)
    return np.repeat(symbols, lengths)


def encode(mask: torch.Tensor, method: str = "auto") -> EncodedMask:
    """Encode a bool mask losslessly; ``method="auto"`` keeps the smallest of every method in :data:`METHODS`.

    Ties go to the earlier method in :data:`METHODS` (``bitpack`` first).
    Example: ``enc = encode(scores > 0); assert torch.equal(decode(enc), scores > 0)``.
    """
    if method not in ("auto", *METHODS):
        raise bad_param("method", f"one of {['auto', *METHODS]}", method, "encode")
    flat = _as_bool_numpy(mask, "encode")
    shape = tuple(int(s) for s in mask.shape)
    candidates = []
    for name in METHODS if method == "auto" else (method,):
        if name == "bitpack":
            candidates.append(EncodedMask(name, shape, pack(torch.from_numpy(flat.astype(np.uint8)), 1), {}))
        else:
            data, params = (_encode_rice if name == "rice" else _encode_runs)(flat)
            candidates.append(EncodedMask(name, shape, torch.from_numpy(data), params))
    return min(candidates, key=lambda e: (e.nbytes, METHODS.index(e.method)))


def _corrupt(name: str, detail: str) -> ArtifactError:
    return ArtifactError(f"Mask {name!r} cannot be decoded: {detail}. The artifact is truncated or altered; "
                         "save it again.")


def _bytes_of(encoded: EncodedMask, name: str) -> torch.Tensor:
    """The encoded bytes, flat; a bit-packed mask's size checked against its shape."""
    data = encoded.data.detach().reshape(-1).cpu()
    if data.dtype != torch.uint8:
        raise _corrupt(name, f"data of dtype {data.dtype}, expected uint8")
    if encoded.method == "bitpack" and data.numel() != -(-encoded.numel // 8):
        raise _corrupt(name, f"{data.numel()} bytes, expected {-(-encoded.numel // 8)} for {encoded.numel} weights")
    if encoded.method not in METHODS:
        raise _corrupt(name, f"unknown method {encoded.method!r} (known: {list(METHODS)})")
    return data


def count_kept(encoded: EncodedMask, name: str = "mask") -> int:
    """How many weights the mask keeps, with every length checked as :func:`decode` does, but without building
    the mask: memory stays within a few times the encoded bytes whatever shape the manifest claims."""
    data = _bytes_of(encoded, name)
    numel = encoded.numel
    if encoded.method == "bitpack":
        return int(unpack(data, 1, numel).sum())
    if encoded.method == "rice":
        positions, minority = _rice_positions(data.numpy(), numel, encoded.params, name)
        return positions.size if minority else numel - positions.size
    lengths, symbols = _run_lengths(data.numpy(), numel, encoded.params, name)
    return int(lengths[symbols].sum())


def decode(encoded: EncodedMask, name: str = "mask") -> torch.Tensor:
    """Rebuild the bool mask (in its shape) from :func:`encode`'s output; ``name`` labels errors."""
    numel = encoded.numel
    data = _bytes_of(encoded, name)
    if encoded.method == "bitpack":
        flat = unpack(data, 1, numel).numpy().astype(bool)
    elif encoded.method == "rice":
        flat = _decode_rice(data.numpy(), numel, encoded.params, name)
    else:
        flat = _decode_runs(data.numpy(), numel, encoded.params, name)
    return torch.from_numpy(flat).reshape(encoded.shape)
