"""Damaged run records: a run is done only when its result.json validates; a damaged one is set aside with a
warning and computed again, and the report names every record it skipped and why (never a KeyError)."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from sweep_helpers import TOY_RECIPE, journal_lines, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toy_stages import TOY_STAGES

from fewbits.experiments.recipe import load_recipe
from fewbits.experiments.report import write_report
from fewbits.experiments.store import Store, read_record, result_problem
from fewbits.experiments.sweep import plan, sweep

DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "not an object": lambda p: p.write_text("[1, 2, 3]"),
    "no recipe": lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                    if k != "recipe"})),
    "config not an object": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "config": "x"})),
    "stage not an object": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "stages": {"add": 3}})),
    "other run's record": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "run_id": "0" * 16})),
    "newer format": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format": 99})),
    "deeply nested": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
    "a link": lambda p: (p.rename(p.with_name("moved.json")), p.symlink_to(p.with_name("moved.json"))),
    "missing": lambda p: p.unlink(),
}
REASONS = {"truncated": "not valid JSON", "emptied": "empty", "not an object": "not an object",
           "no recipe": "'recipe'", "config not an object": "'config'", "stage not an object": "stages.add",
           "other run's record": "differs from its folder", "newer format": "format 99",
           "deeply nested": "not valid JSON", "a folder": "not a regular file", "a link": "not a regular file",
           "missing": "missing"}


def finished(tmp_path: Path):
    recipe = load_recipe(write_recipe(tmp_path, TOY_RECIPE.format(sleep=0)), TOY_STAGES)
    out = tmp_path / "res"
    sweep(recipe, out)
    return recipe, out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_record_is_set_aside_and_computed_again(tmp_path: Path, journal: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    recipe, out = finished(tmp_path)
    victim = sorted(r.run_id for r in recipe.runs)[0]
    path = out / victim / "result.json"
    DAMAGE[damage](path)
    statuses = {s.run.run_id: s for s in plan(recipe, out)}
    assert statuses[victim].status == "damaged" and REASONS[damage] in statuses[victim].detail
    assert Counter(s.status for s in statuses.values()) == {"done": 5, "damaged": 1}

    with caplog.at_level(logging.WARNING):
        outcome = sweep(recipe, out)
    assert outcome["done"] == [victim] and len(outcome["skipped"]) == 5
    assert any(str(path) in r.getMessage() and REASONS[damage] in r.getMessage() for r in caplog.records)
    assert Counter(line[0] for line in journal_lines(journal))["add"] == 7  # 6 first, then only the victim
    assert [p.name.startswith(victim) for p in (out / "_damaged").iterdir()] == [True]
    assert Store(out).is_done(victim) and len(Store(out).results()) == 6


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_report_names_every_skipped_record_and_why(tmp_path: Path, journal: Path, damage: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    recipe, out = finished(tmp_path)
    victims = sorted(r.run_id for r in recipe.runs)[:2]
    for victim in victims:
        DAMAGE[damage](out / victim / "result.json")
    with caplog.at_level(logging.WARNING):
        path, _ = write_report(out)
    text = path.read_text()
    assert "**Skipped**: 2 damaged or unusable record(s)" in text and "4 finished runs" in text
    for victim in victims:
        line = next(ln for ln in text.splitlines() if victim in ln)
        assert REASONS[damage] in line
        assert any(victim in r.getMessage() and REASONS[damage] in r.getMessage() for r in caplog.records)


def test_report_of_a_paper_recipe_skips_records_its_tables_cannot_read(tmp_path: Path) -> None:
    """A schema-valid record whose config lacks what the P1 tables read is skipped by name (was KeyError)."""
    from test_report import good_p1, p1_results

    out = tmp_path / "res"
    p1_results(out, good_p1)
    victim = sorted(p for p in out.iterdir())[0] / "result.json"
    record = json.loads(victim.read_text())
    del record["config"]["task"]
    victim.write_text(json.dumps(record))
    text = write_report(out)[0].read_text()
    assert f"`{victim}: config.task missing or of the wrong type for a P1 table`" in text


def test_report_command_with_only_damaged_records_is_one_line(tmp_path: Path, journal: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from fewbits import cli

    recipe, out = finished(tmp_path)
    for run in recipe.runs:
        (out / run.run_id / "result.json").write_text("")
    assert cli.main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6 damaged record(s) skipped" in err and "empty" in err
    assert cli.main(["report", str(out / recipe.runs[0].run_id / "result.json")]) == 2
    assert "result.json' is a file, not a folder; give the --out folder" in capsys.readouterr().err


def test_dry_run_counts_damaged_runs(tmp_path: Path, journal: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    from fewbits.commands import sweep as command

    monkeypatch.setattr("fewbits.experiments.stages.STAGES", TOY_STAGES)
    recipe, out = finished(tmp_path)
    (out / sorted(r.run_id for r in recipe.runs)[0] / "result.json").write_text("{")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([str(recipe.path), "--out", str(out), "--dry-run"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("damaged") for line in lines) == 1
    assert "5 done, 0 pending, 0 failed, 1 damaged (redone by the next sweep)" in lines[-1]
    assert not (out / "_damaged").exists()  # a dry run moves nothing


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_damage_is_either_a_valid_record_or_a_named_problem(tmp_path_factory, data) -> None:
    """Truncate, cut, flip or insert bytes anywhere: reading never raises, and what validates is a record."""
    folder = tmp_path_factory.mktemp("r") / ("a" * 16)
    folder.mkdir()
    good = {"format": 1, "run_id": "a" * 16, "recipe": {"name": "t", "paper": None}, "point": {"seed": 0},
            "config": {"pipeline": ["add"], "seed": 0}, "metrics": {"score": 1.5}, "sizes": {},
            "stages": {"add": {"key": "k", "metrics": {"score": 1.5}}}, "timings": {"total_s": 1}, "versions": {}}
    raw = bytearray(json.dumps(good).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        op = data.draw(st.sampled_from(["cut", "flip", "insert", "truncate"]))
        if op == "cut" and raw:
            del raw[at]
        elif op == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:]
    (folder / "result.json").write_bytes(bytes(raw))
    record, problem = read_record(folder / "result.json")
    if record is not None:
        problem = result_problem(record, folder.name)
    done, why = Store(folder.parent).result_status(folder.name)
    assert done == (not problem) and (done or why.endswith(problem))
    found, skipped = Store(folder.parent).scan()
    assert len(found) + len(skipped) == 1
