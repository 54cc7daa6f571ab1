"""The results folder: where each run and each shared stage output lives, atomic writes, and locks.

Layout of ``RESULTS_DIR``::

    <run_id>/result.json          a finished run (the folder appears by one rename, result inside)
    _stages/<kind>-<key>/         a finished shared stage output (stage.json + its files), also by rename
    _stages/<kind>-<key>.partial/ a shared stage being computed (kept across restarts, so training resumes)
    _work/<run_id>/               a run in flight: its per-stage folders; renamed to <run_id>/ when done
    _locks/<name>.lock            advisory locks (flock) of runs and stages in flight
    _failed/<run_id>.json         the error of a run that raised (retried by the next sweep)
    _damaged/<run_id>-<time>/     a run folder whose result.json did not validate, set aside (the run is redone)
    _sweeps.jsonl                 one line per sweep invocation: recipe, shard, host, wall time, outcome counts

Locks are ``fcntl.flock`` locks: the kernel releases them when their process dies, SIGKILL included, so a
restarted sweep never waits for a dead one; on a shared file system (NFS v4, Lustre or GPFS mounted with
locking) they also work across machines.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewbits._util import fs
from fewbits.errors import FewbitsError

log = logging.getLogger(__name__)

RESULT_FILE, STAGE_FILE = "result.json", "stage.json"
STAGES_DIR, WORK_DIR, LOCKS_DIR, FAILED_DIR, DAMAGED_DIR = "_stages", "_work", "_locks", "_failed", "_damaged"
SWEEP_LOG = "_sweeps.jsonl"
RESULT_FORMAT = 1
RUN_ID = re.compile(r"[0-9a-f]{16}")  # how recipe.config_hash names a run
MAX_RECORD_BYTES = 64 << 20  # a result record is a few KiB; anything near this is not one

# top-level fields of a result record and their JSON types (see Sweeper.execute)
_RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int, "run_id": str, "recipe": dict, "point": dict, "config": dict, "metrics": dict, "sizes": dict,
    "stages": dict, "timings": dict, "versions": dict}


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
    data, _ = read_record(path)
    return data


def read_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(the JSON object in path, "")``, or ``(None, why not)``: missing, empty, too large, not JSON, not an object."""
    try:
        if not path.is_file() or path.is_symlink():
            return None, "missing" if not os.path.lexists(path) else "not a regular file"
        size = path.stat().st_size
        if size == 0:
            return None, "empty"
        if size > MAX_RECORD_BYTES:
            return None, f"{size} bytes, more than a record can hold ({MAX_RECORD_BYTES})"
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return None, f"not valid JSON (truncated or damaged: {str(exc).splitlines()[0][:80]})"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    return data, ""


def result_problem(data: dict[str, Any], run_id: str) -> str:
    """Why ``data`` is not a valid result record of run ``run_id`` ("" when it is one)."""
    for key, kind in _RESULT_FIELDS.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            return f"field {key!r} missing or not a {kind.__name__}"
    if not 1 <= data["format"] <= RESULT_FORMAT:
        return f"format {data['format']}, this fewbits reads 1 to {RESULT_FORMAT}"
    if data["run_id"] != run_id:
        return f"run_id {data['run_id']!r} differs from its folder's name"
    config, stages = data["config"], data["stages"]
    pipeline = config.get("pipeline")
    if not isinstance(pipeline, list) or not all(isinstance(k, str) for k in pipeline):
        return "config.pipeline missing or not a list of stage names"
    if not isinstance(config.get("seed", 0), int) or isinstance(config.get("seed", 0), bool):
        return "config.seed is not an int"
    for kind, stage in stages.items():
        if not isinstance(stage, dict) or not isinstance(stage.get("key", ""), str):
            return f"stages.{kind} is not an object with a string key"
        if not isinstance(stage.get("metrics", {}), dict):
            return f"stages.{kind}.metrics is not an object"
    if not isinstance(data["recipe"].get("name", ""), str) or not isinstance(data["recipe"].get("paper"),
                                                                              (str, type(None))):
        return "recipe.name or recipe.paper is not a string"
    return ""


# config fields each paper's tables read, as (path, type, only when this config key is present)
_PAPER_FIELDS: dict[str, tuple[tuple[str, type | tuple[type, ...], str | None], ...]] = {
    "P1": (("model", str, None), ("task", str, None), ("quantize.scheme", str, "quantize"),
           ("quantize.bits", int, "quantize")),
    "P2": (("task", str, None), ("ste.abits", int, "ste"), ("ste.wbits", int, "ste"),
           ("regularize.method", str, "regularize"), ("regularize.temperature", (int, float), "regularize")),
    "P3": (("model", str, None), ("task", str, None), ("base.bits", int, "base")),
}


def table_problem(record: Mapping[str, Any]) -> str:
    """Why a (schema-valid) result cannot fill its paper's tables: a config field they read is missing ("" if none)."""
    paper, config = record["recipe"].get("paper"), record["config"]
    for path, kind, when in _PAPER_FIELDS.get(paper, ()):
        if when is not None and when not in config:
            continue
        value: Any = config
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"config.{path} missing or of the wrong type for a {paper} table"
    return ""


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

    def result_status(self, run_id: str) -> tuple[bool, str]:
        """``(done, problem)``: done when the run's result validates; else why its folder is damaged ("" when the
        run has no folder)."""
        path = self.run_dir(run_id) / RESULT_FILE
        if not os.path.lexists(self.run_dir(run_id)):
            return False, ""
        data, problem = read_record(path)
        if data is not None:
            problem = result_problem(data, run_id)
        return not problem, problem and f"{path}: {problem}"

    def is_done(self, run_id: str) -> bool:
        """True when the run's result file exists and validates (a damaged one does not count)."""
        return self.result_status(run_id)[0]

    def set_aside(self, run_id: str) -> Path | None:
        """Move a run folder whose result does not validate to ``_damaged/`` (with a warning); returns where."""
        done, problem = self.result_status(run_id)
        if done or not problem:
            return None
        target = self.root / DAMAGED_DIR / f"{run_id}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.run_dir(run_id), target)
        log.warning("damaged result set aside, the run is computed again: %s (moved to %s)", problem, target)
        return target

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
        """Every finished run's valid result under the folder, sorted by run id."""
        return self.scan()[0]

    def scan(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every valid result under the folder, sorted by run id, and one line per run folder skipped and why."""
        found, skipped = [], []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.name.startswith(("_", ".")) or not child.is_dir():
                    continue
                if not os.path.lexists(child / RESULT_FILE) and not RUN_ID.fullmatch(child.name):
                    continue  # not a run's folder (e.g. a results folder below a parent being reported)
                data, problem = read_record(child / RESULT_FILE)
                if data is not None:
                    problem = result_problem(data, child.name)
                if problem:
                    skipped.append(f"{child / RESULT_FILE}: {problem}")
                else:
                    found.append(data)
        return found, skipped
