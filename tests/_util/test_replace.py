"""Atomic replacement of an artifact folder: killed (SIGKILL) at every write, fsync and rename of a save, the
path holds the old artifact or the new one, whole, and the next save leaves no leftovers."""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fewbits._util import replace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from _attack_kinds import saver  # noqa: E402

WRITE_MODES = set("wxa+")


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file of an artifact folder by name, or None when the path holds nothing."""
    if not folder.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def killed_at(step: int, save: Callable[[Path], None], target: Path, exchange: bool) -> bool:
    """Run ``save(target)`` in a forked child that SIGKILLs itself just before its ``step``-th file operation
    (open for writing, fsync, mkdir, rename, exchange, unlink, rmtree); True when it was killed."""
    pid = os.fork()
    if pid == 0:  # the child: count operations, die at the chosen one
        count = [0]

        def counted(fn):
            def op(*args, **kwargs):
                if fn in (real_open,) and not WRITE_MODES & set(str(args[1] if len(args) > 1 else kwargs.get("mode", "r"))):
                    return fn(*args, **kwargs)
                if count[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
                return fn(*args, **kwargs)
            return op

        real_open = builtins.open
        builtins.open = io.open = counted(real_open)
        for name in ("rename", "replace", "fsync", "mkdir", "unlink", "rmdir"):
            setattr(os, name, counted(getattr(os, name)))
        shutil.rmtree = counted(shutil.rmtree)
        if exchange:
            replace.exchange = counted(replace.exchange)
        else:
            replace._RENAMEAT2 = None
        try:
            save(target)
        except BaseException:  # noqa: BLE001 - any other exit is a failure the parent sees
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFEXITED(status) or os.WEXITSTATUS(status) == 0, "the save failed without being killed"
    return os.WIFSIGNALED(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
@pytest.mark.parametrize("kind", ["codebook", "mask"])
def test_kill_at_every_step_of_a_save_leaves_old_or_new_whole(tmp_path: Path, kind: str, exchange: bool) -> None:
    if exchange and replace._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    torch.set_num_threads(1)
    old_save, new_save = saver(kind if kind == "mask" else "codebook-bert", 0, tmp_path), \
        saver(kind if kind == "mask" else "codebook-bert", 1, tmp_path)
    reference = tmp_path / "ref"
    old_save(reference / "old")
    new_save(reference / "new")
    old, new = snapshot(reference / "old"), snapshot(reference / "new")
    assert old != new
    work = tmp_path / "work"
    target = work / "artifact"
    step, outcomes = 0, []
    while True:
        shutil.rmtree(work, ignore_errors=True)
        old_save(target)
        was_killed = killed_at(step, new_save, target, exchange)
        replace.recover(target)  # what the next load or save does first (only the two-rename path needs it)
        state = snapshot(target)
        assert state in (old, new), f"killed at step {step}: the path holds neither artifact whole"
        outcomes.append("old" if state == old else "new")
        new_save(target)  # the next save cleans every leftover of the killed one
        assert snapshot(target) == new
        assert sorted(p.name for p in work.iterdir()) == ["artifact"], f"leftovers after a kill at step {step}"
        if not was_killed:
            break
        step += 1
    assert step >= 5 and outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=["old", "new"].index)  # once new, never old again


def test_exchange_swaps_two_folders(tmp_path: Path) -> None:
    if replace._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("a")
    (tmp_path / "b").mkdir()
    assert replace.exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "f").read_text() == "a" and not any((tmp_path / "a").iterdir())
    with pytest.raises(FileNotFoundError):
        replace.exchange(tmp_path / "a", tmp_path / "missing")


def test_leftovers_of_live_processes_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "art"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid in (live.pid, dead.pid):
            (tmp_path / f".art.tmp-{pid}-0000").mkdir()
            (tmp_path / f".art.old-{pid}-0000").mkdir()
        (tmp_path / ".other.tmp-1-0").mkdir()
        with replace.new_directory(target) as tmp:
            (tmp / "x").write_text("1")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [".other.tmp-1-0", "art", f".art.tmp-{live.pid}-0000", f".art.old-{live.pid}-0000"])
    finally:
        live.kill()
        live.wait()


def test_a_failed_save_leaves_the_old_artifact_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "art"
    with replace.new_directory(target) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), replace.new_directory(target) as tmp:
        (tmp / "x").write_text("new")
        raise RuntimeError("disk full")
    assert snapshot(target) == {"x": b"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_recover_puts_back_the_old_folder_only_when_the_path_is_empty(tmp_path: Path) -> None:
    target = tmp_path / "art"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".art.old-{dead.pid}-1").mkdir()
    (tmp_path / f".art.old-{dead.pid}-1" / "x").write_text("old")
    replace.recover(target)
    assert snapshot(target) == {"x": b"old"}
    (tmp_path / f".art.old-{dead.pid}-2").mkdir()
    replace.recover(target)  # the path holds an artifact: nothing moves
    assert snapshot(target) == {"x": b"old"} and (tmp_path / f".art.old-{dead.pid}-2").is_dir()
