"""The sweep runner: run every run of a recipe once, resumably, on one shard of the grid.

- A run is skipped when ``RESULTS/<run_id>/result.json`` exists and validates; that file appears complete or
  not at all (the run's folder is renamed into place), so a sweep killed at any moment (SIGKILL included) and
  started again loses at most the runs in flight and never duplicates or corrupts a result. A run folder whose
  record does not validate (truncated, emptied, edited) is moved to ``_damaged/`` with a warning and the run is
  computed again.
- A run that raises, a user error included (a model its settings name cannot be loaded), is recorded in
  ``_failed/<run_id>.json`` and the sweep goes on with the other runs.
- A process holds a lock while it computes a run or a shared stage (:mod:`fewbits.experiments.store`), so
  two shards, or the same shard started twice, never compute the same thing at once; a run whose
  shared stage is being computed elsewhere is put back and retried after the runs that can go ahead.
- ``shard=(i, n)`` keeps the runs whose position in the id-sorted grid is ``i`` modulo ``n``: the shards
  of one recipe cover its grid exactly once, whatever machine computes them.
- Under ``torchrun``/``accelerate launch`` (several processes), process 0 makes every decision (which run,
  which lock, what is cached) and tells the others, so all processes run the same stage together and the
  training loop's data parallelism works as in a plain run; only process 0 writes files.
"""

from __future__ import annotations

import difflib
import gc
import logging
import re
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from importlib import metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fewbits.errors import FewbitsError, bad_param
from fewbits.experiments.base import Stage, StageContext, StageOutput, stage_keys
from fewbits.experiments.recipe import Recipe, Run
from fewbits.experiments.store import RESULT_FORMAT, Lock, Store

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")  # the Hugging Face hub's repo id syntax


class StageBusy(Exception):
    """A shared stage this run needs is being computed by another process; try the run again later."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; e.g. ``parse_shard(os.environ["SLURM_ARRAY_TASK_ID"] + "/8")``."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise bad_param("shard", "'i/n' with integers 0 <= i < n, e.g. 0/4", text, "fewbits sweep") from None
    if not 0 <= i < n:
        raise bad_param("shard", "'i/n' with integers 0 <= i < n, e.g. 0/4", text, "fewbits sweep")
    return i, n


def shard_runs(runs: list[Run], shard: tuple[int, int] | None) -> list[Run]:
    """The runs of one shard, in grid order: the ``i``-th of every ``n`` runs in run-id order."""
    if shard is None:
        return list(runs)
    i, n = shard
    mine = {run.run_id for k, run in enumerate(sorted(runs, key=lambda r: r.run_id)) if k % n == i}
    return [run for run in runs if run.run_id in mine]


@dataclass
class RunStatus:
    """Where one run stands: ``done``, ``failed`` (last attempt raised), ``damaged`` (its record does not
    validate: it is set aside and computed again) or ``pending``, and why."""

    run: Run
    status: str
    detail: str = ""


def plan(recipe: Recipe, out: str | os.PathLike, shard: tuple[int, int] | None = None) -> list[RunStatus]:
    """The runs of this shard and their status, without running anything (``--dry-run``)."""
    store = Store(out)
    statuses = []
    for run in shard_runs(recipe.runs, shard):
        done, problem = store.result_status(run.run_id)
        if done:
            statuses.append(RunStatus(run, "done"))
        elif problem:
            statuses.append(RunStatus(run, "damaged", problem))
        elif (failure := store.failure(run.run_id)) is not None:
            statuses.append(RunStatus(run, "failed", str(failure.get("error", ""))))
        else:
            statuses.append(RunStatus(run, "pending"))
    return statuses


def _model_problem(name: str) -> str:
    """Why ``load_model(name)`` would fail, as far as can be told offline ("" when it would load or may)."""
    from fewbits.models import model_names

    if name.lower() in model_names():
        return ""
    path = Path(name).expanduser()
    if path.exists():
        holds = [path / "config.json", path / "fewbits.json", path / "artifact/fewbits.json", path / "model/fewbits.json"]
        return "" if path.is_dir() and any(p.is_file() for p in holds) else f"{path} holds no model"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return f"no such model directory {name}"
    if not HUB_ID.fullmatch(name) or "--" in name or ".." in name:
        return f"{name!r} is neither a built-in model ({', '.join(model_names())}), a directory nor a hub id"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is not cached either
        cached = False
    close = difflib.get_close_matches(name.lower(), model_names(), n=1, cutoff=0.75)
    if close and not cached:  # a typo of a built-in name, not a model anyone publishes
        return f"unknown model {name!r} (did you mean {close[0]!r}?)"
    return ""  # a hub id: in the local cache, or downloaded by the run (cannot be checked offline)


def offline_problems(runs: list[Run], env: Mapping[str, Any]) -> list[str]:
    """What would make runs fail and can be checked without computing or the network: unknown tasks, models
    that are neither built-in, a model directory nor a hub id, and a data folder that does not exist."""
    from fewbits.data import TASKS
    from fewbits.experiments.recipe import expand_env

    problems: dict[str, None] = {}
    try:
        data_dir = expand_env(env.get("data_dir"))
    except FewbitsError:
        data_dir = None  # an unset ${VAR}: set when the sweep runs, not needed to plan it
    if data_dir and not Path(data_dir).is_dir():
        problems[f"data_dir {data_dir} is not a folder"] = None
    for run in runs:
        task, model = run.config.get("task"), run.config.get("model")
        if task is not None and task not in TASKS:
            problems[f"run {run.run_id}: unknown task {task!r} (known: {', '.join(TASKS)})"] = None
        if isinstance(model, str) and (problem := _model_problem(model)):
            problems[f"run {run.run_id}: {problem}"] = None
    return list(problems)


class Coordinator:
    """Decisions made by process 0 and shared with the others (one process: a plain call)."""

    def __init__(self) -> None:
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                if torch.cuda.is_available():
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        """True on the process that decides and writes."""
        return self.rank == 0

    def decide(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on process 0, its (picklable) value on every process."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def versions() -> dict[str, str | None]:
    """Versions that can change the numbers: fewbits (and its git commit), Python, torch, transformers, numpy."""
    import fewbits

    found: dict[str, str | None] = {"fewbits": fewbits.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "numpy"):  # installed versions, read without importing the packages
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        found["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(fewbits.__file__).parent,
                                             capture_output=True, text=True, timeout=5,
                                             check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        found["git_commit"] = None
    return found


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Sweeper:
    """Runs the runs of one recipe (or shard) into one results folder. See the module docstring."""

    recipe: Recipe
    store: Store
    stages: Mapping[str, type[Stage]]
    poll_s: float = 10.0  # wait between retries when every remaining run is in flight elsewhere
    coord: Coordinator = field(default_factory=Coordinator)
    cache: dict[str, Any] = field(default_factory=dict)
    _versions: dict[str, Any] | None = None

    def run_all(self, runs: list[Run], on_done: Callable[[Run, str], None] | None = None) -> dict[str, list[str]]:
        """Compute every run of ``runs`` not yet done; returns run ids by outcome (done, skipped, failed)."""
        if self.coord.is_main:
            self.store.ensure()
        outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
        pending = list(runs)
        while pending:
            deferred = []
            for run in pending:
                status = self._attempt(run)
                if status == "busy":
                    deferred.append(run)
                    continue
                outcome[status].append(run.run_id)
                if on_done is not None:
                    on_done(run, status)
            if deferred and len(deferred) == len(pending):
                log.info("%d run(s) wait for work in flight elsewhere; retrying in %.0f s", len(deferred), self.poll_s)
                time.sleep(self.poll_s)
            pending = deferred
        return outcome

    def _attempt(self, run: Run) -> str:
        """Run ``run`` unless done or locked: 'done' (computed now), 'skipped' (done before), 'busy', 'failed'."""
        lock = self.store.run_lock(run.run_id)
        verdict = self.coord.decide(lambda: "skipped" if self.store.is_done(run.run_id)
                                    else ("go" if lock.acquire() else "busy"))
        if verdict != "go":
            return verdict
        try:
            if self.coord.decide(lambda: self.store.is_done(run.run_id)):  # finished while we took the lock
                return "skipped"
            if self.coord.is_main:
                self.store.set_aside(run.run_id)
            result = self.execute(run)
            if self.coord.is_main:
                self.store.finish_run(run.run_id, result)
            return "done"
        except StageBusy as exc:
            log.info("run %s waits: %s", run.run_id, exc)
            return "busy"
        except Exception as exc:  # noqa: BLE001 - one failed run must not end a sweep of hundreds
            log.error("run %s (%s) failed: %s", run.run_id, run.label, exc)
            if self.coord.is_main:  # a user error (FewbitsError) is one line; anything else keeps its traceback
                self.store.record_failure(run.run_id, {
                    "run_id": run.run_id, "config": run.config, "error": f"{type(exc).__name__}: {exc}",
                    "traceback": "" if isinstance(exc, FewbitsError) else traceback.format_exc(),
                    "host": socket.gethostname(), "at": _now()})
            if self.coord.world > 1:
                raise  # the other processes may wait in a collective: end the launch (a restart resumes)
            return "failed"
        finally:
            lock.release()
            gc.collect()
            _empty_device_cache()

    def execute(self, run: Run) -> dict[str, Any]:
        """Run the stages of ``run`` (reusing saved stages); return its result record."""
        started, started_at = time.perf_counter(), _now()
        config = run.config
        keys = stage_keys(self.stages, config)
        outputs: dict[str, StageOutput] = {}
        state: dict[str, Any] = {}
        for i, (kind, key) in enumerate(zip(config["pipeline"], keys, strict=True)):
            stage_cls = self.stages[kind]
            if stage_cls.saved:
                output, state = self._saved_stage(run, stage_cls, key, keys[i - 1] if i else None, outputs, state)
            else:
                out_dir = self.store.work_dir(run.run_id) / kind
                output, state = self._compute(run, stage_cls, key, out_dir, outputs, state)
            outputs[kind] = output
        metrics: dict[str, Any] = {}
        sizes: dict[str, Any] = {}
        for output in outputs.values():
            metrics = output.info.get("metrics", metrics)
            sizes.update(output.info.get("sizes", {}))
        if self._versions is None:
            self._versions = versions()
        return {
            "format": RESULT_FORMAT, "run_id": run.run_id, "recipe": self.recipe.info(), "point": run.point,
            "config": config, "seed": config.get("seed"), "env": self.recipe.env,
            "metrics": metrics, "sizes": sizes,
            "stages": {kind: {"key": o.key, "cached": o.cached, "seconds": o.seconds, **o.info}
                       for kind, o in outputs.items()},
            "timings": {"total_s": time.perf_counter() - started,
                        "stages_s": {kind: o.seconds for kind, o in outputs.items() if not o.cached}},
            "versions": {**self._versions, "stages": run.versions},
            "host": socket.gethostname(), "processes": self.coord.world, "started_at": started_at,
            "finished_at": _now(),
        }

    def _compute(self, run: Run, stage_cls: type[Stage], key: str, out_dir: Path, outputs: dict[str, StageOutput],
                 state: dict[str, Any]) -> tuple[StageOutput, dict[str, Any]]:
        if self.coord.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(run_id=run.run_id, config=run.config, params=dict(run.config[stage_cls.kind]),
                           env=dict(self.recipe.env), out_dir=out_dir, outputs=dict(outputs), state=state,
                           cache=self.cache, is_main=self.coord.is_main)
        tick = time.perf_counter()
        info = stage_cls().run(ctx)
        return StageOutput(stage_cls.kind, key, dict(info), None, time.perf_counter() - tick), ctx.state

    def _saved_stage(self, run: Run, stage_cls: type[Stage], key: str, parent: str | None,
                     outputs: dict[str, StageOutput], state: dict[str, Any]) -> tuple[StageOutput, dict[str, Any]]:
        """A shared stage: from the folder when finished, else computed under its lock and renamed into place."""
        kind = stage_cls.kind
        record = self.coord.decide(lambda: self.store.stage_info(kind, key))
        if record is not None:
            return StageOutput(kind, key, record["info"], self.store.stage_dir(kind, key), record["seconds"],
                               cached=True), {}
        lock: Lock = self.store.stage_lock(kind, key)
        if not self.coord.decide(lock.acquire):
            raise StageBusy(f"stage {kind} ({key}) is being computed by another process")
        try:
            record = self.coord.decide(lambda: self.store.stage_info(kind, key))
            if record is not None:
                return StageOutput(kind, key, record["info"], self.store.stage_dir(kind, key), record["seconds"],
                                   cached=True), {}
            partial = self.store.stage_partial(kind, key)
            output, state = self._compute(run, stage_cls, key, partial, outputs, state)
            if self.coord.is_main:
                self.store.finish_stage(kind, key, {
                    "kind": kind, "key": key, "version": stage_cls.version, "parent": parent,
                    "uses": {k: run.config[k] for k in stage_cls.uses}, "params": run.config[kind],
                    "info": output.info, "seconds": output.seconds, "host": socket.gethostname(),
                    "finished_at": _now()})
            self.coord.decide(lambda: None)  # the others wait until the folder is in place
            output.dir = self.store.stage_dir(kind, key)
            return output, state
        finally:
            lock.release()


def _empty_device_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def sweep(recipe: Recipe, out: str | os.PathLike, *, shard: tuple[int, int] | None = None, poll_s: float = 10.0,
          on_done: Callable[[Run, str], None] | None = None) -> dict[str, list[str]]:
    """Run every run of ``recipe`` (this shard's) not yet in ``out`` with the recipe's stages; returns run ids
    by outcome (``done``: computed now, ``skipped``: done before, ``failed``: raised, see ``out/_failed``).

    Example: ``sweep(load_recipe("recipes/p1-offline.toml"), "results/p1")``, then
    ``fewbits report results/p1``.
    """
    store = Store(out)
    sweeper = Sweeper(recipe, store, recipe.stages, poll_s=poll_s)
    started, started_at = time.perf_counter(), _now()
    outcome = sweeper.run_all(shard_runs(recipe.runs, shard), on_done)
    if sweeper.coord.is_main:
        store.log_sweep({"recipe": recipe.name, "file": str(recipe.path) if recipe.path else None,
                         "shard": f"{shard[0]}/{shard[1]}" if shard else None, "host": socket.gethostname(),
                         "processes": sweeper.coord.world, "started_at": started_at, "finished_at": _now(),
                         "wall_s": time.perf_counter() - started, **{k: len(v) for k, v in outcome.items()}})
    return outcome
