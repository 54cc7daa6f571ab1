"""How the attack suite judges one damaged artifact: a one-line ArtifactError naming the file from the loader,
the same from ``fewbits info`` (exit 2, no traceback), no file opened outside the folder, and the memory the
attempt allocated bounded (peak resident memory, reset before each attempt, plus tracemalloc's peak)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fewbits import cli
from fewbits.errors import ArtifactError

SLACK = 96 << 20  # interpreter noise around one load of a tiny model (measured: < 20 MiB)
PER_BYTE = 16  # a loader may hold a few copies of the files, and unpack 1-bit codes to bytes (8x)
_OPENED: list[str] = []
_AUDITING = [False]


def _audit(event: str, args: tuple) -> None:
    if _AUDITING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _peak_rss() -> int | None:
    """This process's peak resident memory in bytes (VmHWM), or None where /proc does not give it."""
    try:
        with open("/proc/self/status") as fh:
            found = re.search(r"VmHWM:\s+(\d+) kB", fh.read())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def _reset_peak_rss() -> bool:
    """Start a new peak (Linux: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def watched(folder: Path, decoys: list[Path]) -> Iterator[None]:
    """Around one attempt: record the files opened and the memory allocated, then check both."""
    size = sum(p.lstat().st_size for p in folder.iterdir())
    bound = SLACK + PER_BYTE * size
    rss = _reset_peak_rss() and _peak_rss()
    _OPENED.clear()
    tracemalloc.start()
    _AUDITING[0] = True
    try:
        yield
    finally:
        _AUDITING[0] = False
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    outside = {os.path.realpath(d) for d in decoys}
    assert not [p for p in _OPENED if os.path.realpath(p) in outside], "a file outside the artifact was opened"
    assert traced < bound, f"{traced:,} bytes traced, bound {bound:,}"
    if rss:
        assert _peak_rss() - rss < bound, f"peak memory grew by {_peak_rss() - rss:,} bytes, bound {bound:,}"


def refused(load: Callable[[Path], object], folder: Path, names: str | tuple[str, ...], *fragments: str,
            decoys: list[Path] = ()) -> str:
    """``load(folder)`` and ``fewbits info folder`` both refuse with one line naming one of ``names``."""
    names = (names,) if isinstance(names, str) else names
    with watched(folder, list(decoys)):
        with pytest.raises(ArtifactError) as info:
            load(folder)
    message = str(info.value)
    assert "\n" not in message and any(n in message for n in names), message
    for fragment in fragments:
        assert fragment in message, message
    err = io.StringIO()
    with watched(folder, list(decoys)), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["info", str(folder)])
    text = err.getvalue()
    assert code == 2 and text.startswith("fewbits info: error: ") and text.count("\n") == 1, text
    assert any(n in text for n in names) and "Traceback" not in text, text
    return message
