"""The results folder: locks (exclusive, released by a killed holder) and atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fewbits.experiments.store import Lock, Store, jsonable, read_json, write_json_atomic


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "a.lock"
    first, second = Lock(path), Lock(path)
    assert first.acquire() and first.held
    assert not second.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    first.release()
    assert not path.exists() and not first.held
    with second:
        assert second.acquire()
        assert not Lock(path).acquire()
    assert not path.exists() and Lock(path).acquire()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    code = ("import sys, time; from pathlib import Path; from fewbits.experiments.store import Lock; "
            f"assert Lock(Path({str(path)!r})).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not Lock(path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not Lock(path).acquire():
            assert time.monotonic() < deadline, "the lock of a killed process was not released"
            time.sleep(0.05)
    finally:
        holder.kill()
        holder.wait()


def test_atomic_json_and_reading_partial_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind
    write_json_atomic(path, {"r2": float("nan"), "x": np.float32(0.5), "n": np.int64(3), "v": np.arange(2),
                             "p": Path("/a"), "t": (1, float("inf"))})
    assert read_json(path) == {"r2": None, "x": 0.5, "n": 3, "v": [0, 1], "p": "/a", "t": [1, None]}
    assert jsonable({1: [np.float64(2.0)]}) == {"1": [2.0]}
    path.write_text('{"a": ')  # what a torn write would look like
    assert read_json(path) is None
    assert read_json(tmp_path / "missing.json") is None


def test_finished_runs_and_stages_appear_by_rename(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    (store.work_dir("r1") / "add").mkdir(parents=True)
    assert not store.is_done("r1")
    record = {"format": 1, "run_id": "r1", "recipe": {"name": "t"}, "point": {}, "config": {"pipeline": []},
              "metrics": {}, "sizes": {}, "stages": {}, "timings": {}, "versions": {}}
    store.finish_run("r1", record)
    assert store.is_done("r1") and not store.work_dir("r1").exists()
    assert (store.run_dir("r1") / "add").is_dir()
    assert store.results() == [record]
    store.stage_partial("base", "k").mkdir(parents=True)
    (store.stage_partial("base", "k") / "model.bin").write_text("w")
    store.finish_stage("base", "k", {"info": {}})
    assert store.stage_info("base", "k") == {"info": {}}
    assert (store.stage_dir("base", "k") / "model.bin").read_text() == "w"
    assert not store.stage_partial("base", "k").exists()
