"""Fixtures of the experiments tests: toy recipes written to disk, a journal of stage executions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # toy_stages, sweep_helpers, importable by tests and by the kill-test subprocess

@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A journal file every toy stage execution appends to (via TOY_JOURNAL)."""
    path = tmp_path / "journal.txt"
    monkeypatch.setenv("TOY_JOURNAL", str(path))
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test process: the tiny models here gain nothing from more, and on a shared
    2-core machine (tests run two workers) oversubscribed threads make them ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
