"""Helpers of the protocol tests: the benchmark scripts imported as modules, records compared field by field."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (its driver functions are called by the tests)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_record(schema: set[str], excluded: set[str], **records: dict[str, Any]) -> None:
    """Every caller's record holds every field of ``schema``, and all agree on each field outside ``excluded``."""
    for caller, record in records.items():
        assert schema <= set(record), f"{caller} lacks {sorted(schema - set(record))}"
    (first, reference), *others = records.items()
    for field in sorted(schema - excluded):
        for caller, record in others:
            assert record[field] == reference[field], f"{field}: {caller} {record[field]!r} != {first} {reference[field]!r}"
