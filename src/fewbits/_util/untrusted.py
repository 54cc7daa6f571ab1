"""Reading files fewbits did not necessarily write: regular files inside one folder, of bounded size, once.

Modelled on safetensors' strict loading: nothing about a file is believed before it is checked, and no
check costs more memory than the file itself.

- :func:`read_member` opens ``directory/name`` without following a symbolic link (``O_NOFOLLOW``) and
  without blocking on a FIFO (``O_NONBLOCK``), after an ``lstat`` that refuses anything but a regular
  file (links, FIFOs, sockets, devices, folders) before opening it; it then checks the opened file is
  the one looked at, that its size is the expected one (or under a bound), and reads exactly that many
  bytes. A link is refused wherever it points, inside the folder or out: an artifact holds only regular
  files, and a link cannot be checked and then opened without a race.
- :func:`parse_json` parses bounded JSON: at most ``max_depth`` levels of nesting (a deeply nested
  document is refused, never a RecursionError), objects only where an object is expected.
- :func:`private_copy` writes bytes already read and checked into a private temporary folder, for
  libraries that insist on a path (Hugging Face tokenizers and configs): they read the checked copy,
  never the original folder, so nothing they open can lead outside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fewbits.errors import ArtifactError

MAX_JSON_BYTES = 16 << 20  # a manifest or config of the largest models is well under 1 MiB
MAX_JSON_DEPTH = 32  # fewbits' own documents nest 5 levels; Hugging Face configs about 4
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _fail(path: Path, problem: str, fix: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem}; {fix}.")


def check_member(directory: Path, name: str, *, size: int | None = None, max_bytes: int | None = None,
                 fix: str = "save it again") -> os.stat_result:
    """``lstat`` of ``directory/name``, refused unless a regular file of the expected size; nothing is opened.

    ``size``: the exact size the file must have; ``max_bytes``: an upper bound. Raises ArtifactError naming
    the file: missing, not a regular file (which kind), or of another size.
    """
    path = directory / name
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise _fail(path, "not a plain file name", fix)
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        raise _fail(path, "missing", fix) from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", fix) from None
    if not stat.S_ISREG(seen.st_mode):
        raise _fail(path, f"{_kind(seen.st_mode)}, not a regular file (an artifact holds only regular files)", fix)
    _check_size(path, seen.st_size, size, max_bytes, fix)
    return seen


def read_member(directory: Path, name: str, *, size: int | None = None, max_bytes: int | None = None,
                fix: str = "save it again") -> bytearray:
    """The bytes of the regular file ``directory/name`` (see :func:`check_member`), opened without following a
    link or blocking on a FIFO, checked to be the file looked at, read exactly into one writable buffer (tensors
    may be views of it: no second copy)."""
    path = directory / name
    seen = check_member(directory, name, size=size, max_bytes=max_bytes, fix=fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        problem = "a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror or exc})"
        raise _fail(path, problem, fix) from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise _fail(path, "changed while being opened", fix)
        return _read_exactly(fd, path, opened.st_size, fix)
    finally:
        os.close(fd)


def _check_size(path: Path, actual: int, size: int | None, max_bytes: int | None, fix: str) -> None:
    if size is not None and actual != size:
        raise _fail(path, f"{actual} bytes but the manifest says {size} (truncated or altered)", fix)
    if max_bytes is not None and actual > max_bytes:
        raise _fail(path, f"{actual} bytes, more than the {max_bytes} such a file may hold", fix)


def _read_exactly(fd: int, path: Path, n: int, fix: str) -> bytearray:
    """Read ``n`` bytes into one buffer and check the file ends there (it was not cut or grown while read)."""
    data = bytearray(n)
    view, done = memoryview(data), 0
    while done < n:
        got = os.readv(fd, [view[done:done + (1 << 24)]])
        if not got:
            raise _fail(path, f"ended after {done} of {n} bytes while being read", fix)
        done += got
    view.release()
    if os.read(fd, 1):
        raise _fail(path, f"grew beyond {n} bytes while being read", fix)
    return data


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_json(data: bytes, path: Path, *, max_depth: int = MAX_JSON_DEPTH, fix: str = "save it again",
               want: type = dict, label: str = "") -> Any:
    """Bounded JSON of a file already read: UTF-8, at most ``max_depth`` levels, a ``want`` at the top.

    ``label`` names the JSON part of a file in messages ("corrupt safetensors header: ...")."""
    where = f"corrupt {label}: " if label else ""
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise _fail(path, f"{where}JSON nested deeper than {max_depth} levels", fix) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"{where}not valid JSON ({str(exc).splitlines()[0][:120]})", fix) from None
    if _depth(value) > max_depth:
        raise _fail(path, f"{where}JSON nested deeper than {max_depth} levels", fix)
    if not isinstance(value, want):
        raise _fail(path, f"{where}a JSON {type(value).__name__}, not a JSON {want.__name__}", fix)
    return value


def read_json_member(directory: Path, name: str, *, size: int | None = None, max_bytes: int = MAX_JSON_BYTES,
                     fix: str = "save it again") -> dict[str, Any]:
    """:func:`read_member` then :func:`parse_json`: a JSON object from a regular file of bounded size."""
    return parse_json(read_member(directory, name, size=size, max_bytes=max_bytes, fix=fix), directory / name, fix=fix)


@contextlib.contextmanager
def private_copy(files: Mapping[str, bytes]) -> Iterator[Path]:
    """A private temporary folder holding exactly ``files`` (name -> checked bytes), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fewbits-checked-") as folder:
        for name, content in files.items():
            with open(os.path.join(folder, name), "xb") as fh:
                fh.write(content)
        yield Path(folder)
