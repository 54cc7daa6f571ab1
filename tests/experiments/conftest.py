"""Fixtures of the experiments tests: toy recipes written to disk, a journal of stage executions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # toy_stages, importable by tests and by the kill-test subprocess

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


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A journal file every toy stage execution appends to (via TOY_JOURNAL)."""
    path = tmp_path / "journal.txt"
    monkeypatch.setenv("TOY_JOURNAL", str(path))
    return path


def write_recipe(directory: Path, text: str, name: str = "toy.toml") -> Path:
    """Write a recipe file and return its path."""
    path = directory / name
    path.write_text(text)
    return path


def journal_lines(path: Path) -> list[list[str]]:
    """The journal's lines, split into (kind, id, pid)."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test process: the tiny models here gain nothing from more, and on a shared
    2-core machine (tests run two workers) oversubscribed threads make them ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
