"""The one filesystem module: atomic file and directory writes (with fsync), canonical JSON, hashes.

A reader never sees a half-written file or folder: a file is written to a temporary name beside
its target, flushed and fsynced, renamed over the target, and the parent directory is fsynced so
the rename itself survives a crash; a directory is filled under a temporary name, every file in
it fsynced, then renamed into place (an existing one is moved aside first and removed after).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fewbits._util.replace import fsync_path as fsync_dir
from fewbits._util.replace import new_directory

HASH_CHARS = 16
CHUNK = 1 << 22


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, rename it over ``path`` and fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as sorted, NaN-free JSON (a trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target`` in one atomic step
    (see :mod:`fewbits._util.replace`: a kill at any instant leaves the old or the new folder, whole)."""
    with new_directory(Path(target)) as tmp:
        yield tmp


def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that is hashed: sorted keys, no spaces, ASCII, no NaN, other objects as str()."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)


def config_hash(obj: Any, chars: int = HASH_CHARS) -> str:
    """First ``chars`` hex digits of the sha256 of :func:`canonical_json` (64 bits: collisions are not a concern)."""
    return sha256_hex(canonical_json(obj).encode())[:chars]


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
