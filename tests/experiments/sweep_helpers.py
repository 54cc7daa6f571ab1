"""Helpers of the experiments tests: a toy recipe, writing it to disk, reading the stage journal.

A module of its own (not conftest) so that ``from sweep_helpers import ...`` cannot pick up another
folder's conftest when pytest is given several test folders."""

from __future__ import annotations

from pathlib import Path

TOY_RECIPE = """
pipeline = ["base", "add"]
[defaults]
x = 1
[defaults.add]
sleep = {sleep}
[grid]
seed = [0, 1]
"add.delta" = [1, 2, 3]
"""


def write_recipe(directory: Path, text: str, name: str = "toy.toml") -> Path:
    """Write a recipe file and return its path."""
    path = directory / name
    path.write_text(text)
    return path


def journal_lines(path: Path) -> list[list[str]]:
    """The journal's lines, split into (kind, id, pid)."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
