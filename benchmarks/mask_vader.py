"""P3 on vader with MiniLM-L6 (offline): fine-tune weights vs fine-tune structure (a learned binary mask) vs
structure over weights quantized to 8, 4, 2, 1 bits (linear as in P3, and k-means); mean +- sd over seeds.

Run: ``.venv/bin/python benchmarks/mask_vader.py [--seeds 3] [--epochs 1] [--threads N]``.

Each quantized base is built once (``fewbits.compress`` of the embeddings and fully connected
layers, the P1 targets), saved with ``fewbits.save`` and shared by every seed: each seed loads it
with ``fewbits.protocols.mask.load_base`` (fresh head from the seed), learns a mask and the head, and
saves ONLY the mask and head with ``save_mask``, whose size on disk is reported. Fine-tuning the
weights uses the same loop, data order and steps. Every run's result is appended to
``--results`` (JSON lines) so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

import fewbits  # noqa: E402
from fewbits.data import load_task  # noqa: E402
from fewbits.methods.mask import new_head  # noqa: E402
from fewbits.models import load_model  # noqa: E402
from fewbits.nn import head_names  # noqa: E402
from fewbits.protocols.mask import MaskConfig, load_base, run_mask  # noqa: E402
from fewbits.train import TrainConfig, train  # noqa: E402


def _configs(bits: list[int], schemes: list[str]) -> list[tuple[str, str | None, int]]:
    """(row name, scheme or None, bits): fine-tune weights, structure on FP32, structure on each quantized base."""
    rows = [("fine-tune weights", None, 32), ("head only (no mask)", None, 32), ("fine-tune structure", None, 32)]
    rows += [(f"structure, {scheme}", scheme, b) for scheme in schemes for b in bits]
    return rows


def _train_config(args, seed: int, lr: float) -> TrainConfig:
    """Every run's training settings (the same loop, data order and steps for every row)."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, seed=seed,
                       max_steps=args.max_steps, progress=False, lr=lr)


def mask_run(source: str, task, seed: int, args, out_dir: Path) -> dict:
    """The mask protocol over the base ``source`` (head from ``seed``), its task artifact in ``out_dir``: its record."""
    started = time.perf_counter()
    base = load_base(source, task, seed=seed)
    record = run_mask(base, task, MaskConfig(score_lr=args.score_lr, margin=args.margin),
                      _train_config(args, seed, args.head_lr), out_dir=out_dir)
    return {**record.to_dict(), "seconds": time.perf_counter() - started}


def _run(name: str, scheme: str | None, bits: int, seed: int, task, args, workdir: Path) -> dict:
    """One run; returns its record (metrics, and for masks kept fractions and sizes on disk; seconds)."""
    started = time.perf_counter()
    if name == "fine-tune weights":
        model, tokenizer = load_model("minilm", task)
        new_head(model, task.num_labels, task.label_names, seed)
        result = train(model, task, _train_config(args, seed, args.ft_lr), tokenizer=tokenizer)
        return {"metrics": result.metrics, "seconds": time.perf_counter() - started}
    source = "minilm" if scheme is None else str(workdir / f"base-{scheme}-{bits}")
    if name == "head only (no mask)":  # the control: frozen features, only the head learns
        base = load_base(source, task, seed=seed)
        head = {id(p) for h in head_names(base.model) for p in base.model.get_submodule(h).parameters()}
        for p in base.model.parameters():
            p.requires_grad_(id(p) in head)
        result = train(base.model, task, _train_config(args, seed, args.head_lr), tokenizer=base.tokenizer)
        return {"metrics": result.metrics, "seconds": time.perf_counter() - started}
    return mask_run(source, task, seed, args, workdir / f"mask-{scheme}-{bits}-{seed}")


def _upgrade(record: dict) -> dict:
    """A run written before the mask protocol's record (``accuracy``, flat sizes) in the record's shape."""
    if "metrics" in record:
        return record
    record = {**record, "metrics": {"accuracy": record["accuracy"]}}
    if "mask_bits_per_weight" in record:
        record["sizes"] = {"artifact_bytes": record["task_artifact_bytes"], "mask_bytes": record["mask_bytes"],
                           "mask_bits_per_weight": record["mask_bits_per_weight"],
                           "masked_weights": record["masked_weights"]}
    return record


def _build_bases(configs, task, workdir: Path) -> dict[str, float]:
    """Quantize MiniLM once per (scheme, bits) and save it; returns seconds and bytes per base."""
    info = {}
    for _, scheme, bits in configs:
        target = workdir / f"base-{scheme}-{bits}"
        if scheme is None or target.exists():
            continue
        started = time.perf_counter()
        model, tokenizer = load_model("minilm", task)
        fewbits.compress(model, scheme, bits=bits)
        fewbits.save(model, target, tokenizer=tokenizer)
        size = sum(f.stat().st_size for f in target.iterdir() if f.name in ("fewbits.safetensors", "fewbits.json"))
        info[f"{scheme}-{bits}"] = {"seconds": time.perf_counter() - started, "bytes": size}
        print(f"base {scheme} {bits}-bit: {info[f'{scheme}-{bits}']}", file=sys.stderr)
    return info


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def _report(configs, records: dict, args, prior: float, total_s: float, bases: dict) -> str:
    rows = ["| model | base bits | accuracy (mean +- sd) | kept fraction | mask bits/weight on disk | seconds/run |",
            "|---|---|---|---|---|---|"]
    means = {}
    for name, scheme, bits in configs:
        runs = [records[(name, scheme, bits, s)] for s in range(args.seeds) if (name, scheme, bits, s) in records]
        if not runs:
            continue
        acc = [r["metrics"]["accuracy"] for r in runs]
        means[(name, scheme, bits)] = statistics.mean(acc)
        kept = f"{statistics.mean(r['kept'][-1] for r in runs):.4f}" if "kept" in runs[0] else "-"
        bpw = f"{statistics.mean(r['sizes']['mask_bits_per_weight'] for r in runs):.3f}" if "kept" in runs[0] else "-"
        secs = statistics.mean(r["seconds"] for r in runs)
        rows.append(f"| {name} | {bits if bits < 32 else 'FP32'} | {_mean_sd(acc)} ({len(acc)} seeds) | {kept} | "
                    f"{bpw} | {secs:.0f} |")
    full = means.get(("fine-tune structure", None, 32))
    notes = []
    weights, head = means.get(("fine-tune weights", None, 32)), means.get(("head only (no mask)", None, 32))
    if full is not None and weights is not None:
        notes.append(f"- Structure on FP32 weights: {full:.3f} against {weights:.3f} for fine-tuning the weights "
                     f"({full - weights:+.3f})" + (f"; the head alone over frozen features reaches {head:.3f}, so the "
                                                   "mask, not the head, does the adapting." if head is not None else "."))
    by_scheme = {}
    for scheme in args.schemes:
        got = {b: means[(f"structure, {scheme}", scheme, b)] for b in args.bits
               if (f"structure, {scheme}", scheme, b) in means}
        by_scheme[scheme] = got
        if full is None or not got:
            continue
        parts = [f"{b}-bit {v:.3f} ({v - full:+.3f})" for b, v in sorted(got.items(), reverse=True)]
        collapsed = sorted((b for b, v in got.items() if v <= prior + 0.02), reverse=True)
        holds = (8 in got and abs(got[8] - full) <= 0.01 and {1, 2} <= set(collapsed))
        notes.append(f"- {scheme}: " + ", ".join(parts) + " against FP32 structure; at the label prior (within "
                     f"0.02): {', '.join(f'{b}-bit' for b in collapsed) or 'none'}. P3's shape (8-bit within 0.01 "
                     f"of full precision, 2 and 1 bit collapsed): {'holds' if holds else 'does not hold'}.")
    common = sorted(set(by_scheme.get("kmeans", {})) & set(by_scheme.get("linear", {})), reverse=True)
    if common:
        notes.append("- k-means minus linear, same bits: " + ", ".join(
            f"{b}-bit {by_scheme['kmeans'][b] - by_scheme['linear'][b]:+.3f}" for b in common) + ".")
    fp32 = [records[k] for k in records if k[0] == "fine-tune structure"]
    disk = ""
    if fp32:
        sizes = [r["sizes"] for r in fp32]
        bpw = statistics.mean(z["mask_bits_per_weight"] for z in sizes)
        kept = statistics.mean(r["kept"][-1] for r in fp32)
        disk = (f"Mask on disk for the trained FP32 vader masks: {bpw:.3f} bits per masked weight "
                f"({statistics.mean(z['mask_bytes'] for z in sizes) / 1024:.0f} KiB for "
                f"{sizes[0]['masked_weights']:,} weights, {100 * (1 - kept):.2f}% removed) against 1 bit per weight "
                f"for a plain bitmask ({sizes[0]['masked_weights'] / 8 / 1024:.0f} KiB); the whole task artifact "
                f"(mask, head, headers, files) is {statistics.mean(z['artifact_bytes'] for z in sizes) / 1024:.0f} KiB.")
    steps = f"max {args.max_steps} steps" if args.max_steps else "all steps"
    built = (f", building the quantized bases {sum(b['seconds'] for b in bases.values()) / 60:.1f} min"
             if bases else "")
    return "\n".join([
        "## P3 on vader: fine-tune weights vs fine-tune structure, FP32 and quantized bases (MiniLM-L6)",
        "",
        f"`benchmarks/mask_vader.py`: {args.seeds} seeds, {args.epochs} epoch(s) ({steps}), batch {args.batch_size}, "
        f"max_length {args.max_length}; fine-tuning lr {args.ft_lr}; structure: score lr {args.score_lr}, margin "
        f"{args.margin}, head lr {args.head_lr}, threshold 0, no initial sparsity. Quantized bases: embeddings and "
        f"fully connected layers (P1 targets), one codebook per tensor, shared by all seeds. Accuracy on the dev "
        f"split (label prior {prior:.3f}). Runs took {total_s / 60:.1f} min in all (sum of per-run times){built}. "
        f"{machine_line()}.",
        "",
        *rows,
        "",
        *notes,
        "",
        disk,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=100, help="steps per run (0: whole epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2, 1])
    parser.add_argument("--schemes", nargs="+", default=["linear", "kmeans"])
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--score-lr", type=float, default=MaskConfig.score_lr)
    parser.add_argument("--margin", type=float, default=MaskConfig.margin)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", default=None, help="bases and masks go here (default: a temporary folder)")
    parser.add_argument("--results", default="runs/mask_vader.jsonl", help="JSON lines of finished runs (resume)")
    args = parser.parse_args()
    args.max_steps = args.max_steps or None
    if args.threads:
        torch.set_num_threads(args.threads)

    task = load_task("vader")
    labels = [ex.label for ex in task.splits[task.eval_split]]
    prior = max(labels.count(c) for c in set(labels)) / len(labels)
    configs = _configs(args.bits, args.schemes)
    settings = {k: v for k, v in vars(args).items() if k not in ("threads", "workdir", "results", "seeds", "bits",
                                                                   "schemes")}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    records: dict[tuple, dict] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            if r["settings"] == settings:
                records[(r["name"], r["scheme"], r["bits"], r["seed"])] = _upgrade(r)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        todo = [(name, scheme, bits, seed) for seed in range(args.seeds) for name, scheme, bits in configs
                if (name, scheme, bits, seed) not in records]
        bases = _build_bases(sorted({(n, s, b) for n, s, b, _ in todo if s}), task, workdir)
        for key in todo:
            name, scheme, bits, seed = key
            record = _run(name, scheme, bits, seed, task, args, workdir)
            record.update(name=name, scheme=scheme, bits=bits, seed=seed, settings=settings)
            records[key] = record
            with results.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(f"{name} {bits} seed {seed}: accuracy {record['metrics']['accuracy']:.4f}"
                  + (f", kept {record['kept'][-1]:.4f}" if "kept" in record else "")
                  + f" ({record['seconds']:.0f} s)", file=sys.stderr)
    text = _report(configs, records, args, prior, sum(r["seconds"] for r in records.values()), bases)
    write_section("mask_vader", text)
    print(text)


if __name__ == "__main__":
    main()
