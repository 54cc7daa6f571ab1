"""The QAT protocol (STE -> regularize) run through `fewbits qat`, the sweep's ste/regularize stages and
benchmarks/qat_mnist1d.py with the same settings and seed writes the same records."""

from __future__ import annotations

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
from fewbits.loading import load_any
from fewbits.methods.qat import QATConfig, RegularizerConfig
from fewbits.protocols.qat import QATPhaseRecord
from fewbits.train import TrainConfig

TIMINGS = {"seconds", "train_examples_per_s"}  # the only fields allowed to differ: wall-clock measurements
TRAIN = {"epochs": 1, "max_steps": 3, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
         "max_grad_norm": 1.0, "max_length": 128}
REGULARIZER = RegularizerConfig(method="fisher", lam=10.0, fisher_normalize=True)


def _sweep(tmp_path: Path) -> tuple[dict, Path, Path]:
    """The sweep: finetune (0 epochs: the seeded cnn1d as is), ste at W2/A2, regularize; its run record and folders."""
    data = {"pipeline": ["finetune", "ste", "regularize"],
            "defaults": {"model": "cnn1d", "task": "mnist1d", "seed": 1, "finetune": {"epochs": 0},
                         "ste": {**TRAIN, "wbits": 2, "abits": 2},
                         "regularize": {**TRAIN, "method": "fisher", "lam": 10.0, "fisher_normalize": True}}}
    store = Store(tmp_path / "res")
    assert not sweep(parse_recipe(data, STAGES, name="same"), tmp_path / "res")["failed"]
    (run,) = store.results()
    return run, store.stage_dir("finetune", run["stages"]["finetune"]["key"]) / "model", \
        store.stage_dir("ste", run["stages"]["ste"]["key"])


def test_cli_sweep_and_benchmark_write_the_same_qat_records(tmp_path: Path) -> None:
    run, fp32_dir, _ = _sweep(tmp_path)

    out = tmp_path / "cli"
    argv = ["qat", "--model", str(fp32_dir), "--task", "mnist1d", "--out", str(out), "--wbits", "2", "--abits", "2",
            "--method", "fisher", "--lam", "10", "--fisher-normalize", "--ste-epochs", "1", "--epochs", "1",
            "--max-steps", "3", "--batch-size", "32", "--lr", "1e-3", "--seed", "1", "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())

    bench = import_benchmark("qat_mnist1d")
    task = load_task("mnist1d")
    fp32 = load_any(str(fp32_dir), task, new_head=False)[0]
    train = {k: v for k, v in TRAIN.items() if k != "max_steps"}

    def config(directory: Path) -> TrainConfig:
        return TrainConfig(**train, max_steps=3, seed=1, out_dir=directory, progress=False)

    ste = bench.ste_phase(task, fp32, config(tmp_path / "bench" / "ste"), QATConfig(2, 2))
    second = bench.second_phase(task, fp32, config(tmp_path / "bench" / "fisher"), tmp_path / "bench" / "ste",
                                REGULARIZER, export=True)

    schema = {f.name for f in dataclasses.fields(QATPhaseRecord)}
    assert_same_record(schema, TIMINGS, cli=summary["ste_phase"], sweep=run["stages"]["ste"], benchmark=ste)
    assert_same_record(schema, TIMINGS, cli=summary["second_phase"], sweep=run["stages"]["regularize"],
                       benchmark=second)
    assert summary["second_phase"]["steps"] == 3 and summary["second_phase"]["sizes"]["artifact_bytes"] > 0
    assert summary["ste_phase"]["phase"] == "ste" and summary["second_phase"]["regularizer"]["lam"] == 10.0
