"""The mask protocol (base -> mask) run through `fewbits mask`, the sweep's base/mask stages and
benchmarks/mask_vader.py with the same settings and seed writes the same record."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from record_helpers import assert_same_record, import_benchmark

from fewbits import cli
from fewbits.data import load_task
from fewbits.experiments.recipe import parse_recipe
from fewbits.experiments.stages import STAGES
from fewbits.experiments.store import Store
from fewbits.experiments.sweep import sweep
from fewbits.protocols.mask import MaskRecord

TIMINGS = {"seconds", "train_examples_per_s"}  # the only fields allowed to differ: wall-clock measurements
SEED, STEPS, BATCH, LENGTH, HEAD_LR, SCORE_LR = 1, 3, 16, 8, 1e-3, 1e-2


def test_cli_sweep_and_benchmark_write_the_same_mask_record(tmp_path: Path) -> None:
    data = {"pipeline": ["base", "mask"],
            "defaults": {"model": "tiny-bert", "task": "vader", "seed": SEED, "base": {"bits": 2},
                         "mask": {"epochs": 1, "max_steps": STEPS, "batch_size": BATCH, "max_length": LENGTH,
                                  "lr": HEAD_LR, "score_lr": SCORE_LR}}}
    store = Store(tmp_path / "res")
    assert not sweep(parse_recipe(data, STAGES, name="same"), tmp_path / "res")["failed"]
    (run,) = store.results()
    base = store.stage_dir("base", run["stages"]["base"]["key"]) / "base"

    record_file = tmp_path / "cli.json"
    argv = ["mask", "--base", str(base), "--task", "vader", "--out", str(tmp_path / "cli"), "--seed", str(SEED),
            "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--max-length", str(LENGTH), "--lr", str(HEAD_LR),
            "--score-lr", str(SCORE_LR), "--record", str(record_file), "--no-progress"]
    assert cli.main(argv) == 0

    bench = import_benchmark("mask_vader")
    args = argparse.Namespace(epochs=1, batch_size=BATCH, max_length=LENGTH, max_steps=STEPS, head_lr=HEAD_LR,
                              score_lr=SCORE_LR, margin=1e-2)
    benchmark = bench.mask_run(str(base), load_task("vader"), SEED, args, tmp_path / "bench")

    cli_record = json.loads(record_file.read_text())
    schema = {f.name for f in dataclasses.fields(MaskRecord)}
    assert_same_record(schema, TIMINGS, cli=cli_record, sweep=run["stages"]["mask"], benchmark=benchmark)
    assert cli_record["steps"] == STEPS and len(cli_record["kept"]) == 2
    assert 0 < cli_record["sizes"]["mask_bytes"] < cli_record["sizes"]["artifact_bytes"]
