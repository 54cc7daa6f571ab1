"""The sweep runner on toy stages: exactly once, shared stages, shards, failures, locks, kill -9 and resume."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sweep_helpers import TOY_RECIPE, journal_lines, write_recipe
from toy_stages import TOY_STAGES

from fewbits.errors import FewbitsValueError
from fewbits.experiments.base import stage_keys
from fewbits.experiments.recipe import load_recipe
from fewbits.experiments.store import Store
from fewbits.experiments.sweep import parse_shard, plan, shard_runs, sweep

HERE = Path(__file__).parent


def toy(tmp_path: Path, sleep: float = 0.0, text: str = TOY_RECIPE):
    return load_recipe(write_recipe(tmp_path, text.format(sleep=sleep)), TOY_STAGES)


def check_results(out: Path, recipe) -> dict[str, dict]:
    """Every run of the recipe has exactly one complete, consistent result; returns them by run id."""
    store = Store(out)
    results = {r["run_id"]: r for r in store.results()}
    assert set(results) == {r.run_id for r in recipe.runs}
    for run in recipe.runs:
        data = json.loads((out / run.run_id / "result.json").read_text())
        assert data["config"] == run.config and data["seed"] == run.config["seed"]
        assert data["metrics"]["score"] == 10 * run.config["x"] + run.config["seed"] + run.config["add"]["delta"]
    assert not any((out / "_work").iterdir()), "a finished sweep leaves no run in flight"
    assert not list((out / "_stages").glob("*.partial"))
    return results


def test_each_run_once_and_saved_stages_shared(tmp_path: Path, journal: Path) -> None:
    recipe = toy(tmp_path)
    out = tmp_path / "res"
    outcome = sweep(recipe, out)
    assert sorted(outcome["done"]) == sorted(r.run_id for r in recipe.runs) and not outcome["failed"]
    results = check_results(out, recipe)
    kinds = Counter(line[0] for line in journal_lines(journal))
    assert kinds == {"base": 2, "add": 6}  # one base per seed, shared by the three deltas
    some = next(iter(results.values()))
    assert set(some["versions"]) >= {"fewbits", "torch", "python", "stages"}
    assert some["sizes"] == {"bytes": 8} and some["timings"]["total_s"] >= 0
    assert Counter(r["stages"]["add"]["source"] for r in results.values()) == {"memory": 2, "disk": 4}
    assert Counter(r["stages"]["base"]["cached"] for r in results.values()) == {False: 2, True: 4}
    # started again: nothing is recomputed
    again = sweep(recipe, out)
    assert len(again["skipped"]) == 6 and not again["done"]
    assert len(journal_lines(journal)) == 8
    log = [json.loads(line) for line in (out / "_sweeps.jsonl").read_text().splitlines()]
    assert [(rec["done"], rec["skipped"]) for rec in log] == [(6, 0), (0, 6)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_cover_the_grid_exactly_once(tmp_path: Path, n: int) -> None:
    text = TOY_RECIPE.replace("seed = [0, 1]", "seed = [0, 1, 2, 3]")
    recipe = toy(tmp_path, text=text)
    shards = [shard_runs(recipe.runs, (i, n)) for i in range(n)]
    ids = [r.run_id for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.run_id for r in recipe.runs)  # covered, and each once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [r.run_id for r in shard_runs(recipe.runs, (0, n))] == [r.run_id for r in shards[0]]  # deterministic


def test_shards_fill_one_shared_folder(tmp_path: Path, journal: Path) -> None:
    recipe = toy(tmp_path)
    out = tmp_path / "res"
    for i in range(3):
        sweep(recipe, out, shard=(i, 3))
    check_results(out, recipe)
    assert Counter(line[0] for line in journal_lines(journal)) == {"base": 2, "add": 6}


def test_parse_shard() -> None:
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(FewbitsValueError, match="'shard'"):
            parse_shard(bad)


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, journal: Path) -> None:
    text = TOY_RECIPE.replace('"add.delta" = [1, 2, 3]', '"add.fail" = [false, true]')
    recipe = toy(tmp_path, text=text)
    out = tmp_path / "res"
    outcome = sweep(recipe, out)
    assert len(outcome["done"]) == 2 and len(outcome["failed"]) == 2
    failed = outcome["failed"][0]
    record = json.loads((out / "_failed" / f"{failed}.json").read_text())
    assert "asked to fail" in record["error"] and "Traceback" in record["traceback"]
    assert not (out / failed).exists()
    assert Counter(s.status for s in plan(recipe, out)) == {"done": 2, "failed": 2}
    sweep(recipe, out)  # the next sweep retries the failed runs only
    assert Counter(line[0] for line in journal_lines(journal))["add"] == 6


def test_user_error_of_a_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, journal: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose model cannot be loaded (a FewbitsError) goes to _failed/ as README promises; the others run."""
    recipe = toy(tmp_path)
    run = TOY_STAGES["add"].run

    def refuse(self, ctx):
        if ctx.config["add"]["delta"] == 2:
            raise FewbitsValueError("Model 'nosuch' does not exist.")
        return run(self, ctx)

    monkeypatch.setattr(TOY_STAGES["add"], "run", refuse)
    out = tmp_path / "res"
    outcome = sweep(recipe, out)
    assert len(outcome["failed"]) == 2 and len(outcome["done"]) == 4
    record = json.loads((out / "_failed" / f"{outcome['failed'][0]}.json").read_text())
    assert record["error"] == "FewbitsValueError: Model 'nosuch' does not exist." and record["traceback"] == ""


def test_run_waits_for_a_shared_stage_computed_elsewhere(tmp_path: Path, journal: Path) -> None:
    recipe = toy(tmp_path)
    out = tmp_path / "res"
    store = Store(out)
    seed0 = next(r for r in recipe.runs if r.config["seed"] == 0)
    kind_key = stage_keys(TOY_STAGES, seed0.config)[0]
    held = store.stage_lock("base", kind_key)  # another process computing seed 0's base
    assert held.acquire()
    thread = threading.Thread(target=sweep, args=(recipe, out), kwargs={"poll_s": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while sum(store.is_done(r.run_id) for r in recipe.runs) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert {r.config["seed"] for r in recipe.runs if store.is_done(r.run_id)} == {1}  # seed 0 waits
    finally:
        held.release()
    thread.join(20)
    check_results(out, recipe)


def _start(recipe_path: Path, out: Path, journal: Path) -> subprocess.Popen:
    env = {**os.environ, "TOY_JOURNAL": str(journal), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(HERE / "toy_stages.py"), str(recipe_path), str(out)], env=env)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_kill_9_mid_sweep_then_restart_loses_only_runs_in_flight(tmp_path: Path, journal: Path) -> None:
    recipe_path = write_recipe(tmp_path, TOY_RECIPE.format(sleep=0.3))
    recipe = load_recipe(recipe_path, TOY_STAGES)
    out = tmp_path / "res"
    store = Store(out)
    proc = _start(recipe_path, out, journal)
    _kill_when(proc, lambda: sum(store.is_done(r.run_id) for r in recipe.runs) >= 2)
    done_before = {r.run_id for r in recipe.runs if store.is_done(r.run_id)}
    for run_id in done_before:  # what the kill left is complete, valid JSON
        assert json.loads((out / run_id / "result.json").read_text())["run_id"] == run_id
    assert 2 <= len(done_before) < 6
    assert _start(recipe_path, out, journal).wait(120) == 0
    check_results(out, recipe)
    adds = Counter(line[1] for line in journal_lines(journal) if line[0] == "add")
    assert all(adds[run_id] == 1 for run_id in done_before)  # finished runs never run again
    assert sum(adds.values()) <= 6 + 1  # at most the one run in flight at the kill ran twice


def test_kill_9_inside_a_shared_stage_then_restart(tmp_path: Path, journal: Path) -> None:
    text = TOY_RECIPE.replace("[defaults.add]", "[defaults.base]\nsleep = 2.0\n[defaults.add]")
    recipe_path = write_recipe(tmp_path, text.format(sleep=0))
    recipe = load_recipe(recipe_path, TOY_STAGES)
    out = tmp_path / "res"
    proc = _start(recipe_path, out, journal)
    _kill_when(proc, lambda: any(line[0] == "base" for line in journal_lines(journal)))
    assert list((out / "_stages").glob("*.partial")) and not Store(out).results()
    assert _start(recipe_path, out, journal).wait(120) == 0
    check_results(out, recipe)
    assert Counter(line[0] for line in journal_lines(journal)) == {"base": 3, "add": 6}  # 2 bases + the killed one


def test_sweep_command(tmp_path: Path, journal: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    from fewbits.commands import sweep as command

    monkeypatch.setattr("fewbits.experiments.stages.STAGES", TOY_STAGES)
    recipe_path = write_recipe(tmp_path, TOY_RECIPE.format(sleep=0))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "res"
    args = [str(recipe_path), "--out", str(out), "--shard", "0/2", "--set", "x=2"]
    assert command.run(parser.parse_args(args)) == 0
    assert "3 run(s) computed" in capsys.readouterr().out
    assert command.run(parser.parse_args(args[:3] + ["--set", "x=2", "--dry-run"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("done") for line in lines) == 3 and "3 done, 3 pending" in lines[-1]
    assert all(r["config"]["x"] == 2 for r in Store(out).results())
    with pytest.raises(FewbitsValueError, match="'--set'"):
        command.run(parser.parse_args(args[:3] + ["--set", "x"]))


def test_torchrun_processes_run_each_stage_together_and_write_once(tmp_path: Path, journal: Path) -> None:
    recipe_path = write_recipe(tmp_path, TOY_RECIPE.format(sleep=0))
    out = tmp_path / "res"
    env = {**os.environ, "TOY_JOURNAL": str(journal), "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "toy_stages.py"), str(recipe_path), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check_results(out, load_recipe(recipe_path, TOY_STAGES))
    by_stage = Counter((line[0], line[1]) for line in journal_lines(journal))
    assert len(by_stage) == 2 + 6 and set(by_stage.values()) == {2}  # every stage on both processes
    assert {r["processes"] for r in Store(out).results()} == {2}


@pytest.mark.parametrize("setting, fragment", [
    ("task=glue/nosuch", "unknown task 'glue/nosuch'"),
    ("model=minlm", "unknown model 'minlm' (did you mean 'minilm'?)"),
    ("model=./nowhere", "no such model directory ./nowhere"),
    ("model=bad id!", "is neither a built-in model"),
    ("data_dir=/nonexistent/glue", "data_dir /nonexistent/glue is not a folder"),
])
def test_dry_run_checks_tasks_models_and_data_offline(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      setting: str, fragment: str) -> None:
    from fewbits import cli

    recipe = HERE.parents[1] / "recipes" / "p1-offline.toml"
    assert cli.main(["sweep", str(recipe), "--out", str(tmp_path / "res"), "--dry-run", "--set", setting]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert any(line.startswith("problem") and fragment in line for line in captured.out.splitlines())
    assert not (tmp_path / "res").exists()


def test_dry_run_accepts_hub_ids_it_cannot_check_offline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fewbits import cli

    recipe = HERE.parents[1] / "recipes" / "p1-offline.toml"
    for model in ("albert-base-v2", "google-bert/bert-base-uncased", "tiny-bert"):
        assert cli.main(["sweep", str(recipe), "--out", str(tmp_path / "res"), "--dry-run",
                         "--set", f"model={model}"]) == 0
    assert "problem" not in capsys.readouterr().out
