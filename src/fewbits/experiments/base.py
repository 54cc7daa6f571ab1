"""What a pipeline stage is: a class that declares its settings and turns a context into a record.

A stage declares
- ``uses``: the shared settings it reads (``model``, ``task``, ``seed``, ...) with their defaults
  (``None``: the recipe must set it);
- ``defaults``: its own parameters (the recipe's ``[defaults.<kind>]`` table and ``<kind>.x`` axes);
- ``version``: bumped when its code changes its numbers, so old results are not reused;
- ``saved``: whether its output is kept on disk and shared by every run with the same key.

A stage's key hashes its kind, version, the shared settings it uses, its parameters and the key of the
stage before it, so two runs share a saved stage exactly when everything that determines it is equal
(the one FP32 fine-tune of P1 reused by every scheme and bit width, the one STE checkpoint of P2 reused
by every regularizer). ``run(ctx)`` returns a JSON-able record: ``metrics`` (the task's metrics),
``sizes`` (bytes), anything else worth keeping.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fewbits.experiments.recipe import config_hash, expand_env


@dataclass
class StageOutput:
    """A finished stage of the current run: its record, and its folder when it is a saved stage."""

    kind: str
    key: str
    info: dict[str, Any]
    dir: Path | None = None
    seconds: float = 0.0
    cached: bool = False


@dataclass
class StageContext:
    """Everything a stage sees.

    ``params``: this stage's parameters; ``config``: the run's whole configuration; ``env``: settings
    that do not change the numbers (data_dir, progress, ...); ``out_dir``: the stage's own folder (for a
    saved stage, the shared folder being built; it keeps its files across restarts so training can
    resume); ``outputs``: earlier stages of this run by kind; ``state``: objects the previous stage
    handed on in memory (empty when that stage came from the cache: load from its folder then);
    ``cache``: objects shared by every run of this sweep process (loaded tasks); ``is_main``: whether
    this process writes files (one process of a multi-GPU launch does).
    """

    run_id: str
    config: dict[str, Any]
    params: dict[str, Any]
    env: dict[str, Any]
    out_dir: Path
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True  # False on the other processes of a torchrun/accelerate launch: they write no files

    @property
    def data_dir(self) -> str | None:
        """The environment's data folder with ``${VAR}`` and ``~`` expanded (None: the task's default)."""
        value = expand_env(self.env.get("data_dir"))
        return value or None

    def cached(self, key: Any, build: Any) -> Any:
        """``build()`` once per sweep process for each ``key`` (e.g. a loaded task), then the same object."""
        k = config_hash(key)
        if k not in self.cache:
            self.cache[k] = build()
        return self.cache[k]


class Stage(ABC):
    """Base class of pipeline stages; subclasses set the class attributes and implement :meth:`run`."""

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    uses: ClassVar[Mapping[str, Any]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}
    numbers: ClassVar[frozenset[str]] = frozenset()  # parameters taking an int or a float, each kept as given
    saved: ClassVar[bool] = False

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        """Validate this stage's resolved parameters (raise FewbitsValueError); called when a recipe is read."""

    @classmethod
    def key(cls, config: Mapping[str, Any], parent: str | None) -> str:
        """Hash of everything that determines this stage's output in ``config``, chained to its parent's key."""
        return config_hash({"kind": cls.kind, "version": cls.version, "parent": parent,
                            "uses": {k: config[k] for k in cls.uses}, "params": config[cls.kind]})

    @abstractmethod
    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the stage's work; return its JSON-able record."""


def stage_keys(stages: Mapping[str, type[Stage]], config: Mapping[str, Any]) -> list[str]:
    """The key of every stage of ``config["pipeline"]``, each chained to the one before."""
    keys: list[str] = []
    for kind in config["pipeline"]:
        keys.append(stages[kind].key(config, keys[-1] if keys else None))
    return keys
