"""Recipes: a TOML file naming a pipeline of stages and a grid of settings, expanded into runs.

A recipe says *what* to run; :mod:`fewbits.experiments.sweep` runs it. Layout::

    name = "p1-offline"                  # optional (default: the file's stem)
    paper = "P1"                         # the paper whose tables the report fills: P1, P2, P3 (or omitted)
    description = "one line"
    pipeline = ["finetune", "quantize", "finetune_quantized"]   # stage kinds, run in order

    [env]                                # settings that do not change the numbers: not in run ids
    data_dir = "${GLUE_DIR}"             # ${VAR} and ~ are expanded when a stage reads it

    [defaults]                           # every run starts from these
    model = "minilm"
    task = "vader"
    [defaults.finetune]                  # one table per stage kind: its parameters
    epochs = 2

    [grid]                               # the product of the axes; or several [[grid]] tables (their union)
    seed = [0, 1, 2]
    "quantize.scheme" = ["linear", "kmeans"]
    aw = [{ "ste.abits" = 32, "ste.wbits" = 2 }, { "ste.abits" = 4, "ste.wbits" = 1 }]  # joint values

An axis is a setting's path (``seed``, ``quantize.bits``) and its list of values; an axis whose values are
tables sets several paths at once (its name is then only a label). A ``[[grid]]`` table may hold
``pipeline = [...]`` to run other stages for its points. Every path is checked against the stages'
declared parameters, so a typo is an error, not a silently ignored setting; stage defaults fill in the
rest, and the resolved configuration (plus the stages' versions) is hashed into the run id.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewbits._util.fs import config_hash
from fewbits.errors import FewbitsValueError, bad_param

# Settings that change how a run executes but never its numbers; they are kept out of run ids.
ENV_DEFAULTS: dict[str, Any] = {
    "data_dir": None,  # folder with the tasks' files (GLUE, CIFAR); None: the task's own default
    "progress": False,  # tqdm bars of the training loops (the sweep shows its own bar)
    "num_workers": 0,  # DataLoader worker processes
    "eval_batch_size": 128,  # examples per evaluation forward pass
    "keep_artifacts": False,  # keep each run's compressed artifact (else only its measured size is kept)
}

RECIPE_KEYS = ("name", "paper", "description", "pipeline", "env", "defaults", "grid")
PAPERS = ("P1", "P2", "P3")


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}`` (TOML's dotted and quoted keys alike)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``"x"``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@dataclass(frozen=True)
class Run:
    """One resolved grid point: the configuration that determines its numbers, and its id.

    ``config`` holds ``pipeline`` (stage kinds), the shared settings the stages use (``model``,
    ``task``, ``seed``, ...) and one table of parameters per stage kind. ``versions`` are the stages'
    implementation versions; ``run_id`` hashes both. ``point`` is the grid point that produced it
    (dotted paths), for listings.
    """

    run_id: str
    config: dict[str, Any]
    versions: dict[str, int]
    point: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The grid point in one line, e.g. ``quantize.bits=3 quantize.scheme=kmeans seed=0``."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.point.items())) or "(defaults)"


@dataclass
class Recipe:
    """A parsed recipe: its runs (deduplicated, in grid order), environment and provenance."""

    name: str
    paper: str | None
    description: str
    runs: list[Run]
    env: dict[str, Any]
    stages: Mapping[str, Any]  # the stage registry the recipe was checked against (what the sweep runs)
    path: Path | None = None

    def info(self) -> dict[str, Any]:
        """Plain data naming the recipe, stored in every result file."""
        return {"name": self.name, "paper": self.paper, "description": self.description,
                "file": str(self.path) if self.path else None}


def _stage_table(stages: Mapping[str, Any], kind: str, where: str) -> Any:
    if kind not in stages:
        raise FewbitsValueError(f"{where}: unknown stage {kind!r}; known stages: {', '.join(sorted(stages))}.")
    return stages[kind]


def _coerce(path: str, value: Any, default: Any, where: str, number: bool = False) -> Any:
    """Check ``value`` against the type of the stage's ``default`` (an int where a float is expected is fine).

    ``number``: the stage takes an int or a float there, each kept as given (e.g. ``quantize.bits``).
    """
    if default is None or value is None:
        return value
    if number and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        ok = ok and math.isfinite(value)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise bad_param(path, f"a {type(default).__name__} (as its default {default!r})", value, where)
    return value


def _check_known(stages: Mapping[str, Any], path: str, where: str) -> None:
    """Raise unless some stage of the registry reads ``path`` (``kind.param`` or a shared setting)."""
    head, _, tail = path.partition(".")
    if tail:
        stage = _stage_table(stages, head, where)
        if tail not in stage.defaults:
            raise FewbitsValueError(f"{where}: stage {head!r} has no parameter {tail!r}; its parameters: "
                                    f"{', '.join(sorted(stage.defaults))}.")
    elif not any(path in stage.uses for stage in stages.values()):
        shared = sorted({k for stage in stages.values() for k in stage.uses})
        raise FewbitsValueError(f"{where}: no stage reads {path!r}; shared settings: {', '.join(shared)}; stage "
                                f"parameters are written 'stage.parameter'.")


def resolve(stages: Mapping[str, Any], pipeline: list[str], settings: Mapping[str, Any], where: str,
            defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full configuration of one run: the stages' defaults, then ``defaults``, then ``settings`` (dotted paths).

    ``settings`` (a grid point) must only name what the pipeline reads; ``defaults`` (the recipe's
    [defaults] and --set, shared by grids with other pipelines) may name any stage's settings, and apply
    where the pipeline reads them. Raises FewbitsValueError for an unknown path, a path of ``settings``
    the pipeline does not read, and a required shared setting left unset.
    """
    if not pipeline or not all(isinstance(k, str) for k in pipeline):
        raise bad_param("pipeline", "a non-empty list of stage names", pipeline, where)
    if len(set(pipeline)) != len(pipeline):
        raise bad_param("pipeline", "stage names without repeats", pipeline, where)
    shared: dict[str, Any] = {}
    config: dict[str, Any] = {"pipeline": list(pipeline)}
    for kind in pipeline:
        stage = _stage_table(stages, kind, where)
        for key, default in stage.uses.items():
            shared.setdefault(key, default)
        config[kind] = dict(stage.defaults)
    layers = [(dict(defaults or {}), False), (dict(settings), True)]
    for layer, strict in layers:
        for path, value in layer.items():
            _check_known(stages, path, where)
            head, _, tail = path.partition(".")
            if tail and head in pipeline:
                config[head][tail] = _coerce(path, value, stages[head].defaults[tail], where,
                                             tail in stages[head].numbers)
            elif not tail and path in shared:
                shared[path] = value
            elif strict:
                raise FewbitsValueError(f"{where}: {path!r} is not read by any stage of the pipeline {pipeline}; "
                                        f"remove it from this grid or add the stage.")
    missing = sorted(k for k, v in shared.items() if v is None)
    if missing:
        raise FewbitsValueError(f"{where}: set {', '.join(repr(m) for m in missing)} in [defaults] or the grid "
                                f"(the pipeline {pipeline} needs it).")
    config.update(shared)
    for kind in pipeline:
        stages[kind].check(config[kind], config)
    return config


def _axis_points(name: str, values: Any, where: str) -> list[dict[str, Any]]:
    """The settings each value of one axis stands for: ``{name: v}``, or a table's own paths."""
    if not isinstance(values, list) or not values:
        raise bad_param(f"grid.{name}", "a non-empty list of values", values, where)
    points = []
    for value in values:
        if isinstance(value, Mapping):
            if not value:
                raise bad_param(f"grid.{name}", "tables with at least one setting", value, where)
            points.append(flatten(value))
        else:
            points.append({name: value})
    return points


def expand(stages: Mapping[str, Any], pipeline: list[str], defaults: Mapping[str, Any],
           grids: Iterable[Mapping[str, Any]], overrides: Mapping[str, Any] | None = None,
           where: str = "recipe") -> list[Run]:
    """Every run of the grids (union of products), with ``overrides`` applied last; duplicates dropped.

    Order: grid by grid, axes varying last-fastest in the order written (what ``--dry-run`` lists).
    """
    runs: dict[str, Run] = {}
    base = flatten(defaults)
    overrides = dict(overrides or {})
    for g, grid in enumerate(grids):
        grid = dict(grid)
        grid_pipeline = grid.pop("pipeline", pipeline)
        axes = [_axis_points(name, values, where) for name, values in grid.items()]
        for combo in itertools.product(*axes):
            point: dict[str, Any] = {}
            for part in combo:
                point.update(part)
            label = f"{where} (grid {g + 1}, {' '.join(f'{k}={v}' for k, v in point.items()) or 'defaults'})"
            config = resolve(stages, list(grid_pipeline), {k: v for k, v in point.items() if k not in overrides},
                             label, {**base, **overrides})
            versions = {kind: int(stages[kind].version) for kind in config["pipeline"]}
            run_id = config_hash({"config": config, "versions": versions})
            shown = {k: v for k, v in point.items() if k not in overrides}
            runs.setdefault(run_id, Run(run_id, config, versions, shown))
    return list(runs.values())


def _grids(data: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
    grid = data.get("grid", {})
    if isinstance(grid, Mapping):
        return [grid]
    if isinstance(grid, list) and grid and all(isinstance(g, Mapping) for g in grid):
        return grid
    raise bad_param("grid", "a table of axes or a list of [[grid]] tables", grid, where)


def split_overrides(overrides: Mapping[str, Any] | None, env_keys: Iterable[str]) -> tuple[dict, dict]:
    """Split ``--set`` settings into (environment, configuration) by their key."""
    env_keys = set(env_keys)
    env, config = {}, {}
    for key, value in (overrides or {}).items():
        (env if key in env_keys or key.startswith("env.") else config)[key.removeprefix("env.")] = value
    return env, config


def parse_recipe(data: Mapping[str, Any], stages: Mapping[str, Any], *, name: str = "recipe",
                 overrides: Mapping[str, Any] | None = None, path: Path | None = None) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML (``overrides``: ``--set`` settings, dotted paths)."""
    where = str(path) if path else name
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise FewbitsValueError(f"{where}: unknown top-level key(s) {unknown}; a recipe holds "
                                f"{', '.join(RECIPE_KEYS)}.")
    paper = data.get("paper")
    if paper is not None and paper not in PAPERS:
        raise bad_param("paper", f"one of {list(PAPERS)} (or left out)", paper, where)
    env_table = data.get("env", {})
    if not isinstance(env_table, Mapping) or set(env_table) - set(ENV_DEFAULTS):
        raise bad_param("env", f"a table with keys among {sorted(ENV_DEFAULTS)}", env_table, where)
    env_set, config_set = split_overrides(overrides, ENV_DEFAULTS)
    unknown_env = sorted(set(env_set) - set(ENV_DEFAULTS))
    if unknown_env:
        raise bad_param("env", f"keys among {sorted(ENV_DEFAULTS)}", unknown_env, where)
    env = {**ENV_DEFAULTS, **env_table, **env_set}
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise bad_param("defaults", "a table", defaults, where)
    pipeline = data.get("pipeline")
    if pipeline is None and not all("pipeline" in g for g in _grids(data, where)):
        raise bad_param("pipeline", "a list of stage names (at the top or in every [[grid]])", None, where)
    runs = expand(stages, pipeline, defaults, _grids(data, where), config_set, where)
    return Recipe(str(data.get("name", name)), paper, str(data.get("description", "")), runs, env, stages, path)


def load_recipe(path: str | os.PathLike, stages: Mapping[str, Any] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read and expand the recipe file at ``path`` (``stages``: the stage registry, default the real one).

    Example: ``recipe = load_recipe("recipes/p1-offline.toml"); len(recipe.runs)``.
    """
    if stages is None:
        from fewbits.experiments.stages import STAGES

        stages = STAGES
    path = Path(path)
    if not path.is_file():
        raise bad_param("recipe", "an existing TOML file (see recipes/*.toml)", str(path), "fewbits sweep")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FewbitsValueError(f"{path} is not valid TOML: {exc}") from exc
    return parse_recipe(data, stages, name=path.stem, overrides=overrides, path=path)


def expand_env(value: Any) -> Any:
    """``${VAR}`` and ``~`` expanded in a string setting; an unset variable is an error naming it."""
    if not isinstance(value, str):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise FewbitsValueError(f"The setting {value!r} names an unset environment variable; export it or pass "
                                f"--set data_dir=PATH.")
    return expanded
