"""Sensitivity-aware compression of MiniLM-L6: uniform vs mixed bits, importance, outliers, HAWQ.

Run: ``python benchmarks/sensitivity.py [--task vader] [--seeds 0 1 2] [--work DIR] [--report-only]``
(``--task sentences/movies --max-length 48 --eval-split test`` for the rated movie-review sentences).

Per seed: MiniLM-L6 is fine-tuned once in FP32 (``--fp32-epochs``, ``--max-length``, checkpoints kept
for Adam's second moments), then every importance and sensitivity is computed once from it:
the diagonal empirical Fisher (``--fisher-batches`` batches of 32 training examples, one example at a
time), Adam's ``v_hat`` from the run's last checkpoint, and per-layer Hutchinson traces
(``--trace-probes`` probes over 2 batches). Each cell copies the FP32 model, quantizes every embedding
and fully connected layer but the head with ``optimal`` (its bits from ``plan_bits`` for mixed cells),
evaluates on the dev split, fine-tunes the codebooks for ``--ft-steps`` steps (P1's rates) and
evaluates again. "Equal size": a mixed cell at budget b spends at most what uniform b-bit spends
(codes + codebooks + outliers of the compressed layers) for integer b, b bits per weight for 2.5.
Cells run in priority order, all seeds per cell; results are appended to ``--work/results.jsonl``
and a rerun skips what is done. The table goes to BENCHMARKS.md (section ``sensitivity`` for
vader, ``sensitivity-<task>`` for another task).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import BENCHMARKS_MD, machine_line, write_section  # noqa: E402

import fewbits  # noqa: E402
from fewbits.analysis.importance import fisher_diagonal, layer_traces  # noqa: E402
from fewbits.data import load_task, make_collate  # noqa: E402
from fewbits.models import load_model, save_model  # noqa: E402
from fewbits.methods.codebook import param_groups, plan_bits, replan  # noqa: E402
from fewbits.protocols.codebook import eval_sorted  # noqa: E402
from fewbits.quantize.allocate import layer_bytes  # noqa: E402
from fewbits.train import TrainConfig, evaluate, train  # noqa: E402
from fewbits.train.moments import adam_second_moments  # noqa: E402

SCHEME = "optimal"
# Goal 2's candidates (importance + outliers at 2 bits): at an equal artifact size, and SqueezeLLM's reading
# (2-bit codes, the outliers' bytes on top: 2.32 bits per weight at 0.5%)
EQUAL_SIZE_GOAL2 = ("mixed+fisher+0.5% outliers", "mixed+fisher+0.1% outliers", "mixed+fisher (damped)+0.1% outliers")
CODES_GOAL2 = ("SqueezeLLM-style: uniform+fisher+0.5% outliers", "uniform+fisher+0.5% outliers by error")
DAMPING = 0.1  # "fisher-damped" importance: F + DAMPING * mean(F), per layer
OPTIONS = range(1, 7)  # widths a mixed plan may choose (8 costs most to tabulate and is never chosen at <= 3 bits)
# (cell name, importance, outliers, allocation: "uniform" | "error" | "trace", budget bits), in priority order
CELLS = [
    ("uniform", "none", 0.0, "uniform", 2), ("uniform", "none", 0.0, "uniform", 3),
    ("mixed+fisher", "fisher", 0.0, "error", 2.5), ("mixed+fisher", "fisher", 0.0, "error", 2),
    ("SqueezeLLM-style: uniform+fisher+0.5% outliers", "fisher", 0.005, "uniform", 2),
    ("mixed+fisher+0.5% outliers", "fisher", 0.005, "error", 2),
    ("mixed (unweighted)", "none", 0.0, "error", 2.5), ("HAWQ-style (trace x error)", "none", 0.0, "trace", 2.5),
    ("uniform+fisher", "fisher", 0.0, "uniform", 2), ("mixed+adam", "adam", 0.0, "error", 2.5),
    ("mixed+fisher+0.1% outliers", "fisher", 0.001, "error", 2),
    ("mixed+fisher+0.5% outliers", "fisher", 0.005, "error", 2.5),
    ("mixed+fisher+0.1% outliers", "fisher", 0.001, "error", 2.5),
    ("mixed+fisher", "fisher", 0.0, "error", 3), ("mixed (unweighted)", "none", 0.0, "error", 2),
    ("HAWQ-style (trace x error)", "none", 0.0, "trace", 2), ("mixed+adam", "adam", 0.0, "error", 2),
    ("SqueezeLLM-style: uniform+fisher+0.5% outliers", "fisher", 0.005, "uniform", 3),
    ("uniform+fisher+0.5% outliers by error", "fisher", 0.005, "uniform-error-selection", 2),
    # a Fisher from a few hundred examples is zero on every embedding row they miss: damping by a tenth of the
    # layer's mean gives those rows a floor (tests why mixed+fisher trails mixed+adam, whose moments see an epoch)
    ("mixed+fisher (damped)", "fisher-damped", 0.0, "error", 2.5),
    ("mixed+fisher (damped)", "fisher-damped", 0.0, "error", 2),
    ("mixed+fisher (damped)+0.1% outliers", "fisher-damped", 0.001, "error", 2),
]


def _slug(task_name: str) -> str:
    """A task name as a file-name part: sentences/movies -> sentences-movies."""
    return task_name.replace("/", "-")


def _scored_on(task, split: str | None):
    """The task scored on ``split`` (its training split kept): the study tunes nothing on what it scores."""
    if split is None or split == task.eval_split:
        return task
    if split not in task.splits or split == "train":
        raise SystemExit(f"--eval-split: {task.name} has no split {split!r} to score on "
                         f"(splits: {sorted(task.splits)})")
    return dataclasses.replace(task, splits={"train": task.splits["train"], split: task.splits[split]})


def _fp32(seed: int, task, args, work: Path):
    """The seed's fine-tuned FP32 model (trained once, checkpoints kept), its tokenizer and dev accuracy."""
    folder = work / f"fp32-{seed}"
    record = folder / "fp32.json"
    if record.is_file():
        model, tokenizer = load_model(folder / "model", task, new_head=False)
        return model.eval(), tokenizer, json.loads(record.read_text())
    torch.manual_seed(seed)
    model, tokenizer = load_model("minilm", task)
    config = TrainConfig(epochs=args.fp32_epochs, batch_size=32, lr=1e-4, max_length=args.max_length, seed=seed,
                         max_steps=args.fp32_max_steps, out_dir=folder / "run", resume=True, progress=False)
    started = time.perf_counter()
    result = train(model, eval_sorted(task, tokenizer, args.max_length), config, tokenizer=tokenizer)
    save_model(model, folder / "model", tokenizer)
    info = {"accuracy": result.metrics["accuracy"], "seconds": time.perf_counter() - started}
    record.write_text(json.dumps(info))
    return model.eval(), tokenizer, info


def _importances(seed: int, model, tokenizer, task, args, work: Path) -> dict:
    """Fisher, Adam's v_hat and per-layer traces of the seed's FP32 model (computed once, cached on disk)."""
    from safetensors.torch import load_file, save_file

    folder = work / f"fp32-{seed}"
    path, traces_path = folder / "fisher.safetensors", folder / "traces.json"
    collate = make_collate(task, tokenizer, max_length=args.max_length)
    train_rows = task.splits["train"]
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [collate([train_rows[i] for i in order[32 * b:32 * b + 32]]) for b in range(args.fisher_batches)]
    timing = {}
    if not path.is_file():
        started = time.perf_counter()
        save_file({k: v.contiguous() for k, v in fisher_diagonal(model, batches).items()}, str(path))
        timing["fisher_s"] = time.perf_counter() - started
    if not traces_path.is_file():
        started = time.perf_counter()
        traces = layer_traces(model, batches[:2], probes=args.trace_probes, seed=seed)
        traces_path.write_text(json.dumps({"traces": traces, "seconds": time.perf_counter() - started}))
    fisher = load_file(str(path))
    damped = {name: f + DAMPING * f.mean() for name, f in fisher.items()}
    return {"fisher": fisher, "fisher-damped": damped, "adam": adam_second_moments(model, folder / "run"),
            "traces": json.loads(traces_path.read_text())["traces"], **timing}


def _uniform_bytes(model, bits: int) -> int:
    """What uniform ``bits`` costs for the compressed layers (codes + one float32 codebook each)."""
    from fewbits.nn import select_targets

    return sum(layer_bytes(model.get_submodule(n).weight.numel(), bits) for n in select_targets(model))


def _run_cell(cell, seed, model, tokenizer, task, imp, plans, args) -> dict:
    """Quantize a copy of the FP32 model for one cell, evaluate, fine-tune the codebooks, evaluate."""
    name, importance, outliers, allocation, budget = cell
    sw = None if importance == "none" else imp[importance]
    selection = "error" if allocation == "uniform-error-selection" else "magnitude"
    started = time.perf_counter()
    if allocation.startswith("uniform"):
        bits, plan = budget, None
    else:
        key = (importance, outliers, allocation)
        if key not in plans and allocation == "trace":  # HAWQ: the unweighted table, each layer times trace/numel
            plain = plans.get(("none", 0.0, "error")) or plan_bits(model, 8, SCHEME, bits_options=OPTIONS)
            plans[("none", 0.0, "error")] = plain
            scale = {n: max(imp["traces"][n], 0.0) / plain.numel[n] for n in plain.numel}
            plans[key] = dataclasses.replace(plain, sensitivity="trace",
                                             losses={n: [scale[n] * v for v in row] for n, row in plain.losses.items()})
        if key not in plans:
            plans[key] = plan_bits(model, 8, SCHEME, sample_weights=sw, outliers=outliers, bits_options=OPTIONS)
        total = sum(plans[key].numel.values())
        target = _uniform_bytes(model, budget) * 8 / total if float(budget).is_integer() else budget
        plan = replan(plans[key], target)
        bits = plan.bits
    plan_s = time.perf_counter() - started
    quantized = copy.deepcopy(model)
    reports = fewbits.compress(quantized, SCHEME, bits, sample_weights=sw, outliers=outliers,
                               outlier_selection=selection)
    compressed = sum(math.prod(r.shape) for r in reports)
    nbytes = sum(layer_bytes(math.prod(r.shape), r.bits, r.n_groups, outliers=r.outliers) for r in reports)
    weighted = sum(((m.weight.detach() - q.weight.detach()).double().pow(2) * imp["fisher"][n].double()).sum().item()
                   for n, m, q in ((r.name, model.get_submodule(r.name), quantized.get_submodule(r.name))
                                   for r in reports))
    dev = eval_sorted(task, tokenizer, args.max_length)
    before = evaluate(quantized, dev, tokenizer=tokenizer, max_length=args.max_length, batch_size=256)["accuracy"]
    config = TrainConfig(epochs=1, max_steps=args.ft_steps, batch_size=32, lr=5e-5, weight_decay=0.01,
                         max_length=args.max_length, seed=seed, progress=False)
    result = train(quantized, dev, config, tokenizer=tokenizer,
                   param_groups=lambda m: param_groups(m, 5e-5, 10.0, 0.01))
    return {"cell": name, "importance": importance, "outliers": outliers, "allocation": allocation,
            "budget": budget, "seed": seed, "before": before, "after": result.metrics["accuracy"],
            "bits_per_weight": 8 * nbytes / compressed, "fisher_weighted_error": weighted,
            "bits": {r.name: r.bits for r in reports}, "ft_steps": args.ft_steps, "plan_s": plan_s,
            "seconds": time.perf_counter() - started}


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * sd:.2f} (n={len(values)})"


def _cell_values(results: list[dict], name: str, budget: float, key: str) -> list[float]:
    return [r[key] for r in results if r["cell"] == name and r["budget"] == budget]


def _goals(results: list[dict], fp32: dict[int, dict]) -> list[str]:
    """The issue's two goals, computed from the seed means (before and after centroid fine-tuning)."""
    lines = []
    fp = statistics.mean(f["accuracy"] for f in fp32.values()) if fp32 else float("nan")
    for key, when in (("before", "right after quantization"), ("after", "after centroid fine-tuning")):
        u3 = _cell_values(results, "uniform", 3, key)
        for name in ("mixed+fisher", "mixed+fisher (damped)", "mixed+adam", "mixed+fisher+0.1% outliers",
                     "mixed+fisher+0.5% outliers"):
            m25 = _cell_values(results, name, 2.5, key)
            if u3 and m25:
                ok = statistics.mean(m25) >= statistics.mean(u3) - 0.005
                lines.append(f"- Goal 1 ({when}): {name} at 2.5 bits {100 * statistics.mean(m25):.2f}% vs uniform "
                             f"3-bit {100 * statistics.mean(u3):.2f}%: {'met' if ok else 'not met'} "
                             "(within 0.5 points).")
        u2 = _cell_values(results, "uniform", 2, key)
        u2 = statistics.mean(u2) if u2 else None
        for names, size in ((EQUAL_SIZE_GOAL2, "equal size"), (CODES_GOAL2, "2-bit codes + outliers, larger file")):
            best = max(((statistics.mean(v), name) for name in names if (v := _cell_values(results, name, 2, key))),
                       default=None)
            if u2 is not None and best:
                closed = (best[0] - u2) / (fp - u2) if fp > u2 else float("nan")
                lines.append(f"- Goal 2 ({when}): at 2 bits ({size}) {best[1]} {100 * best[0]:.2f}% vs uniform "
                             f"{100 * u2:.2f}% and FP32 {100 * fp:.2f}%: closes {100 * closed:.0f}% of "
                             f"the gap ({'met' if closed >= 0.5 else 'not met'}: >= 50%).")
    return lines


def _plot(results: list[dict], task, out: Path) -> list[str]:
    """Allocation plots of seed 0's mixed+fisher cells; returns markdown links."""
    from fewbits.protocols.sensitivity import plot_allocation

    model, _ = load_model("minilm", task)
    prefix = "" if task.name == "vader" else _slug(task.name) + "-"
    links = []
    for budget in (2, 2.5, 3):
        rows = [r for r in results if r["cell"] == "mixed+fisher" and r["budget"] == budget and r["seed"] == 0]
        if rows:
            numel = {n: model.get_submodule(n).weight.numel() for n in rows[0]["bits"]}
            path = plot_allocation(rows[0]["bits"], numel, out / f"{prefix}allocation-fisher-{budget}.png",
                                   title=f"MiniLM-L6 / {task.name}, Fisher, {budget} bits on average (seed 0)")
            links.append(f"[{budget} bits]({path.relative_to(out.parent.parent)})")
    return links


def _report(results: list[dict], fp32: dict[int, dict], task, args) -> str:
    """The markdown section: one row per cell, mean ± sd over seeds."""
    steps = f" (at most {args.fp32_max_steps} steps of 32)" if args.fp32_max_steps else ""
    lines = [f"## Sensitivity-aware compression (MiniLM-L6 / {task.name})", "",
             f"`benchmarks/sensitivity.py --task {task.name}`: {__doc__.split(chr(10))[0]} {machine_line()}. Seeds "
             f"{sorted(fp32)}; FP32 {args.fp32_epochs} epoch(s){steps} at max_length {args.max_length}; accuracy on "
             f"the {task.eval_split} split ({len(task.splits[task.eval_split])} examples); Fisher from "
             f"{args.fisher_batches}x32 training examples; HAWQ traces {args.trace_probes} probes; centroid "
             f"fine-tuning {args.ft_steps} steps. Scheme `optimal`; every embedding and fully connected layer but "
             "the head. Bits/weight: codes + codebooks + outliers of the compressed layers.", "",
             f"FP32 {task.eval_split} accuracy: {_spread([f['accuracy'] for f in fp32.values()])}", "",
             "| cell | budget | bits/weight | quantized acc % | + centroid FT acc % | Fisher-weighted error |",
             "|---|---|---|---|---|---|"]
    for cell in CELLS:
        rows = [r for r in results if (r["cell"], r["budget"], r["allocation"]) == (cell[0], cell[4], cell[3])]
        if not rows:
            continue
        lines.append(f"| {cell[0]} | {cell[4]} | {statistics.mean(r['bits_per_weight'] for r in rows):.4f} | "
                     f"{_spread([r['before'] for r in rows])} | {_spread([r['after'] for r in rows])} | "
                     f"{statistics.mean(r['fisher_weighted_error'] for r in rows):.3g} |")
    lines += ["", *_goals(results, fp32)]
    links = _plot(results, task, BENCHMARKS_MD.parent / "reports" / "sensitivity-plots")
    if links:
        lines += ["", "Bits chosen per layer (mixed+fisher, seed 0): " + ", ".join(links) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="vader", help="a text classification task: vader, sentences/movies, ...")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example (16 for vader, else 48)")
    parser.add_argument("--eval-split", default=None, help="split to score on (the task's dev split by default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default=None, help="cache of FP32 models and results (/tmp/fewbits-sensitivity...)")
    parser.add_argument("--fp32-epochs", type=int, default=1)
    parser.add_argument("--fp32-max-steps", type=int, default=None)
    parser.add_argument("--cells", type=int, default=len(CELLS), help="run only the first N cells")
    parser.add_argument("--fisher-batches", type=int, default=4)
    parser.add_argument("--trace-probes", type=int, default=8)
    parser.add_argument("--ft-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.max_length = args.max_length or (16 if args.task == "vader" else 48)
    suffix = "" if args.task == "vader" else "-" + _slug(args.task)
    work = Path(args.work or f"/tmp/fewbits-sensitivity{suffix}")
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.jsonl"
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    task = _scored_on(load_task(args.task), args.eval_split)
    if not args.report_only:
        state = {}
        for seed in args.seeds:
            model, tokenizer, info = _fp32(seed, task, args, work)
            state[seed] = (model, tokenizer, info, _importances(seed, model, tokenizer, task, args, work), {})
            print(f"seed {seed}: FP32 {info}", flush=True)
        for cell in CELLS[:args.cells]:
            for seed in args.seeds:
                done = {(r["cell"], r["budget"], r["allocation"], r["seed"]) for r in results}
                if (cell[0], cell[4], cell[3], seed) in done:
                    continue
                model, tokenizer, _, imp, plans = state[seed]
                record = _run_cell(cell, seed, model, tokenizer, task, imp, plans, args)
                results.append(record)
                with open(results_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(json.dumps({k: v for k, v in record.items() if k != "bits"}), flush=True)
    fp32 = {s: json.loads((work / f"fp32-{s}" / "fp32.json").read_text()) for s in args.seeds
            if (work / f"fp32-{s}" / "fp32.json").is_file()}
    section = _report(results, fp32, task, args)
    write_section("sensitivity" + suffix, section)
    print(section)


if __name__ == "__main__":
    main()
