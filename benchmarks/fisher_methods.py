"""Per-example gradients for the empirical Fisher: one backward pass per example vs torch.func's vmap(grad).

Run: ``python benchmarks/fisher_methods.py [--examples 64] [--repeats 5]``. Both methods of
``fewbits.analysis.importance.fisher_diagonal`` on the same batches, alternating, one torch thread;
medians and the ratio go to BENCHMARKS.md (section ``fisher-methods``). Models: the built-in cnn1d on
mnist1d (vmap traces it) and tiny-bert on vader (vmap cannot: transformers' attention-mask code
branches on the data, so only the loop is timed there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fewbits.analysis.importance import fisher_diagonal  # noqa: E402
from fewbits.data import load_task  # noqa: E402
from fewbits.models import load_model  # noqa: E402
from fewbits.protocols.sensitivity import training_batches  # noqa: E402


def _time(model, batches, method: str, chunk: int) -> float:
    started = time.perf_counter()
    fisher_diagonal(model, batches, method=method, chunk=chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for model_name, task_name, methods in (("cnn1d", "mnist1d", ("loop", "vmap")), ("tiny-bert", "vader", ("loop",))):
        task = load_task(task_name)
        model, tokenizer = load_model(model_name, task)
        batches = training_batches(task, tokenizer, args.examples // 16, 16, 16, seed=0)
        times = {m: [] for m in methods}
        for _ in range(args.repeats):
            for m in methods:
                times[m].append(_time(model, batches, m, args.chunk))
        med = {m: statistics.median(v) for m, v in times.items()}
        ratio = f"{med['loop'] / med['vmap']:.2f}x" if "vmap" in med else "- (vmap cannot trace it)"
        rows.append(f"| {model_name} / {task_name} | {args.examples} | {1000 * med['loop'] / args.examples:.2f} | "
                    + (f"{1000 * med['vmap'] / args.examples:.2f}" if "vmap" in med else "-") + f" | {ratio} |")
        print(rows[-1], flush=True)
    section = "\n".join([
        "## Empirical Fisher: per-example gradients by loop vs vmap", "",
        f"`benchmarks/fisher_methods.py`: {args.examples} training examples, median of {args.repeats} alternating "
        f"repeats, vmap chunks of {args.chunk}. {machine_line()}.", "",
        "| model / task | examples | loop ms/example | vmap ms/example | loop / vmap |", "|---|---|---|---|---|",
        *rows])
    write_section("fisher-methods", section)
    print(section)


if __name__ == "__main__":
    main()
