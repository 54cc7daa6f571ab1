"""The results folder: where each run and each shared stage output lives, atomic writes, and locks.

Layout of ``RESULTS_DIR``::

    <run_id>/result.json          a finished run (the folder appears by one rename, result inside)
    _stages/<kind>-<key>/         a finished shared stage output (stage.json + its files), also by rename
    _stages/<kind>-<key>.partial/ a shared stage being computed (kept across restarts, so training resumes)
    _work/<run_id>/               a run in flight: its per-stage folders; renamed to <run_id>/ when done
    _locks/<name>.lock            advisory locks (flock) of runs and stages in flight
    _failed/<run_id>.json         the error of a run that raised (retried by the next sweep)
    _sweeps.jsonl                 one line per sweep invocation: recipe, shard, host, wall time, outcome counts

Locks are ``fcntl.flock`` locks: the kernel releases them when their process dies, SIGKILL included, so a
restarted sweep never waits for a dead one; on a shared file system (NFS v4, Lustre or GPFS mounted with
locking) they also work across machines.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from fewbits._util import fs
from fewbits.errors import FewbitsError

RESULT_FILE, STAGE_FILE = "result.json", "stage.json"
STAGES_DIR, WORK_DIR, LOCKS_DIR, FAILED_DIR = "_stages", "_work", "_locks", "_failed"
SWEEP_LOG = "_sweeps.jsonl"


def jsonable(obj: Any) -> Any:
    """``obj`` as strict JSON data: numpy scalars and arrays as numbers and lists, paths as strings, tuples as
    lists, and NaN or infinite floats as null (a diverged fit must not cost a finished run its result)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays, tensors
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` (through :func:`jsonable`) as JSON to a temporary file beside ``path``, fsync it, then
    rename it over ``path``."""
    fs.write_json_atomic(path, jsonable(data))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or not a complete JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class Lock:
    """An exclusive, non-blocking lock on one file: ``acquire()`` says whether this process now holds it.

    The lock file holds the owner's host and pid (for people reading ``_locks/``). After taking the lock
    the file is checked to still be the one at ``path`` (another holder may have removed it on release),
    so two processes never both believe they hold it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise FewbitsError(f"The file system of {self.path.parent} does not support file locks ({exc}); "
                                       "put the results folder on a local disk or a file system mounted with "
                                       "locking (NFS v4, Lustre -o flock).") from exc
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                         "since": time.time()}).encode())
                self._fd = fd
                return True
            os.close(fd)  # the file we locked was removed by its last holder: lock the new one

    def release(self) -> None:
        """Remove the lock file and release the lock (removal first, so nobody locks a file about to vanish)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Store:
    """Paths and state of one results folder (shared by every shard and machine writing into it)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        """Create the folder and its bookkeeping sub-folders."""
        for sub in (STAGES_DIR, WORK_DIR, LOCKS_DIR, FAILED_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- runs
    def run_dir(self, run_id: str) -> Path:
        """Folder of a finished run."""
        return self.root / run_id

    def work_dir(self, run_id: str) -> Path:
        """Folder of a run in flight."""
        return self.root / WORK_DIR / run_id

    def result(self, run_id: str) -> dict[str, Any] | None:
        """The result of a finished run, else None."""
        return read_json(self.run_dir(run_id) / RESULT_FILE)

    def is_done(self, run_id: str) -> bool:
        """True when the run's result file exists (it is only ever written complete)."""
        return (self.run_dir(run_id) / RESULT_FILE).is_file()

    def run_lock(self, run_id: str) -> Lock:
        """The lock a process holds while it computes the run."""
        return Lock(self.root / LOCKS_DIR / f"run-{run_id}.lock")

    def finish_run(self, run_id: str, result: dict[str, Any]) -> Path:
        """Write the result into the run's work folder and rename that folder into place (atomic)."""
        work = self.work_dir(run_id)
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / RESULT_FILE, result)
        final = self.run_dir(run_id)
        if final.exists():  # a leftover without result.json (never written by us): replace it
            shutil.rmtree(final)
        os.rename(work, final)
        (self.root / FAILED_DIR / f"{run_id}.json").unlink(missing_ok=True)
        return final

    def record_failure(self, run_id: str, info: dict[str, Any]) -> None:
        """Keep the error of a run that raised, for the user (the next sweep retries the run)."""
        write_json_atomic(self.root / FAILED_DIR / f"{run_id}.json", info)

    def failure(self, run_id: str) -> dict[str, Any] | None:
        """The recorded error of a run, if its last attempt failed."""
        return read_json(self.root / FAILED_DIR / f"{run_id}.json")

    # --- shared stage outputs
    def stage_dir(self, kind: str, key: str) -> Path:
        """Folder of a finished shared stage output."""
        return self.root / STAGES_DIR / f"{kind}-{key}"

    def stage_partial(self, kind: str, key: str) -> Path:
        """Folder of a shared stage being computed (stable, so an interrupted computation can resume)."""
        return self.root / STAGES_DIR / f"{kind}-{key}.partial"

    def stage_info(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record of a finished shared stage, else None."""
        return read_json(self.stage_dir(kind, key) / STAGE_FILE)

    def stage_lock(self, kind: str, key: str) -> Lock:
        """The lock a process holds while it computes a shared stage."""
        return Lock(self.root / LOCKS_DIR / f"stage-{kind}-{key}.lock")

    def finish_stage(self, kind: str, key: str, info: dict[str, Any]) -> Path:
        """Write ``stage.json`` into the partial folder and rename it into place (atomic)."""
        partial, final = self.stage_partial(kind, key), self.stage_dir(kind, key)
        partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(partial / STAGE_FILE, info)
        if final.exists():
            shutil.rmtree(final)
        os.rename(partial, final)
        return final

    def log_sweep(self, record: dict[str, Any]) -> None:
        """Append one line about a finished sweep invocation (one ``write`` on an O_APPEND file)."""
        fd = os.open(self.root / SWEEP_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)

    def results(self) -> list[dict[str, Any]]:
        """Every finished run's result under the folder, sorted by run id."""
        found = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if not child.name.startswith("_") and child.is_dir():
                    data = read_json(child / RESULT_FILE)
                    if data is not None:
                        found.append(data)
        return found
