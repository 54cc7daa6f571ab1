"""The artifact format on disk, and strict reading of it: every problem is an ArtifactError naming the file.

A directory holds ``fewbits.json`` (the manifest), ``fewbits.safetensors`` (tensors) and, for Hugging
Face models, ``config.json`` plus any tokenizer files. Tensor names in ``fewbits.safetensors``:

- ``codes.<layer>``: the layer's codes bit-packed (``fewbits.quantize.pack``), flat uint8;
- ``codebook.<layer>``: its codebook, ``(n_groups, 2**bits)``, float32 or float16;
- ``state.<key>``: every other entry of the model's ``state_dict`` (biases, norms, the head, buffers).

Manifest (format version 1)::

    {"format": "fewbits-artifact", "format_version": 1, "fewbits_version": "0.1.0",
     "base": {"kind": "transformers", "class": "BertForSequenceClassification", "config": "config.json"}
             | {"kind": "builtin", "name": "cnn1d", "args": {...}} | {"kind": "module", "class": "MyNet"},
     "tensors": {"file": "fewbits.safetensors", "bytes": N, "sha256": "..."},
     "codebook_dtype": "float32",
     "layers": {"<layer>": {"shape": [...], "dtype": "float32", "bits": 4, "scheme": "kmeans",
                            "n_groups": 1, "tied": ["<other module sharing this weight>", ...]}},
     "aliases": {"<state key>": "<state key stored once for both>"},
     "tokenizer_files": ["tokenizer.json", ...]}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewbits.errors import ArtifactError
from fewbits.quantize.base import MAX_BITS
from fewbits.quantize.pack import packed_nbytes

FORMAT = "fewbits-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "fewbits.json"
TENSORS_FILE = "fewbits.safetensors"
CONFIG_FILE = "config.json"
BASE_KINDS = ("transformers", "builtin", "module")

# safetensors dtype tags <-> torch dtypes (the subset a model state holds)
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in ST_DTYPES.values()}
CODEBOOK_DTYPES = ("float32", "float16")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


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


def _fail(path: Path, problem: str, fix: str = "save the model again") -> ArtifactError:
    return ArtifactError(f"{path}: {problem}; {fix}.")


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and validate ``fewbits.json`` (structure, types, format version)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such artifact directory; give a directory written by fewbits.save.")
    if not path.is_file():
        raise _fail(path, "missing, so this is not a fewbits artifact", "give a directory written by fewbits.save")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(path, f"not a fewbits manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"written in format version {version} (by fewbits {manifest.get('fewbits_version')}), "
                          f"newer than the version {FORMAT_VERSION} this fewbits reads", "upgrade fewbits")
    _check_manifest(manifest, path)
    return manifest


def _expect(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise _fail(path, f"malformed manifest: {what}")


def _is_int(x: object, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _check_manifest(m: dict[str, Any], path: Path) -> None:
    """Types and ranges of every manifest field (a hand-edited or damaged manifest fails here)."""
    base = m.get("base")
    _expect(isinstance(base, dict) and base.get("kind") in BASE_KINDS, path, f"'base.kind' must be one of {BASE_KINDS}")
    if base["kind"] == "transformers":
        _expect(isinstance(base.get("class"), str) and base.get("config") == CONFIG_FILE, path,
                "'base' needs 'class' and 'config': 'config.json'")
    elif base["kind"] == "builtin":
        _expect(isinstance(base.get("name"), str) and isinstance(base.get("args"), dict), path,
                "'base' needs 'name' and 'args'")
    else:
        _expect(isinstance(base.get("class"), str), path, "'base' needs 'class'")
    tensors = m.get("tensors")
    _expect(isinstance(tensors, dict) and tensors.get("file") == TENSORS_FILE and _is_int(tensors.get("bytes"), 8)
            and isinstance(tensors.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", tensors["sha256"]) is not None,
            path, f"'tensors' needs file '{TENSORS_FILE}', bytes and a sha256 hex digest")
    _expect(m.get("codebook_dtype") in CODEBOOK_DTYPES, path, f"'codebook_dtype' must be one of {CODEBOOK_DTYPES}")
    layers = m.get("layers")
    _expect(isinstance(layers, dict), path, "'layers' must be an object")
    for name, layer in layers.items():
        where = f"layer {name!r}"
        _expect(isinstance(layer, dict), path, f"{where} must be an object")
        shape, bits, n_groups = layer.get("shape"), layer.get("bits"), layer.get("n_groups")
        _expect(isinstance(shape, list) and len(shape) >= 1 and all(_is_int(s, 1) for s in shape), path,
                f"{where}: 'shape' must be a list of positive ints")
        _expect(_is_int(bits, 1) and bits <= MAX_BITS, path, f"{where}: 'bits' must be an int in [1, {MAX_BITS}]")
        _expect(_is_int(n_groups, 1) and math.prod(shape) % n_groups == 0, path,
                f"{where}: 'n_groups' must be a positive int dividing the weight's size")
        _expect(layer.get("dtype") in DTYPE_NAMES and DTYPE_NAMES[layer["dtype"]].is_floating_point, path,
                f"{where}: 'dtype' must name a floating-point dtype")
        _expect(isinstance(layer.get("scheme"), str), path, f"{where}: 'scheme' must be a string")
        tied = layer.get("tied")
        _expect(isinstance(tied, list) and all(isinstance(t, str) for t in tied), path,
                f"{where}: 'tied' must be a list of names")
    aliases = m.get("aliases")
    _expect(isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()),
            path, "'aliases' must map names to names")
    files = m.get("tokenizer_files")
    _expect(isinstance(files, list) and all(isinstance(f, str) and f and "/" not in f and "\\" not in f
                                            and not f.startswith(".") for f in files),
            path, "'tokenizer_files' must be a list of plain file names")


def parse_header(data: bytes, path: Path) -> tuple[dict[str, TensorEntry], int]:
    """Strictly parse a safetensors header: entries by name and the size of the header (8 + JSON)."""
    if len(data) < 8:
        raise _fail(path, f"truncated: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _fail(path, f"truncated: header says {n} bytes, the file has {len(data) - 8} after the length")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, "corrupt safetensors header (not an object)")
    header.pop("__metadata__", None)
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in ST_DTYPES and isinstance(info.get("shape"), list) \
            and all(_is_int(s) for s in info["shape"]) and isinstance(info.get("data_offsets"), list) \
            and len(info["data_offsets"]) == 2 and all(_is_int(o) for o in info["data_offsets"])
        if not ok:
            raise _fail(path, f"corrupt safetensors entry {name!r}")
        dtype, shape = ST_DTYPES[info["dtype"]], tuple(info["shape"])
        start, end = info["data_offsets"]
        if end - start != math.prod(shape) * dtype.itemsize:
            raise _fail(path, f"tensor {name!r}: {end - start} bytes do not fit shape {list(shape)} of {info['dtype']}")
        entries[name] = TensorEntry(dtype, shape, start, end)
    spans = sorted((e.start, e.end) for e in entries.values())
    cursor = 0
    for start, end in spans:
        if start != cursor:
            raise _fail(path, "corrupt safetensors header (tensor data overlaps or leaves gaps)")
        cursor = end
    if cursor != len(data) - 8 - n:
        raise _fail(path, f"truncated or padded: the header covers {cursor} data bytes, the file holds {len(data) - 8 - n}")
    return entries, 8 + n


def read_tensors_file(directory: Path, manifest: dict[str, Any]) -> tuple[bytes, dict[str, TensorEntry], int]:
    """Read ``fewbits.safetensors``, check size and sha256 against the manifest, parse its header."""
    path = directory / TENSORS_FILE
    if not path.is_file():
        raise _fail(path, "missing")
    data = path.read_bytes()
    expected = manifest["tensors"]
    if len(data) != expected["bytes"]:
        raise _fail(path, f"{len(data)} bytes but the manifest says {expected['bytes']} (truncated or altered)")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise _fail(path, "sha256 checksum differs from the manifest (the file was altered or damaged)")
    entries, header_bytes = parse_header(data, path)
    _check_entries(entries, manifest, path)
    return data, entries, header_bytes


def _check_entries(entries: dict[str, TensorEntry], manifest: dict[str, Any], path: Path) -> None:
    """Every manifest layer has its codes and codebook, with the sizes its bits and grouping imply."""
    codebook_dtype = DTYPE_NAMES[manifest["codebook_dtype"]]
    for name, layer in manifest["layers"].items():
        codes, book = entries.get(f"codes.{name}"), entries.get(f"codebook.{name}")
        if codes is None or book is None:
            raise _fail(path, f"layer {name!r} of the manifest has no codes or codebook tensor")
        n_bytes = packed_nbytes(math.prod(layer["shape"]), layer["bits"])
        if codes.dtype != torch.uint8 or codes.shape != (n_bytes,):
            raise _fail(path, f"codes of layer {name!r}: expected {n_bytes} uint8 bytes for {layer['bits']}-bit codes "
                              f"of shape {layer['shape']}, found {codes.dtype} {list(codes.shape)}")
        want = (layer["n_groups"], 1 << layer["bits"])
        if book.dtype != codebook_dtype or book.shape != want:
            raise _fail(path, f"codebook of layer {name!r}: expected {manifest['codebook_dtype']} {list(want)}, "
                              f"found {book.dtype} {list(book.shape)}")
    known = {f"{kind}.{name}" for name in manifest["layers"] for kind in ("codes", "codebook")}
    stray = sorted(n for n in entries if n not in known and not n.startswith("state."))
    if stray:
        raise _fail(path, f"unexpected tensors {stray[:5]}")
    stored = {n.removeprefix("state.") for n in entries if n.startswith("state.")}
    dangling = sorted(k for k, v in manifest["aliases"].items() if v not in stored)
    if dangling:
        raise _fail(path, f"aliases {dangling[:5]} point to tensors that are not stored")


def sha256_hex(data: bytes) -> str:
    """Hex digest written into the manifest."""
    return hashlib.sha256(data).hexdigest()
