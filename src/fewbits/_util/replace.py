"""Replace a directory by another in one atomic step, so a kill at any instant leaves the old one or the new one.

The protocol (``replace_directory``): the new content is written whole into ``.NAME.tmp-<pid>-<id>`` beside
the target, every file and the folder fsynced; then

- when the target exists, the two are swapped by ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+, called
  through ctypes): one system call, atomic, so the target's path names the old artifact before it and
  the new one after it, never nothing. The temporary name now holds the old artifact, which is removed.
- where the kernel or file system has no exchange (other systems, some network file systems), the old
  directory is renamed to ``.NAME.old-<pid>-<id>`` and the new one into place: two renames with a window
  between them in which the path is empty. :func:`recover` closes it: if the target is missing and an
  ``.old`` folder is there, it is renamed back (the old artifact, whole). Loading and the next save call it.
- when the target does not exist, one plain rename.

Leftovers of a process killed mid-save (``.NAME.tmp-*`` being written, or holding the old artifact after
the exchange; ``.NAME.old-*``) are removed by the next save of the same target, unless the process that
named them (its pid is in the name) is still alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _renameat2() -> ctypes._CFuncPtr | None:
    """libc's renameat2, or None where libc has none (macOS, musl before 1.2.2, glibc before 2.28)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` atomically; False where the system cannot (nothing changed)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries); a no-op where a directory cannot be opened for it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _leftover_owner(name: str, target: Path) -> int | None:
    """The pid in a leftover's name ``.NAME.tmp-<pid>-<id>`` / ``.NAME.old-<pid>-<id>``, else None."""
    for kind in ("tmp", "old"):
        prefix = f".{target.name}.{kind}-"
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else -1
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def leftovers(target: Path) -> list[Path]:
    """Temporary and old folders beside ``target`` left by saves whose process is gone."""
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        pid = _leftover_owner(entry.name, target)
        if pid is not None and not _alive(pid):
            found.append(entry)
    return sorted(found)


def recover(target: Path) -> None:
    """After a kill between the two renames of the fallback: put the old artifact back at ``target``."""
    if os.path.lexists(target):
        return
    olds = [p for p in leftovers(target) if p.name.startswith(f".{target.name}.old-") and p.is_dir()]
    if len(olds) == 1:
        with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
            os.rename(olds[0], target)
            fsync_path(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean(target: Path) -> None:
    """Recover an interrupted fallback replacement, then remove every dead save's leftovers beside ``target``."""
    recover(target)
    for path in leftovers(target):
        _remove(path)


def replace_directory(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` at ``target`` (replacing what is there) atomically; see the module doc."""
    for entry in tmp.iterdir():
        if entry.is_file():
            fsync_path(entry)
    fsync_path(tmp)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif exchange(tmp, target):
        _remove(tmp)  # now the old artifact
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        _remove(old)
    fsync_path(target.parent)


@contextlib.contextmanager
def new_directory(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to fill; on success it replaces ``target`` atomically.

    Leftovers of earlier killed saves of ``target`` are cleaned first; on an exception the folder is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    clean(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp)
    try:
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
