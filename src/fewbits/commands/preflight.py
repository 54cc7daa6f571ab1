"""Checks every verb runs before any work: output paths it will write, and the --threads option.

A bad ``--out`` (a file where a folder is needed, a folder nobody may write to, a read-only file system)
must cost one line and exit status 2 before any training, not a traceback after it. The probe is real: a
folder is created and removed where the output will go, so permissions, read-only mounts and full
quota-less disks are all caught the way the later write would meet them.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from fewbits.errors import FewbitsValueError, bad_param


def _refuse(verb: str, option: str, path: Path, problem: str) -> FewbitsValueError:
    return FewbitsValueError(f"The '{option}' option of fewbits {verb} must be a path fewbits can write to: "
                             f"{path} {problem}.")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (lexically: ``..`` is not resolved through links)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _probe(verb: str, option: str, path: Path, folder: Path) -> None:
    """Create and remove a folder in ``folder``: the write the command will do later, done now."""
    probe = folder / f".fewbits-probe-{uuid.uuid4().hex[:12]}"
    try:
        os.mkdir(probe)
    except OSError as exc:
        raise _refuse(verb, option, path, f"cannot be written: {exc.strerror or exc} in {folder}") from None
    os.rmdir(probe)


def _writable_parent(verb: str, option: str, path: Path) -> None:
    """The closest existing ancestor of ``path`` is a folder this process can create entries in."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise _refuse(verb, option, path, f"lies under {anchor}, which is a file, not a folder")
    _probe(verb, option, path, anchor)


def check_out_dir(path: str | os.PathLike, verb: str, option: str = "--out", *, files: Iterable[str] = (),
                  folders: Iterable[str] = (), artifacts: Iterable[str] = (), is_artifact: bool = False) -> Path:
    """Refuse an output folder that cannot be written, before any work; returns it as a Path.

    ``path`` must be absent or a folder, and writable (probed); inside it, each of ``files`` must be absent or
    a regular file, each of ``folders`` absent or a folder, and each of ``artifacts`` (folders fewbits replaces
    whole) absent, empty or a fewbits artifact (it holds ``fewbits.json``); ``is_artifact``: ``path`` itself is
    such a folder.
    """
    out = Path(path).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise _refuse(verb, option, out, "exists and is not a folder")
    if is_artifact and out.is_dir() and any(out.iterdir()) and not (out / "fewbits.json").is_file():
        raise _refuse(verb, option, out, "is a non-empty folder that is not a fewbits artifact (fewbits replaces "
                                         "only its own artifacts)")
    for name in files:
        if os.path.lexists(out / name) and not (out / name).is_file():
            raise _refuse(verb, option, out, f"holds {name}, which must be a file and is not")
    for name in (*folders, *artifacts):
        if os.path.lexists(out / name) and not (out / name).is_dir():
            raise _refuse(verb, option, out, f"holds {name}, which must be a folder and is not")
    for name in artifacts:
        sub = out / name
        if sub.is_dir() and any(sub.iterdir()) and not (sub / "fewbits.json").is_file():
            raise _refuse(verb, option, out, f"holds {name}/, a non-empty folder that is not a fewbits artifact "
                                             "(fewbits replaces only its own artifacts)")
    if out.is_dir():
        _probe(verb, option, out, out)
    else:
        _writable_parent(verb, option, out)
    return out


def check_out_file(path: str | os.PathLike, verb: str, option: str = "--out", *,
                   folders_beside: Iterable[str] = ()) -> Path:
    """Refuse an output file that cannot be written (absent or a regular file, in a writable folder).

    ``folders_beside`` names folders written next to it (e.g. a report's plots): each must be absent or a folder.
    """
    out = Path(path).expanduser()
    if os.path.lexists(out) and not out.is_file():
        raise _refuse(verb, option, out, "exists and is not a regular file")
    for name in folders_beside:
        if os.path.lexists(out.parent / name) and not (out.parent / name).is_dir():
            raise _refuse(verb, option, out, f"needs {out.parent / name} to be a folder, and it is not")
    _writable_parent(verb, option, out)
    return out


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option every computing verb takes."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core); on cores shared with other "
                             "jobs 1 can be many times faster")


def apply_threads(args: argparse.Namespace, verb: str) -> None:
    """Set torch's CPU threads from ``--threads`` (refusing a value below 1); nothing when it is not given."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise bad_param("--threads", "a positive int", threads, f"fewbits {verb}")
    import torch

    torch.set_num_threads(threads)
