"""The codebook protocol (fine-tune -> quantize -> centroid fine-tune) run through `fewbits quantize`, the sweep's
finetune/quantize/finetune_quantized stages and a cell of `fewbits demo` with the same settings and seed writes
the same record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from record_helpers import assert_same_record

from fewbits import cli
from fewbits.commands.demo import run_cell
from fewbits.data import load_task
from fewbits.experiments.recipe import parse_recipe
from fewbits.experiments.stages import STAGES
from fewbits.experiments.store import Store
from fewbits.experiments.sweep import sweep
from fewbits.protocols.codebook import FP32Model, QuantizeFinetuneConfig, QuantizeFinetuneResult, load_fp32

TIMINGS = {"seconds", "train_examples_per_s"}  # the only fields allowed to differ: wall-clock measurements
SEED, STEPS, BATCH, LENGTH, LR = 1, 3, 16, 8, 1e-4


def test_cli_sweep_and_demo_write_the_same_codebook_record(tmp_path: Path) -> None:
    train = {"epochs": 1, "max_steps": STEPS, "batch_size": BATCH, "max_length": LENGTH, "lr": LR}
    data = {"pipeline": ["finetune", "quantize", "finetune_quantized"],
            "env": {"eval_batch_size": 256},
            "defaults": {"model": "tiny-bert", "task": "vader", "seed": SEED, "finetune": train,
                         "quantize": {"scheme": "kmeans", "bits": 2}, "finetune_quantized": train}}
    store = Store(tmp_path / "res")
    assert not sweep(parse_recipe(data, STAGES, name="same"), tmp_path / "res")["failed"]
    (run,) = store.results()
    fp32_dir = store.stage_dir("finetune", run["stages"]["finetune"]["key"]) / "model"

    out = tmp_path / "cli"
    argv = ["quantize", "--model", str(fp32_dir), "--task", "vader", "--scheme", "kmeans", "--bits", "2",
            "--finetune-epochs", "1", "--finetune-max-steps", str(STEPS), "--batch-size", str(BATCH),
            "--max-length", str(LENGTH), "--lr", str(LR), "--seed", str(SEED), "--threads", "1", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    cli_record = json.loads((out / "result.json").read_text())

    task = load_task("vader")
    model, tokenizer = load_fp32(fp32_dir, task)
    fp32 = FP32Model(model, tokenizer, fp32_dir, "sweep", {}, reused=True)
    config = QuantizeFinetuneConfig("kmeans", 2, seed=SEED, epochs=1, max_steps=STEPS, batch_size=BATCH, lr=LR,
                                    max_length=LENGTH)
    demo = run_cell(fp32, task, config, tmp_path / "demo").to_dict()

    schema = {f.name for f in dataclasses.fields(QuantizeFinetuneResult)}
    assert_same_record(schema, TIMINGS, cli=cli_record, sweep=run["stages"]["finetune_quantized"], demo=demo)
    assert cli_record["steps"] == STEPS and cli_record["config"]["max_grad_norm"] == 1.0
    assert cli_record["sizes"]["ratio_to_fp32"] > 1 and 0 < cli_record["relative_error"] < 1
    quantize = run["stages"]["quantize"]  # step 1's record: the start of the same record
    assert {k: quantize[k] for k in ("layers", "squared_error", "relative_error")} == \
        {k: cli_record[k] for k in ("layers", "squared_error", "relative_error")}
    assert quantize["metrics"] == cli_record["before"]


def test_a_record_written_before_the_one_schema_is_read() -> None:
    old = {"config": {"scheme": "linear", "bits": 2}, "main_metric": "accuracy", "before": {"accuracy": 0.5},
           "after": {"accuracy": 0.75}, "steps": 4, "layers": 3, "compressed_weights": 96, "relative_error": 0.25,
           "artifact": {"path": "out/linear-2bit", "bytes": 512, "ratio": 4.0, "fp32_bytes": 2048},
           "seconds": {"quantize": 1.0}}
    result = QuantizeFinetuneResult.from_dict(old)
    assert result.metrics == {"accuracy": 0.75} and result.score_after == 0.75 and result.score_before == 0.5
    assert result.sizes == {"artifact_bytes": 512, "ratio_to_fp32": 4.0, "fp32_bytes": 2048}
    assert result.split is None and result.squared_error is None and result.other_split_metrics == {}
