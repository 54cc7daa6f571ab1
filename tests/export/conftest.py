"""A tiny compressed BERT artifact (with its tokenizer) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from _export_helpers import make_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("export") / "artifact")
