"""Recipes: parsing, grid expansion, run ids, validation, overrides, and the shipped recipes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sweep_helpers import TOY_RECIPE, write_recipe
from toy_stages import TOY_STAGES

from fewbits.errors import FewbitsValueError
from fewbits._util.fs import canonical_json
from fewbits.experiments.recipe import config_hash, expand_env, load_recipe, parse_recipe, parse_value

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml"))


def parse(text: str, overrides: dict | None = None):
    import tomllib

    return parse_recipe(tomllib.loads(text), TOY_STAGES, overrides=overrides)


def test_grid_is_the_product_of_its_axes_with_defaults_filled() -> None:
    recipe = parse(TOY_RECIPE.format(sleep=0))
    assert len(recipe.runs) == 6
    assert {(r.config["seed"], r.config["add"]["delta"]) for r in recipe.runs} == {
        (s, d) for s in (0, 1) for d in (1.0, 2.0, 3.0)}
    first = recipe.runs[0].config
    assert first == {"pipeline": ["base", "add"], "x": 1, "seed": 0, "base": {"sleep": 0.0},
                     "add": {"delta": 1.0, "sleep": 0.0, "fail": False}}
    assert len({r.run_id for r in recipe.runs}) == 6


def test_run_id_hashes_the_canonical_config_and_stage_versions() -> None:
    run = parse(TOY_RECIPE.format(sleep=0)).runs[0]
    assert run.run_id == config_hash({"config": run.config, "versions": run.versions})
    assert canonical_json({"b": 1, "a": [1.0]}) == '{"a":[1.0],"b":1}'
    # an int written where the parameter is a float resolves to the same run
    as_float = parse(TOY_RECIPE.format(sleep=0).replace('"add.delta" = [1, 2, 3]', '"add.delta" = [1.0, 2.0, 3.0]'))
    assert [r.run_id for r in as_float.runs] == [r.run_id for r in parse(TOY_RECIPE.format(sleep=0)).runs]
    # a changed setting is a new run
    assert parse(TOY_RECIPE.format(sleep=0.5)).runs[0].run_id != run.run_id


def test_joint_axes_and_several_grids_are_unioned_without_duplicates() -> None:
    text = """
pipeline = ["base", "add"]
[[grid]]
pair = [{ x = 1, "add.delta" = 5 }, { x = 2, add = { delta = 6 } }]
seed = [0, 1]
[[grid]]
x = [1]
"add.delta" = [5, 7]
"""
    runs = parse(text).runs
    got = sorted((r.config["x"], r.config["add"]["delta"], r.config["seed"]) for r in runs)
    # grid 2's (x=1, delta=5, seed=0) is grid 1's first point: one run
    assert got == [(1, 5.0, 0), (1, 5.0, 1), (1, 7.0, 0), (2, 6.0, 0), (2, 6.0, 1)]


@pytest.mark.parametrize("text, message", [
    ('pipeline = ["base", "add"]\n[defaults]\nx = 1\n[grid]\n"add.delat" = [1]', "no parameter 'delat'"),
    ('pipeline = ["base", "add"]\n[defaults]\nx = 1\n[grid]\nsede = [1]', "no stage reads 'sede'"),
    ('pipeline = ["base", "add"]\n[grid]\nseed = [1]', "set 'x'"),
    ('pipeline = ["base", "add"]\n[defaults]\nx = 1\n[grid]\n"add.delta" = ["a"]', "'add.delta'"),
    ('pipeline = ["base", "add"]\n[defaults]\nx = 1\n[grid]\n"add.delta" = [-1]', "'add.delta'"),
    ('pipeline = ["base", "nope"]\n[defaults]\nx = 1', "unknown stage 'nope'"),
    ('pipeline = ["add"]\n[grid]\nx = [1]', "not read by any stage of the pipeline"),
    ('pipeline = ["base"]\nx = 1', "unknown top-level key"),
    ('pipeline = ["base"]\npaper = "P9"\n[defaults]\nx = 1', "'paper'"),
    ('pipeline = ["base"]\n[defaults]\nx = 1\n[grid]\nseed = []', "non-empty list"),
    ('pipeline = ["base"]\n[env]\ndatadir = "x"\n[defaults]\nx = 1', "'env'"),
])
def test_mistakes_are_errors_that_name_the_setting(text: str, message: str) -> None:
    with pytest.raises(FewbitsValueError, match=message):
        parse(text)


def test_set_overrides_every_run_and_routes_environment_keys() -> None:
    recipe = parse(TOY_RECIPE.format(sleep=0), {"add.delta": 9, "data_dir": "/data", "x": 3})
    assert len(recipe.runs) == 2  # the delta axis collapsed onto the override; seeds remain
    assert {r.config["add"]["delta"] for r in recipe.runs} == {9.0}
    assert {r.config["x"] for r in recipe.runs} == {3}
    assert recipe.env["data_dir"] == "/data"
    assert all("add.delta" not in r.point for r in recipe.runs)
    with pytest.raises(FewbitsValueError, match="no parameter"):
        parse(TOY_RECIPE.format(sleep=0), {"add.nope": 1})


def test_environment_stays_out_of_run_ids() -> None:
    plain = parse(TOY_RECIPE.format(sleep=0))
    moved = parse(TOY_RECIPE.format(sleep=0), {"data_dir": "/elsewhere", "progress": True})
    assert [r.run_id for r in plain.runs] == [r.run_id for r in moved.runs]


def test_values_and_environment_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("~/glue") == "~/glue"
    monkeypatch.setenv("FEWBITS_TEST_DIR", "/x/y")
    assert expand_env("${FEWBITS_TEST_DIR}/glue") == "/x/y/glue"
    monkeypatch.delenv("FEWBITS_TEST_DIR")
    with pytest.raises(FewbitsValueError, match="unset environment variable"):
        expand_env("${FEWBITS_TEST_DIR}/glue")


def test_load_recipe_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FewbitsValueError, match="existing TOML file"):
        load_recipe(tmp_path / "missing.toml", TOY_STAGES)
    bad = write_recipe(tmp_path, "pipeline = [", "bad.toml")
    with pytest.raises(FewbitsValueError, match="not valid TOML"):
        load_recipe(bad, TOY_STAGES)
    good = write_recipe(tmp_path, TOY_RECIPE.format(sleep=0))
    assert load_recipe(good, TOY_STAGES).name == "toy"


def test_the_recipes_are_shipped() -> None:
    names = {p.stem for p in RECIPES}
    assert names == {f"p{i}-{form}" for i in (1, 2, 3) for form in ("offline", "full")} | {
        "p1-sentences", "p1-sentences-iterations", "p3-sentences", "p2-fashion"}
    runs = {p.stem: len(load_recipe(p).runs) for p in RECIPES if p.stem.endswith(("sentences", "iterations", "fashion"))}
    assert runs == {"p1-sentences": 144, "p1-sentences-iterations": 24, "p3-sentences": 132, "p2-fashion": 63}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_parse_and_dry_run(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from fewbits.commands import sweep as command

    monkeypatch.delenv("GLUE_DIR", raising=False)  # a dry run needs no data
    recipe = load_recipe(path)
    assert recipe.paper == path.stem[:2].upper()
    assert len({r.run_id for r in recipe.runs}) == len(recipe.runs) > 0
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([str(path), "--out", str(tmp_path / "res"), "--dry-run"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("pending") for line in out) == len(recipe.runs)
    assert f"{len(recipe.runs)} runs" in out[-1]
    assert not (tmp_path / "res").exists()  # a dry run writes nothing
