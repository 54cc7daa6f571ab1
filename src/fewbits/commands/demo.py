"""The main job on the offline default: P1 (linear vs k-means quantization) on MiniLM-L6 and VADER.

One FP32 fine-tune of all-MiniLM-L6-v2 on the VADER lexicon's word sentiment, then for every scheme
(linear, kmeans, optimal) and bit width (1, 2, 3, 4): quantize every embedding and fully connected
weight except the classifier, evaluate, fine-tune the codebooks briefly (P1: codes frozen, mean
centroid gradients, codebooks at 10x the base rate), evaluate again, save the compact artifact.
Prints the table (score before/after centroid fine-tuning, artifact size, ratio to FP32) and writes
into --out: results.md, results.json, p1.png (score vs bits), the artifacts (<scheme>-<bits>bit/,
inspect with `fewbits info`) and the FP32 model (fp32-<key>/). A rerun reuses every finished step
whose settings are unchanged (--fresh starts over). About 7 minutes on 2 quiet CPU cores.

--weights-only skips training and evaluation: it quantizes the pretrained model's weights and prints
each scheme's relative squared weight error per bit width and the time it took.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from fewbits.commands.preflight import check_out_dir
from fewbits.errors import bad_param

DEFAULT_SCHEMES = ("linear", "kmeans", "optimal")
DEFAULT_BITS = (1, 2, 3, 4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits demo`."""
    parser.add_argument("--out", default="demo-out", help="output directory (demo-out)")
    parser.add_argument("--model", default="minilm",
                        help="base model to fine-tune: minilm (all-MiniLM-L6-v2, offline; default), tiny-bert, ...")
    parser.add_argument("--task", default="vader", help="task (vader, offline; default)")
    parser.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES),
                        help="schemes to compare (linear kmeans optimal)")
    parser.add_argument("--bits", nargs="+", type=int, default=list(DEFAULT_BITS), help="bit widths (1 2 3 4)")
    parser.add_argument("--fp32-epochs", type=int, default=2, help="epochs of the FP32 fine-tune (2)")
    parser.add_argument("--finetune-steps", type=int, default=30,
                        help="centroid fine-tuning steps per quantized model (30; 0: none)")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="base learning rate of both fine-tunes (1e-4); codebooks train at 10x")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (32)")
    parser.add_argument("--max-length", type=int, default=16, help="tokens per input (16: VADER inputs are words)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head, data order, k-means++ (0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the cores the load average leaves idle, at least 1)")
    parser.add_argument("--fresh", action="store_true", help="recompute everything, ignoring finished steps in --out")
    parser.add_argument("--weights-only", action="store_true",
                        help="only quantize the pretrained weights; print relative weight errors and times")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _check(args: argparse.Namespace) -> None:
    from fewbits.quantize import SCHEMES

    for scheme in args.schemes:
        if scheme not in SCHEMES:
            raise bad_param("--schemes", f"names among {sorted(SCHEMES)}", scheme, "fewbits demo")
    for bits in args.bits:
        if not 1 <= bits <= 8:
            raise bad_param("--bits", "ints in [1, 8]", bits, "fewbits demo")
    for name in ("fp32_epochs", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise bad_param(f"--{name.replace('_', '-')}", "an int >= 1", getattr(args, name), "fewbits demo")
    if args.finetune_steps < 0:
        raise bad_param("--finetune-steps", "an int >= 0", args.finetune_steps, "fewbits demo")
    if not args.weights_only:
        check_out_dir(args.out, "demo", files=("results.md", "results.json"), folders=("cells",))


def _weights_only(args: argparse.Namespace) -> int:
    """Quantize the pretrained model with every scheme and bit width; print the relative weight error and time."""
    import copy

    from tqdm.auto import tqdm

    import fewbits
    from fewbits.models import load_model
    from fewbits.protocols.codebook import quantization_error
    from fewbits.train.threads import choose_threads

    choose_threads(args.threads)
    model, _ = load_model(args.model, num_labels=2)
    errors: dict[tuple[str, int], float] = {}
    seconds = dict.fromkeys(args.schemes, 0.0)
    cells = [(s, b) for s in args.schemes for b in args.bits]
    for scheme, bits in tqdm(cells, desc="quantizing", unit="model", file=sys.stderr, disable=args.no_progress):
        twin = copy.deepcopy(model)
        tick = time.perf_counter()
        reports = fewbits.compress(twin, scheme, bits, seed=args.seed)
        seconds[scheme] += time.perf_counter() - tick
        errors[scheme, bits] = quantization_error(reports)[1]
    n = sum(math.prod(r.shape) for r in reports)
    print(f"{args.model}: {len(reports)} weights, {n / 1e6:.2f}M values (every embedding and fully connected layer "
          "but the head)")
    print("relative squared error sum((w - w_hat)^2) / sum(w^2) (lower is better; optimal is the least possible)\n")
    header = f"{'scheme':<9}" + "".join(f"{f'{b}-bit':>11}" for b in args.bits) + f"{'time':>10}"
    print(header)
    print("-" * len(header))
    for scheme in args.schemes:
        print(f"{scheme:<9}" + "".join(f"{errors[scheme, b]:>11.4f}" for b in args.bits) + f"{seconds[scheme]:>9.1f}s")
    return 0


def _load_record(path: Path) -> dict[str, Any] | None:
    """A finished cell's record, or None when missing or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    """Fine-tune FP32 once, run P1 for every (scheme, bits), write and print the table and the plot."""
    _check(args)
    if args.weights_only:
        return _weights_only(args)
    import dataclasses

    from tqdm.auto import tqdm

    from fewbits.data import load_task
    from fewbits.protocols.common import prior_metrics
    from fewbits.analysis.plots import plot_scores
    from fewbits.protocols.codebook import (QuantizeFinetuneConfig, QuantizeFinetuneResult, config_key, finetune_fp32,
                                            fp32_settings)
    from fewbits.train.threads import choose_threads
    from fewbits.train import TrainConfig
    from fewbits._util.fs import write_text_atomic

    started = time.perf_counter()
    out, progress = Path(args.out), not args.no_progress
    threads = choose_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task)
    fp32_config = TrainConfig(epochs=args.fp32_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              max_length=args.max_length, eval_batch_size=256)
    fp32_dir = out / f"fp32-{config_key(fp32_settings(args.model, task, fp32_config))}"
    fp32 = finetune_fp32(args.model, task, fp32_config, fp32_dir, progress=progress, reuse=not args.fresh)
    metric = task.main_metric
    print(f"FP32 {args.model} on {task.name} ({'reused' if fp32.reused else 'fine-tuned'}, {fp32_dir}): "
          f"{metric} {fp32.metrics[metric]:.4f}; {threads} torch thread(s)", file=sys.stderr)

    steps_per_epoch = max(1, len(task.splits["train"]) // args.batch_size)
    epochs = -(-args.finetune_steps // steps_per_epoch)  # enough epochs for the steps; 0: no fine-tuning
    base = QuantizeFinetuneConfig(seed=args.seed, epochs=epochs, max_steps=args.finetune_steps or None, batch_size=args.batch_size,
                    lr=args.lr, max_length=args.max_length)
    results: list[QuantizeFinetuneResult] = []
    cells = [(s, b) for s in args.schemes for b in args.bits]
    bar = tqdm(cells, desc="P1 models", unit="model", file=sys.stderr, disable=not progress)
    for scheme, bits in bar:
        bar.set_postfix_str(f"{scheme} {bits}-bit")
        config = dataclasses.replace(base, scheme=scheme, bits=bits)
        results.append(run_cell(fp32, task, config, out, fresh=args.fresh, progress=progress))
    bar.close()

    prior = prior_metrics(task)[metric]
    summary = {"model": args.model, "task": task.name, "split": task.eval_split, "metric": metric,
               "fp32": fp32.metrics, "label_prior": prior,
               "settings": {"fp32_epochs": args.fp32_epochs, "finetune_steps": args.finetune_steps, "lr": args.lr,
                            "quantized_lr_scale": base.quantized_lr_scale, "batch_size": args.batch_size,
                            "max_length": args.max_length, "seed": args.seed, "threads": threads},
               "results": [r.to_dict() for r in results], "seconds": time.perf_counter() - started}
    markdown = results_markdown(summary)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown + "\n")
    plot = plot_scores(results, out / "p1.png", fp32_score=fp32.metrics[metric], prior_score=prior,
                       title=f"P1 on {args.model} / {task.name} ({args.finetune_steps} centroid fine-tuning steps)")
    print(markdown)
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}, {plot}; "
          f"this run took {summary['seconds'] / 60:.1f} min")
    return 0


def run_cell(fp32: Any, task: Any, config: Any, out: Path, *, fresh: bool = False,
             progress: bool = False) -> Any:
    """One (scheme, bits) cell: the codebook protocol on a copy of the FP32 model, its artifact in
    ``out/<scheme>-<bits>bit`` and its record in ``out/cells/``; a finished cell with the same settings is reused."""
    import copy

    from fewbits._util.fs import write_text_atomic
    from fewbits.protocols.codebook import QuantizeFinetuneResult, config_key, quantize_finetune

    key = config_key({"fp32": fp32.key, "p1": config.to_dict()})
    name = f"{config.scheme}-{config.bits}bit"
    artifact_dir, record_path = out / name, out / "cells" / f"{name}.json"
    record = None if fresh else _load_record(record_path)
    if record is not None and record.get("key") == key and artifact_dir.is_dir():
        return QuantizeFinetuneResult.from_dict(record["result"])
    result = quantize_finetune(copy.deepcopy(fp32.model), task, config, tokenizer=fp32.tokenizer,
                               artifact_dir=artifact_dir, progress=progress)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record_path, json.dumps({"key": key, "result": result.to_dict()}, indent=2))
    return result


def _settings_line(settings: dict[str, Any]) -> str:
    """How the numbers were made, in one sentence."""
    return (f"FP32 fine-tune {settings['fp32_epochs']} epoch(s); every embedding and fully connected weight but the "
            f"classifier quantized; centroid fine-tuning {settings['finetune_steps']} steps (codes frozen, mean "
            f"gradients, codebooks at lr {settings['quantized_lr_scale'] * settings['lr']:g}, the rest at "
            f"{settings['lr']:g}); batch {settings['batch_size']}, max_length {settings['max_length']}, "
            f"seed {settings['seed']}.")


def results_markdown(summary: dict[str, Any]) -> str:
    """The demo's table (scheme x bits) and, per bit width, whether k-means beats linear, as Markdown."""
    from fewbits.protocols.codebook import QuantizeFinetuneResult

    results = [QuantizeFinetuneResult.from_dict(r) for r in summary["results"]]
    metric = summary["metric"]
    lines = [f"{summary['model']} on {summary['task']} ({summary['split']} {metric}, %): FP32 "
             f"{100 * summary['fp32'][metric]:.1f}; label prior (always the majority class) "
             f"{100 * summary['label_prior']:.1f}.", "",
             _settings_line(summary["settings"]), "",
             "| scheme | bits | quantized | + centroid fine-tuning | weight error | artifact | bits/weight | "
             "ratio to FP32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        art = r.sizes
        size = f"{art['artifact_bytes'] / 2**20:.2f} MiB" if art else "-"
        lines.append(f"| {r.config['scheme']} | {r.config['bits']} | {100 * r.score_before:.1f} | "
                     f"{100 * r.score_after:.1f} | {r.relative_error:.3g} | {size} | "
                     f"{art.get('bits_per_weight', float('nan')):.2f} | {art.get('ratio_to_fp32', float('nan')):.1f}x |")
    by = {(r.config["scheme"], r.config["bits"]): r for r in results}
    verdicts = []
    for bits in sorted({r.config["bits"] for r in results}):
        lin, km = by.get(("linear", bits)), by.get(("kmeans", bits))
        if lin and km:
            gap = 100 * (km.score_after - lin.score_after)
            verdicts.append(f"{bits}-bit {'yes' if gap > 0 else 'no'} ({gap:+.1f} pts)")
    if verdicts:
        lines += ["", "linear < kmeans after centroid fine-tuning (P1's claim): " + "; ".join(verdicts) + "."]
    fp32_bytes = next((r.sizes["fp32_bytes"] for r in results if r.sizes), None)
    if fp32_bytes:
        lines.append(f"FP32 size {fp32_bytes / 2**20:.1f} MiB (every value at 4 bytes).")
    return "\n".join(lines)
