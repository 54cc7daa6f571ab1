"""Strict reading of a safetensors file's header: every tensor's dtype, shape and byte range, checked.

The header is parsed from the bytes before any tensor is allocated, so a damaged or hostile file is
refused by its sizes (one line naming the file) instead of failing deep inside a reader.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from fewbits._util.untrusted import parse_json
from fewbits.errors import ArtifactError

# safetensors dtype tags <-> torch dtypes (the subset a model state holds)
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in ST_DTYPES.values()}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def is_int(x: object, low: int = 0) -> bool:
    """True for an int (not a bool) of at least ``low``."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the safetensors header: dtype, shape and byte range within the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _fail(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem}; save the model again.")


def _entry(name: str, info: object, path: Path) -> TensorEntry:
    ok = isinstance(info, dict) and info.get("dtype") in ST_DTYPES and isinstance(info.get("shape"), list) \
        and all(is_int(s) for s in info["shape"]) and isinstance(info.get("data_offsets"), list) \
        and len(info["data_offsets"]) == 2 and all(is_int(o) for o in info["data_offsets"])
    if not ok:
        raise _fail(path, f"corrupt safetensors entry {name!r}")
    dtype, shape = ST_DTYPES[info["dtype"]], tuple(info["shape"])
    start, end = info["data_offsets"]
    if end - start != math.prod(shape) * dtype.itemsize:
        raise _fail(path, f"tensor {name!r}: {end - start} bytes do not fit shape {list(shape)} of {info['dtype']}")
    return TensorEntry(dtype, shape, start, end)


def parse_header(data: bytes, path: Path) -> tuple[dict[str, TensorEntry], int]:
    """Strictly parse a safetensors header: entries by name and the size of the header (8 + JSON)."""
    if len(data) < 8:
        raise _fail(path, f"truncated: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _fail(path, f"truncated: header says {n} bytes, the file has {len(data) - 8} after the length")
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"a safetensors header of {n} bytes, more than the {MAX_HEADER_BYTES} safetensors allows")
    header = parse_json(bytes(data[8:8 + n]), path, max_depth=4, fix="save the model again",
                        label="safetensors header")
    header.pop("__metadata__", None)
    entries = {name: _entry(name, info, path) for name, info in header.items()}
    cursor = 0
    for start, end in sorted((e.start, e.end) for e in entries.values()):
        if start != cursor:
            raise _fail(path, "corrupt safetensors header (tensor data overlaps or leaves gaps)")
        cursor = end
    if cursor != len(data) - 8 - n:
        raise _fail(path, f"truncated or padded: the header covers {cursor} data bytes, the file holds {len(data) - 8 - n}")
    return entries, 8 + n


def tensor_views(data: bytearray, entries: dict[str, TensorEntry], header_bytes: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file already read and parsed (:func:`parse_header`), as views of ``data``.

    No tensor is copied: they share (and keep alive) the one buffer the file was read into. A tensor whose
    bytes do not start on a multiple of its item size (never in files safetensors writes) is copied aligned.
    """
    out = {}
    for name, entry in entries.items():
        start = header_bytes + entry.start
        if entry.nbytes == 0:
            out[name] = torch.empty(entry.shape, dtype=entry.dtype)
            continue
        flat = torch.frombuffer(data, dtype=torch.uint8, count=entry.nbytes, offset=start)
        if start % entry.dtype.itemsize:
            flat = flat.clone()
        out[name] = flat.view(entry.dtype).view(entry.shape)
    return out
