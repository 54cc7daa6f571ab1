"""Report sections beyond the papers' main tables: P1's k-means iteration study, P3's head-only control and
per-task disk cost beside a LoRA adapter, and P2's cost of quantization against an FP32 reference.

Every comparison here is paired: for each seed the difference between two runs that share everything else
(the FP32 fine-tune, the STE checkpoint, the base), then the mean and sd of those differences over seeds.
A difference "holds" when its mean is beyond its spread (the larger of the sd over seeds and a tolerance);
differences over a single seed are shown in the tables but not judged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewbits.experiments.claims import SAME_TOLERANCE, Stat, Verdict
from fewbits.experiments.report import Section, _cell, _table, task_score

DEFAULT_ITERATIONS = 3  # the quantize stage's default max_iter (P1's choice)
QUANTIZATION_COST = 0.03  # P2 needs settings where quantization costs at least this much (3 points)

Seeds = dict[int, float]


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Stat | None:
    """Mean and sd over the seeds both hold of ``a[seed] - b[seed]``; None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    return Stat.of([a[s] - b[s] for s in seeds]) if seeds else None


def beyond_spread(diff: Stat, tolerance: float = SAME_TOLERANCE) -> bool:
    """Whether a paired difference is larger than its spread: |mean| > max(tolerance, sd over seeds)."""
    return abs(diff.mean) > max(tolerance, diff.sd)


def has_spread(diff: Stat | None) -> bool:
    """Whether a paired difference has a spread to judge it by (two seeds or more); one seed is shown, not judged."""
    return diff is not None and diff.n >= 2


def _diff_cell(diff: Stat | None, scale: float = 100.0) -> str:
    return "–" if diff is None else f"{scale * diff.mean:+.1f} ± {scale * diff.sd:.1f} (n={diff.n})"


def is_iteration_variant(config: Mapping[str, Any]) -> bool:
    """A P1 run of the iteration study: k-means with other than the default iterations, or group-wise."""
    q = config.get("quantize") or {}
    iterations = q.get("max_iter", DEFAULT_ITERATIONS)
    return q.get("scheme") == "kmeans" and (q.get("groups", 0) != 0 or iterations != DEFAULT_ITERATIONS)


# --- P1 iteration study -------------------------------------------------------------------------------------

def p1_iterations(results: Sequence[Mapping[str, Any]]) -> Section | None:
    """P1's Table 6: k-means at one bit width with 3/5/10/20 iterations, per tensor and group-wise."""
    runs = [r for r in results if "quantize" in r["config"] and r["config"]["quantize"].get("scheme") == "kmeans"]
    if not any(is_iteration_variant(r["config"]) for r in runs):
        return None
    studied = {(r["config"]["model"], r["config"]["task"], r["config"]["quantize"]["bits"]) for r in runs
               if is_iteration_variant(r["config"])}
    after: dict[tuple, Seeds] = defaultdict(dict)
    before: dict[tuple, Seeds] = defaultdict(dict)
    size: dict[tuple, Seeds] = defaultdict(dict)
    for r in runs:
        c, stages, seed = r["config"], r["stages"], r["config"].get("seed", 0)
        where = (c["model"], c["task"], c["quantize"]["bits"])
        if where not in studied:
            continue
        key = (*where, c["quantize"].get("groups", 0), c["quantize"].get("max_iter", DEFAULT_ITERATIONS))
        if (s := task_score(c["task"], stages.get("finetune_quantized") or stages["quantize"])) is not None:
            after[key][seed] = s
        if "finetune_quantized" in stages and (s := task_score(c["task"], stages["quantize"])) is not None:
            before[key][seed] = s
        if "bits_per_weight" in r.get("sizes", {}):
            size[key][seed] = r["sizes"]["bits_per_weight"]
    verdict = Verdict("P1", "more k-means iterations change the low-bit score (iterations are a hyperparameter)",
                      f"paired difference to {DEFAULT_ITERATIONS} iterations after fine-tuning, |mean| > max("
                      f"{100 * SAME_TOLERANCE:.1f} points, sd over seeds)")
    out = ["### P1 iteration study (the paper's Table 6)", "",
           f"k-means with 3, 5, 10 or 20 Lloyd iterations, one codebook per tensor ('per tensor') or 128 per tensor "
           f"('128 groups'). Score before → after fine-tuning the codebooks (percent, mean ± sd over seeds); "
           f"'vs {DEFAULT_ITERATIONS}': the paired difference after fine-tuning to {DEFAULT_ITERATIONS} iterations "
           "with the same grouping (mean ± sd of the per-seed differences).", ""]
    for model, task, bits in sorted(studied):
        rows = []
        for groups in sorted({k[3] for k in after if k[:3] == (model, task, bits)}):
            label = "per tensor" if groups == 0 else f"{groups} groups"
            for iters in sorted({k[4] for k in after if k[:4] == (model, task, bits, groups)}):
                key = (model, task, bits, groups, iters)
                base = after.get((model, task, bits, groups, DEFAULT_ITERATIONS), {})
                diff = paired(after[key], base) if iters != DEFAULT_ITERATIONS else None
                if has_spread(diff):
                    verdict.check(beyond_spread(diff), f"{task} {bits}-bit {label} {iters} vs {DEFAULT_ITERATIONS} "
                                                       f"iterations: {_diff_cell(diff)}")
                bpw = Stat.of(list(size[key].values())) if size.get(key) else None
                rows.append([label, str(iters), _cell(Stat.of(list(before[key].values())) if before.get(key) else None),
                             _cell(Stat.of(list(after[key].values()))), _diff_cell(diff),
                             "–" if bpw is None else f"{bpw.mean:.3f}"])
        out += [f"{model}, {task}, {bits} bit:", "",
                _table(["grouping", "iterations", "before", "after", f"vs {DEFAULT_ITERATIONS} (after)",
                        "bits/weight"], rows), ""]
    return Section("\n".join(out), [], [verdict])


# --- P3 head-only control and per-task cost -----------------------------------------------------------------

def _p3_column_of(config: Mapping[str, Any]) -> str | None:
    pipeline = config["pipeline"]
    if pipeline == ["finetune"]:
        return "weights"
    if "head" in pipeline:
        return "head only" if config["base"]["bits"] == 32 else f"head only-{config['base']['bits']}"
    if "mask" in pipeline:
        bits = config["base"]["bits"]
        return "structure" if bits == 32 else f"structure-{bits} [{config['base'].get('scheme', 'kmeans')}]"
    return None


def p3_controls(results: Sequence[Mapping[str, Any]]) -> Section | None:
    """Masks against the head-only control (paired by seed), and what each extra task costs on disk."""
    scores: dict[tuple, Seeds] = defaultdict(dict)  # (model, task, column) -> {seed: score}
    disk: dict[tuple, list[float]] = defaultdict(list)  # (model, column) -> bits per masked weight of a task
    lora: dict[str, dict] = {}
    for r in results:
        c, stages = r["config"], r["stages"]
        column = _p3_column_of(c)
        last = stages.get("mask") or stages.get("head") or stages.get("finetune")
        if column is None or last is None or (score := task_score(c["task"], last)) is None:
            continue
        scores[(c["model"], c["task"], column)][c.get("seed", 0)] = score
        sizes = last.get("sizes") or {}
        if "mask_bytes" in sizes and sizes.get("masked_weights"):
            disk[(c["model"], column)].append(8 * sizes["mask_bytes"] / sizes["masked_weights"])
        if "lora" in sizes:
            lora[c["model"]] = sizes["lora"]
    controls = {k[:2] for k in scores if k[2] == "head only"}
    if not controls:
        return None
    verdict = Verdict("P3", "(ours) a mask beats training the head alone over the same frozen FP32 weights",
                      f"paired difference mask - head only > max({100 * SAME_TOLERANCE:.1f} points, sd over seeds)")
    out = ["### P3 against the head-only control, and the disk cost of each additional task", "",
           "Paired differences to the head-only control (the head trained over the frozen FP32 base, same steps), "
           "main metric in points (mean ± sd of the per-seed differences; n seeds). A mask over quantized weights "
           "changes the weights it keeps, so its difference mixes the mask's gain with the quantization's loss.", ""]
    columns = sorted({k[2] for k in scores if k[2] not in ("head only",)}, key=lambda col: (
        col != "weights", col != "structure", col))
    rows = []
    for model, task in sorted(controls):
        control = scores[(model, task, "head only")]
        row = [model, task, _cell(Stat.of(list(control.values())), 1.0, 3)]
        for col in columns:
            diff = paired(scores.get((model, task, col), {}), control)
            row.append(_diff_cell(diff))
            if has_spread(diff) and col.startswith("structure"):
                verdict.check(diff.mean > 0 and beyond_spread(diff), f"{task} {col}: {_diff_cell(diff)}")
        rows.append(row)
    out += [_table(["model", "task", "head only", *[f"{c} - head" for c in columns]], rows), ""]
    disk_rows = [[model, col, f"{sum(v) / len(v):.4f}", str(len(v))] for (model, col), v in sorted(disk.items())]
    for model, size in sorted(lora.items()):
        disk_rows.append([model, f"LoRA rank {size['rank']} on the masked fully connected layers (16-bit)",
                          f"{size['bits_per_masked_weight']:.4f}", f"{size['params']:,} parameters"])
    out += ["What one more task costs on disk, in bits per masked weight: the task's whole artifact (mask, head, "
            "manifest) over the weights the mask covers; the base is stored once for every task. A LoRA adapter's "
            "size on the same layers is shown for scale.", "",
            _table(["model", "task artifact", "bits per masked weight", "tasks (runs) / size"], disk_rows), ""]
    return Section("\n".join(out), [], [verdict])


# --- P2 cost of quantization --------------------------------------------------------------------------------

def p2_costs(results: Sequence[Mapping[str, Any]]) -> Section | None:
    """The FP32 reference trained for the quantized runs' total steps, and what each A/W pair costs against it."""
    reference: dict[str, Seeds] = defaultdict(dict)
    teacher: dict[str, Seeds] = defaultdict(dict)
    ste: dict[tuple, Seeds] = defaultdict(dict)  # (task, A/W) -> {seed: accuracy after the STE phase}
    final: dict[tuple, Seeds] = defaultdict(dict)  # (task, A/W, method) -> {seed: accuracy}, KD at its T = 4
    steps: dict[str, set] = defaultdict(set)
    for r in results:
        c, stages, seed = r["config"], r["stages"], r["config"].get("seed", 0)
        task = c["task"]
        if c["pipeline"] == ["finetune"] and (s := task_score(task, stages.get("finetune", {}))) is not None:
            reference[task][seed] = s
            steps[task].add(c["finetune"]["max_steps"])
        if "regularize" not in stages:
            continue
        aw = f"{c['ste']['abits']}/{c['ste']['wbits']}"
        if (s := task_score(task, stages.get("finetune", {}))) is not None:
            teacher[task][seed] = s
        if (s := task_score(task, stages.get("ste", {}))) is not None:
            ste[(task, aw)][seed] = s
        method = c["regularize"]["method"]
        if (method != "kd" or c["regularize"]["temperature"] == 4.0) and \
                (s := task_score(task, stages["regularize"])) is not None:
            final[(task, aw, method)][seed] = s
    if not reference:
        return None
    verdict = Verdict("P2", "(ours) quantization costs >= 3 points here, so the setting can separate the methods",
                      f"paired FP32 reference - STE second phase >= {100 * QUANTIZATION_COST:.0f} points")
    out = ["### P2: what quantization costs here", "",
           "The FP32 reference is trained from scratch for the quantized runs' total steps (teacher + STE + second "
           "phase); the cost of an A/W pair is the paired difference reference - quantized, in points (mean ± sd "
           "of the per-seed differences).", ""]
    for task in sorted(reference):
        ref, t = reference[task], teacher.get(task, {})
        shown_steps = ", ".join(map(str, sorted(steps[task])))
        out += [f"{task}: FP32 reference {_cell(Stat.of(list(ref.values())))} ({shown_steps} steps); FP32 teacher "
                f"{_cell(Stat.of(list(t.values())) if t else None)}.", ""]
        rows = []
        for aw in sorted({k[1] for k in ste if k[0] == task}, key=lambda a: tuple(-int(x) for x in a.split("/"))):
            costs = [paired(ref, final.get((task, aw, m), {})) for m in ("ste", "msqe", "fisher", "kd")]
            if has_spread(costs[0]):
                verdict.check(costs[0].mean >= QUANTIZATION_COST, f"{task} {aw}: {_diff_cell(costs[0])}")
            rows.append([aw, _cell(Stat.of(list(ste[(task, aw)].values()))), *map(_diff_cell, costs)])
        out += [_table(["A/W", "after STE phase", "cost: STE", "cost: MSQE", "cost: Fisher", "cost: KD"], rows), ""]
    return Section("\n".join(out), [], [verdict])


def extra_sections(paper: str, results: Sequence[Mapping[str, Any]], plots_dir: Path, link: str) -> list[Section]:
    """The sections of this module that ``results`` (one paper's runs) fill."""
    build = {"P1": p1_iterations, "P2": p2_costs, "P3": p3_controls}.get(paper)
    section = build(results) if build else None
    return [section] if section is not None else []
