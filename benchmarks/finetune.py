"""Fine-tuning baselines: MiniLM-L6 on VADER (dev accuracy, wall time, throughput) and the 1-D CNN on MNIST-1D.

Run: ``.venv/bin/python benchmarks/finetune.py`` (about 5-10 minutes on 2 shared cores). Writes the
"finetune" section of BENCHMARKS.md. Wall time covers loading the task and model, training, and the
evaluation after every epoch. The machine is shared with other jobs, so times are pessimistic: the
load average during each run is stated beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fewbits.data import load_task  # noqa: E402
from fewbits.models import load_model  # noqa: E402
from fewbits.train import TrainConfig, evaluate, train  # noqa: E402


def run(model_name: str, task_name: str, seed: int, **settings: object) -> dict[str, object]:
    """One fine-tuning run from scratch, timed end to end; returns its numbers."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    task = load_task(task_name)
    torch.manual_seed(seed)
    model, tokenizer = load_model(model_name, task)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(seed=seed, out_dir=out, progress=False, **settings)
        result = train(model, task, config, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    tick = time.perf_counter()  # a separate timing of one full evaluation pass
    evaluate(model, task, tokenizer=tokenizer, batch_size=config.eval_batch_size, max_length=config.max_length)
    eval_rate = len(task.splits[task.eval_split]) / (time.perf_counter() - tick)
    return {"metric": result.metrics[task.main_metric], "per_epoch": [h["metrics"][task.main_metric]
                                                                      for h in result.history],
            "seconds": seconds, "train_rate": result.train_examples_per_s, "eval_rate": eval_rate,
            "split": task.eval_split, "load": (load_before + os.getloadavg()[0]) / 2,
            "train_size": len(task.splits["train"]), "eval_size": len(task.splits[task.eval_split])}


def row(name: str, settings: dict[str, object], r: dict[str, object]) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in settings.items())
    epochs = " / ".join(f"{100 * a:.1f}" for a in r["per_epoch"])
    return (f"| {name} | {shown} | {r['split']} {100 * r['metric']:.2f}% ({epochs}) | {r['seconds']:.0f} s | "
            f"{r['train_rate']:.0f} | {r['eval_rate']:.0f} | {r['load']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on cores shared with other jobs, more threads spend their "
                             "time waiting for each other)")
    parser.add_argument("--cnn-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the MNIST-1D runs (none: skip them)")
    parser.add_argument("--minilm-epochs", type=int, default=2)
    parser.add_argument("--minilm-lr", type=float, default=1e-4)
    parser.add_argument("--minilm-batch-size", type=int, default=32)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not write BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    header = ("| model / task | settings | accuracy (after each epoch) | wall time | train ex/s | eval ex/s | "
              "load avg |\n|---|---|---|---|---|---|---|")
    rows, notes = [], []
    if not args.skip_minilm:
        settings = {"epochs": args.minilm_epochs, "batch_size": args.minilm_batch_size, "lr": args.minilm_lr,
                    "max_length": 16}
        r = run("minilm", "vader", 0, **settings)
        rows.append(row("MiniLM-L6 / vader", settings, r))
        notes.append(f"MiniLM-L6 on vader: {100 * r['metric']:.2f}% dev accuracy in {r['seconds']:.0f} s "
                     f"({r['train_size']} train, {r['eval_size']} dev examples; target >= 93% in < 300 s).")
        print(rows[-1], flush=True)
    cnn = {"epochs": 10, "batch_size": 64, "lr": 3e-3}
    accuracies = []
    for seed in args.cnn_seeds:
        r = run("cnn1d", "mnist1d", seed, **cnn)
        accuracies.append(r["metric"])
        rows.append(row(f"cnn1d / mnist1d (seed {seed})", cnn, r))
        print(rows[-1], flush=True)
    if accuracies:
        notes.append(f"cnn1d on MNIST-1D: median test accuracy {100 * statistics.median(accuracies):.2f}% over "
                     f"{len(accuracies)} seeds (min {100 * min(accuracies):.2f}%; target >= 90%).")

    text = "\n".join([
        "## Fine-tuning baselines (`benchmarks/finetune.py`)",
        "",
        f"Machine: {machine_line()}. The cores are shared "
        "with other jobs (load average per run in the last column; above 2 means each run got less than the "
        "whole machine), so times and throughputs are pessimistic.",
        "",
        "Wall time: loading task and model, training (AdamW, linear warm-up 10% then decay, gradient clip 1.0, "
        "weight decay 0.01) and evaluating after every epoch. Train ex/s: training examples per second "
        "(optimizer steps included, evaluation excluded); eval ex/s: one separate evaluation pass "
        "(batch 128). MNIST-1D has no dev split: accuracy is on its 1,000 test signals.",
        "",
        header,
        *rows,
        "",
        *[f"- {n}" for n in notes],
    ])
    print(text)
    if not args.dry_run:
        write_section("finetune", text)


if __name__ == "__main__":
    main()
