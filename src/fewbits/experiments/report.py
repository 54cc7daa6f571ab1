"""The report of a results folder: our numbers beside the papers', in the papers' table layouts, with plots and
a verdict on every claim.

- P1 (recipes with ``paper = "P1"``): per model, rows scheme x bits (FP32 first), columns tasks and their
  average (GLUE's convention: MRPC/QQP average accuracy and F1, STS-B Pearson and Spearman; WNLI is left out
  of the average as in the paper), and the paper's GLUE average beside it.
- P2: per task, rows A/W, columns STE/MSQE/Fisher/KD with the paper's ResNet-18 figure in parentheses; the
  fitted Hessian trace in the same layout; the KD temperature sweep; accuracy against trace.
- P3: per model, task and scheme of the quantized bases, columns weights / structure / structure on 8, 4, 2,
  1-bit weights and the label prior, with the paper's bert-base MRPC row.

Cells are mean +- sd over seeds (sd with ddof 1). Scores are in percent for P1/P2 and fractions for P3, as
each paper prints them. Runs of recipes without a paper are listed as they are.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewbits.errors import FewbitsValueError
from fewbits.experiments.claims import (P1_REFERENCE, P1_REFERENCE_DEFAULT, P2_METHODS, P2_PAPER_T, P2_REFERENCE,
                                        P2_TEACHER, P3_COLUMNS, P3_REFERENCE, Stat, Verdict, p1_claims, p2_claims,
                                        p3_claims, p3_scheme_claim)
from fewbits.experiments.store import SWEEP_LOG, Store, table_problem

log = logging.getLogger(__name__)

GLUE_PAIRS = {"glue/mrpc": ("accuracy", "f1"), "glue/qqp": ("accuracy", "f1"), "glue/stsb": ("pearson", "spearman")}
LEFT_OUT_OF_AVERAGE = ("glue/wnli",)


def task_score(task: str, stage: Mapping[str, Any], key: str = "metrics") -> float | None:
    """The one number a task contributes (a fraction): GLUE's pair average or the main metric; None if absent."""
    metrics = stage.get(key) or {}
    main = stage.get("main_metric") or (next(iter(metrics)) if len(metrics) == 1 else None)
    names = GLUE_PAIRS.get(task, (main,))
    values = [metrics.get(n) for n in names]
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    return float(sum(values) / len(values))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-")


def _cell(stat: Stat | None, scale: float = 100.0, digits: int = 1) -> str:
    if stat is None:
        return "–"
    mean = f"{scale * stat.mean:.{digits}f}"
    return f"{mean} ± {scale * stat.sd:.{digits}f}" if stat.n > 1 else mean


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _put(table: dict[Any, dict[int, float]], key: Any, seed: int, value: float, clashes: list[str]) -> None:
    """``table[key][seed] = value``, noting when another run already filled that cell for that seed (runs whose
    settings differ in something the table does not show, e.g. an older version of a recipe)."""
    if seed in table[key]:
        clashes.append(f"{' '.join(map(str, key if isinstance(key, tuple) else (key,)))} seed {seed}")
    table[key][seed] = value


def _stats(groups: Mapping[Any, Mapping[Any, float]]) -> dict[Any, Stat]:
    """``{key: {seed-or-id: value}}`` -> ``{key: Stat}``."""
    return {k: Stat.of(list(v.values())) for k, v in groups.items() if v}


@dataclass
class Section:
    """One paper's part of the report: Markdown, plots written, verdicts."""

    markdown: str
    plots: list[Path] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# --- P1 -----------------------------------------------------------------------------------------------------

def p1_section(results: Sequence[Mapping[str, Any]], plots_dir: Path, link: str) -> Section:
    """Tables, plot and verdicts of P1's runs (the iteration study's runs have their own table: report_extra)."""
    from fewbits.experiments.report_extra import is_iteration_variant

    clashes: list[str] = []
    cells: dict[tuple, dict[int, float]] = defaultdict(dict)  # (model, scheme, bits, task) -> {seed: score}
    fp32: dict[tuple, dict[str, float]] = defaultdict(dict)  # (model, task) -> {finetune key: score}
    before: dict[tuple, dict[int, float]] = defaultdict(dict)  # scores right after quantization, no fine-tuning
    size: dict[tuple, dict[int, float]] = defaultdict(dict)  # (model, scheme, bits) -> {seed: artifact bits/weight}
    prior: dict[tuple, float] = {}
    for r in results:
        c, stages = r["config"], r["stages"]
        model, task, seed = c["model"], c["task"], c.get("seed", 0)
        final = stages.get("finetune_quantized") or stages.get("quantize")
        if final is None or "quantize" not in c or is_iteration_variant(c):
            continue
        key = (model, c["quantize"]["scheme"], c["quantize"]["bits"], task)
        if (score := task_score(task, final)) is not None:
            _put(cells, key, seed, score, clashes)
        if "bits_per_weight" in r.get("sizes", {}):
            size[key[:3]][seed] = r["sizes"]["bits_per_weight"]
        if "finetune_quantized" in stages and (score := task_score(task, stages["quantize"])) is not None:
            before[key][seed] = score
        if "finetune" in stages:
            if (score := task_score(task, stages["finetune"])) is not None:
                fp32[(model, task)][stages["finetune"]["key"]] = score
            if (p := task_score(task, stages["finetune"], "prior_metrics")) is not None:
                prior[(model, task)] = p
    cell_stats, fp32_stats, before_stats, size_stats = _stats(cells), _stats(fp32), _stats(before), _stats(size)
    models = sorted({k[0] for k in cells})
    avg: dict[tuple, Stat] = {}
    out = ["## P1: linear vs k-means (and optimal) quantization, then fine-tuning the codebooks", ""]
    plots = []
    for model in models:
        tasks = sorted({k[3] for k in cells if k[0] == model})
        averaged = [t for t in tasks if t not in LEFT_OUT_OF_AVERAGE]
        rows_keys = sorted({(k[1], k[2]) for k in cells if k[0] == model}, key=lambda sb: (sb[0], -sb[1]))
        for scheme, bits in rows_keys:
            seeds = set.intersection(*(set(cells.get((model, scheme, bits, t), {})) for t in averaged))
            if seeds:
                avg[(model, scheme, bits)] = Stat.of([sum(cells[(model, scheme, bits, t)][s] for t in averaged)
                                                      / len(averaged) for s in sorted(seeds)])
        ref_model = model if model in P1_REFERENCE else P1_REFERENCE_DEFAULT
        ref = P1_REFERENCE[ref_model]
        header = ["scheme", "bits", *tasks, "average", f"paper average ({ref_model}, GLUE)", "bits/weight"]
        fp_avg = [fp32_stats[(model, t)].mean for t in averaged if (model, t) in fp32_stats]
        rows = [["FP32", "32", *[_cell(fp32_stats.get((model, t))) for t in tasks],
                 f"{100 * sum(fp_avg) / len(fp_avg):.1f}" if len(fp_avg) == len(averaged) and fp_avg else "–",
                 f"{ref['fp32'][32]:.1f}", "32"]]
        for scheme, bits in rows_keys:
            paper = ref.get(scheme, {}).get(bits)
            rows.append([scheme, str(bits), *[_cell(cell_stats.get((model, scheme, bits, t))) for t in tasks],
                         _cell(avg.get((model, scheme, bits))), "–" if paper is None else f"{paper:.1f}",
                         _cell(size_stats.get((model, scheme, bits)), 1.0, 2).split(" ±")[0]])
        seeds_n = max((s.n for k, s in cell_stats.items() if k[0] == model), default=0)
        out += [f"### {model}", "",
                f"Score after fine-tuning the quantized model (percent; mean ± sd over up to {seeds_n} seeds). "
                f"The paper's column is {ref_model}'s GLUE average"
                + ("" if model == ref_model else ", shown for scale: a different model and tasks")
                + "; bits/weight: the saved artifact's true size (codebooks, unquantized tensors and headers "
                  "included) per parameter.", "",
                _table(header, rows), ""]
        if before_stats:
            brows = [[s, str(b), *[_cell(before_stats.get((model, s, b, t))) for t in tasks]] for s, b in rows_keys]
            out += ["Right after quantization, before fine-tuning:", "",
                    _table(["scheme", "bits", *tasks], brows), ""]
        plots.append(_p1_plot(model, tasks, rows_keys, cell_stats, avg, fp32_stats, ref, ref_model,
                              plots_dir / f"p1-{_slug(model)}.png"))
        out += [f"![P1 {model}]({link}/{plots[-1].name})", ""]
    verdicts = p1_claims(avg, cell_stats, prior)
    return Section("\n".join(out), plots, verdicts, clashes)


def _p1_plot(model: str, tasks: list[str], rows_keys: list[tuple[str, int]], cells: Mapping[tuple, Stat],
             avg: Mapping[tuple, Stat], fp32: Mapping[tuple, Stat], ref: Mapping[str, Mapping[int, float]],
             ref_model: str, path: Path) -> Path:
    plt = _plt()
    panels = [*tasks, "average"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for scheme in sorted({s for s, _ in rows_keys}):
            bits = sorted(b for s, b in rows_keys if s == scheme)
            stats = [(b, avg.get((model, scheme, b)) if panel == "average" else cells.get((model, scheme, b, panel)))
                     for b in bits]
            stats = [(b, s) for b, s in stats if s is not None]
            if stats:
                line = ax.errorbar([b for b, _ in stats], [100 * s.mean for _, s in stats],
                                   yerr=[100 * s.sd for _, s in stats], marker="o", capsize=3, label=scheme)
                if panel == "average" and scheme in ref:
                    ax.plot(sorted(ref[scheme]), [ref[scheme][b] for b in sorted(ref[scheme])], ls=":",
                            color=line[0].get_color(), label=f"{scheme} (paper, {ref_model})")
        if panel != "average" and (model, panel) in fp32:
            ax.axhline(100 * fp32[(model, panel)].mean, color="gray", ls="--", label="FP32")
        ax.set_title(panel)
        ax.set_xticks(sorted({b for _, b in rows_keys} | (set(ref.get("kmeans", {})) if panel == "average" else set())))
        ax.set_xlabel("bits")
        ax.set_ylabel("score (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"P1: {model}")
    return _save(fig, path)


# --- P2 -----------------------------------------------------------------------------------------------------

def _aw(config: Mapping[str, Any]) -> str:
    return f"{config['ste']['abits']}/{config['ste']['wbits']}"


def p2_section(results: Sequence[Mapping[str, Any]], plots_dir: Path, link: str) -> Section:
    """Tables, plots and verdicts of P2's runs."""
    clashes: list[str] = []
    acc: dict[tuple, dict[int, float]] = defaultdict(dict)  # (task, A/W, method) at the main T -> {seed: acc}
    trace: dict[tuple, dict[int, float]] = defaultdict(dict)  # fitted trace; exact: in-plane curvature
    exact: dict[tuple, dict[int, float]] = defaultdict(dict)
    sweep_acc: dict[tuple, dict[int, float]] = defaultdict(dict)  # KD: (task, A/W, T) -> {seed: acc}
    sweep_trace: dict[tuple, dict[int, float]] = defaultdict(dict)
    teacher: dict[str, dict[str, float]] = defaultdict(dict)
    points = []  # (task, method, T, accuracy, trace) of every run with a landscape
    for r in results:
        c, stages = r["config"], r["stages"]
        if "regularize" not in stages or "ste" not in c:
            continue
        task, seed, aw = c["task"], c.get("seed", 0), _aw(c)
        method, T = c["regularize"]["method"], float(c["regularize"]["temperature"])
        score = task_score(task, stages["regularize"])
        tr, ex = (stages.get("landscape", {}).get("hessian", {}).get(k, {}).get("mean") for k in ("trace", "exact_trace"))
        if score is None:
            continue
        if method != "kd" or T == P2_PAPER_T:
            _put(acc, (task, aw, method), seed, score, clashes)
            for table, value in ((trace, tr), (exact, ex)):
                if value is not None:
                    table[(task, aw, method)][seed] = value
        if method == "kd":
            _put(sweep_acc, (task, aw, T), seed, score, [] if T == P2_PAPER_T else clashes)  # T = 4: counted above
            if tr is not None:
                sweep_trace[(task, aw, T)][seed] = tr
        if tr is not None:
            points.append((task, method, T, score, tr))
        if "finetune" in stages and (s := task_score(task, stages["finetune"])) is not None:
            teacher[task][stages["finetune"]["key"]] = s
    acc_s, trace_s, sacc_s, strace_s, exact_s = map(_stats, (acc, trace, sweep_acc, sweep_trace, exact))
    out = ["## P2: STE vs MSQE vs Fisher vs KD at the paper's A/W bit pairs", ""]
    plots: list[Path] = []
    for task in sorted({k[0] for k in acc_s} | {k[0] for k in sacc_s}):
        pairs = sorted({k[1] for k in acc_s if k[0] == task} | {k[1] for k in sacc_s if k[0] == task},
                       key=lambda aw: tuple(-int(x) for x in aw.split("/")))
        t_stat = Stat.of(list(teacher[task].values())) if teacher.get(task) else None

        def ref_of(aw: str) -> tuple[str, dict[str, float]]:
            source = task if task in P2_REFERENCE else next((t for t in P2_REFERENCE if aw in P2_REFERENCE[t]), "")
            return source, P2_REFERENCE.get(source, {}).get(aw, {})  # noqa: B023

        rows, trows = [], []
        for aw in pairs:
            source, ref = ref_of(aw)
            rows.append([aw, *[_cell(acc_s.get((task, aw, m))) + (f" ({ref[m]:.1f})" if m in ref else "")
                               for m in P2_METHODS], source or "–"])
            trows.append([aw, *[_cell(trace_s.get((task, aw, m)), 1.0, 3) + (
                f" [{_cell(exact_s[(task, aw, m)], 1.0, 3)}]" if (task, aw, m) in exact_s else "") for m in P2_METHODS]])
        out += [f"### {task}", "",
                f"Accuracy (percent, mean ± sd over seeds), KD at T = {P2_PAPER_T:g}; in parentheses the paper's "
                f"ResNet-18 figure for the same A/W (column 'paper'). FP32 teacher: {_cell(t_stat)}"
                + (f" (paper {P2_TEACHER[task]:.1f})" if task in P2_TEACHER else "") + ".", "",
                _table(["A/W", "STE", "MSQE", "Fisher", "KD", "paper"], rows), ""]
        if trace_s:
            out += ["Fitted Hessian trace of the loss surface (lower = flatter; P2's measure, and the one the "
                    "claims below are checked with); in brackets the exact in-plane curvature dx'Hdx + dy'Hdy "
                    "at the centre along the same directions:", "",
                    _table(["A/W", "STE", "MSQE", "Fisher", "KD"], trows), ""]
        temps = sorted({k[2] for k in sacc_s if k[0] == task})
        if len(temps) > 1:
            srows = [[f"{T:g}", *[f"{_cell(sacc_s.get((task, aw, T)))} / {_cell(strace_s.get((task, aw, T)), 1.0, 3)}"
                                  for aw in pairs]] for T in temps]
            out += ["KD temperature sweep (accuracy / fitted Hessian trace):", "",
                    _table(["T", *pairs], srows), ""]
        plots.append(_p2_bars(task, pairs, acc_s, plots_dir / f"p2-{_slug(task)}-accuracy.png"))
        out += [f"![P2 {task} accuracy]({link}/{plots[-1].name})", ""]
        task_points = [p for p in points if p[0] == task]
        if task_points:
            plots.append(_p2_scatter(task, task_points, plots_dir / f"p2-{_slug(task)}-trace.png"))
            out += [f"![P2 {task} accuracy vs trace]({link}/{plots[-1].name})", ""]
        if len(temps) > 1:
            plots.append(_p2_temperature(task, pairs, temps, sacc_s, strace_s,
                                         plots_dir / f"p2-{_slug(task)}-temperature.png"))
            out += [f"![P2 {task} temperature]({link}/{plots[-1].name})", ""]
    return Section("\n".join(out), plots, p2_claims(acc_s, trace_s, sacc_s, strace_s), clashes)


def _p2_bars(task: str, pairs: list[str], acc: Mapping[tuple, Stat], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(pairs), 3.4))
    width = 0.8 / len(P2_METHODS)
    for i, method in enumerate(P2_METHODS):
        xs = [j + (i - 1.5) * width for j, aw in enumerate(pairs) if (task, aw, method) in acc]
        stats = [acc[(task, aw, method)] for aw in pairs if (task, aw, method) in acc]
        ax.bar(xs, [100 * s.mean for s in stats], width, yerr=[100 * s.sd for s in stats], capsize=2, label=method)
    ax.set_xticks(range(len(pairs)), pairs)
    ax.set_xlabel("A/W bits")
    ax.set_ylabel("accuracy (%)")
    lows = [100 * (s.mean - s.sd) for k, s in acc.items() if k[0] == task]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 5), None)
    ax.legend(fontsize=7)
    ax.set_title(f"P2: {task}")
    return _save(fig, path)


def _p2_scatter(task: str, points: list[tuple], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in P2_METHODS:
        mine = [p for p in points if p[1] == method]
        if mine:
            ax.scatter([p[4] for p in mine], [100 * p[3] for p in mine], label=method, s=18)
    ax.set_xlabel("fitted Hessian trace (lower = flatter)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title(f"P2: {task}, accuracy vs curvature")
    return _save(fig, path)


def _p2_temperature(task: str, pairs: list[str], temps: list[float], acc: Mapping[tuple, Stat],
                    trace: Mapping[tuple, Stat], path: Path) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
    for aw in [aw for aw in pairs if sum((task, aw, T) in acc for T in temps) > 1]:
        for ax, table, scale in ((a1, acc, 100.0), (a2, trace, 1.0)):
            got = [(T, table[(task, aw, T)]) for T in temps if (task, aw, T) in table]
            if got:
                ax.errorbar([T for T, _ in got], [scale * s.mean for _, s in got], yerr=[scale * s.sd for _, s in got],
                            marker="o", capsize=3, label=aw)
    for ax, label in ((a1, "KD accuracy (%)"), (a2, "fitted Hessian trace")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("temperature T")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, title="A/W")
    fig.suptitle(f"P2: {task}, KD temperature sweep")
    return _save(fig, path)


# --- P3 -----------------------------------------------------------------------------------------------------

def _p3_column(config: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(P3 column, scheme of the quantized base or None) of a run; None for runs outside P3's table."""
    if "mask" in config["pipeline"]:
        bits = config["base"]["bits"]
        return ("structure", None) if bits == 32 else (f"structure-{bits}", config["base"].get("scheme", "kmeans"))
    return ("weights", None) if config["pipeline"] == ["finetune"] else None


def _p3_rows(stats: Mapping[tuple, Stat]) -> dict[tuple[str, str], tuple[str, dict[str, tuple]]]:
    """``{(row label, task): (model, {column: key of stats})}``: one row per model, task and scheme of the
    quantized bases; the full-precision columns (weights, structure) are shared by a model's rows."""
    rows: dict[tuple[str, str], tuple[str, dict[str, tuple]]] = {}
    for model, task in sorted({(k[0], k[1]) for k in stats}):
        schemes = sorted({k[3] for k in stats if k[:2] == (model, task) and k[3] is not None})
        for scheme in schemes or [None]:
            keys = {col: (model, task, col, None if col in ("weights", "structure") else scheme) for col in P3_COLUMNS}
            label = model if scheme is None else f"{model} [{scheme}]"
            rows[(label, task)] = (model, {col: k for col, k in keys.items() if k in stats})
    return rows


def p3_section(results: Sequence[Mapping[str, Any]], plots_dir: Path, link: str) -> Section:
    """Table, plots and verdicts of P3's runs (one row per scheme of the quantized bases)."""
    clashes: list[str] = []
    cells: dict[tuple, dict[int, float]] = defaultdict(dict)
    kept: dict[tuple, dict[int, float]] = defaultdict(dict)
    mask_bits: dict[tuple, dict[int, float]] = defaultdict(dict)
    prior: dict[tuple, float] = {}
    for r in results:
        c, stages = r["config"], r["stages"]
        where = _p3_column(c)
        last = stages.get("mask") or stages.get("finetune")
        if where is None or last is None:
            continue
        key = (c["model"], c["task"])
        if (score := task_score(c["task"], last)) is not None:
            _put(cells, (*key, *where), c.get("seed", 0), score, clashes)
        if (p := task_score(c["task"], last, "prior_metrics")) is not None:
            prior[key] = p
        if "mask" in stages and stages["mask"].get("kept"):
            kept[(*key, *where)][c.get("seed", 0)] = stages["mask"]["kept"][-1]
        if (bits := stages.get("mask", {}).get("sizes", {}).get("mask_bits_per_weight")) is not None:
            mask_bits[(*key, *where)][c.get("seed", 0)] = bits
    stats, kept_s, bits_s = _stats(cells), _stats(kept), _stats(mask_bits)
    layout = _p3_rows(stats)
    view = {(label, task, col): stats[k] for (label, task), (_, keys) in layout.items() for col, k in keys.items()}
    view_prior = {(label, task): prior[(model, task)] for (label, task), (model, _) in layout.items()
                  if (model, task) in prior}
    rows = []
    for (label, task), (_, keys) in layout.items():
        rows.append([label, task, *[_cell(stats.get(keys[col]) if col in keys else None, 1.0, 3)
                                    for col in P3_COLUMNS],
                     "–" if (label, task) not in view_prior else f"{view_prior[(label, task)]:.3f}"])
        rows.append(["", "kept fraction", "", *[_cell(kept_s.get(keys[col]) if col in keys else None, 1.0, 3)
                                                 for col in P3_COLUMNS[1:]], ""])
        if any(keys.get(col) in bits_s for col in P3_COLUMNS[1:]):
            rows.append(["", "mask bits/weight on disk", "",
                         *[_cell(bits_s.get(keys[col]) if col in keys else None, 1.0, 3) for col in P3_COLUMNS[1:]],
                         ""])
    for model, ref in P3_REFERENCE.items():
        rows.append([f"paper: {model} [linear]", "glue/mrpc (F1)", *[f"{ref[col]:.3f}" for col in P3_COLUMNS],
                     f"{ref['prior']:.3f}"])
    out = ["## P3: fine-tuning the weights vs the structure (binary mask), on 8/4/2/1-bit weights", "",
           "Main metric on the evaluation split (fraction; mean ± sd over seeds). 'structure-b': the mask is learned "
           "over the pretrained weights quantized to b bits, with the scheme in brackets (P3 quantizes linearly); "
           "'weights' and 'structure' are full precision and shared by a model's rows; 'kept fraction': weights "
           "the mask keeps; 'mask bits/weight on disk': the stored mask (bit-packed or entropy-coded, whichever is "
           "smaller) per masked weight, against 1 bit for a plain bitmask; 'label prior': always predicting the "
           "training split's most frequent class.", "",
           _table(["model [base scheme]", "task", *P3_COLUMNS, "label prior"], rows), ""]
    plots = []
    for (label, task), (model, _) in layout.items():
        plots.append(_p3_plot(label, model, task, view, view_prior.get((label, task)),
                              plots_dir / f"p3-{_slug(label)}-{_slug(task)}.png"))
        out += [f"![P3 {label} {task}]({link}/{plots[-1].name})", ""]
    verdicts = p3_claims(view, view_prior)
    if any(k[3] == "kmeans" for k in stats) and any(k[3] == "linear" for k in stats):
        verdicts.append(p3_scheme_claim(stats))
    return Section("\n".join(out), plots, verdicts, clashes)


def _p3_plot(label: str, model: str, task: str, stats: Mapping[tuple, Stat], prior: float | None,
             path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    cols = [c for c in P3_COLUMNS if (label, task, c) in stats]
    ax.bar(range(len(cols)), [stats[(label, task, c)].mean for c in cols],
           yerr=[stats[(label, task, c)].sd for c in cols], capsize=3, color="tab:blue", label="ours")
    ref = P3_REFERENCE.get(model) if label in (model, f"{model} [linear]") else None  # P3 quantizes linearly
    if ref:
        ax.plot(range(len(cols)), [ref[c] for c in cols], "o", color="tab:orange", label="paper")
    if prior is not None:
        ax.axhline(prior, color="gray", ls="--", label="label prior")
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_ylabel("main metric")
    ax.legend(fontsize=7)
    ax.set_title(f"P3: {label}, {task}")
    return _save(fig, path)


# --- everything ---------------------------------------------------------------------------------------------

def other_section(results: Sequence[Mapping[str, Any]]) -> Section:
    """Runs of recipes that fill no paper table: one row each."""
    rows = []
    for r in results:
        metrics = r.get("metrics", {})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
        rows.append([r["recipe"].get("name", "?"), r["run_id"], " ".join(f"{k}={v}" for k, v in
                                                                          sorted(r.get("point", {}).items())), shown])
    return Section("\n".join(["## Other runs", "", _table(["recipe", "run", "grid point", "metrics"], rows), ""]))


def _sweep_lines(directory: Path) -> list[str]:
    """Wall time of every sweep invocation recorded in the folder that computed at least one run."""
    path = directory / SWEEP_LOG
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            continue
        if rec.get("done"):
            shard = f" shard {rec['shard']}" if rec.get("shard") else ""
            lines.append(f"- `{rec.get('recipe')}`{shard} on {rec.get('host')}: {rec['done']} run(s) computed, "
                         f"{rec.get('skipped', 0)} already done, {rec.get('failed', 0)} failed, wall time "
                         f"{rec.get('wall_s', float('nan')):.0f} s ({rec.get('processes', 1)} process(es), "
                         f"started {rec.get('started_at')})")
    return lines


def build_report(results: Sequence[Mapping[str, Any]], plots_dir: Path, link: str, source: str = "",
                 sweeps: Sequence[str] = (), skipped: Sequence[str] = ()) -> tuple[str, list[Path], list[Verdict]]:
    """Render the Markdown report of ``results``; plots go to ``plots_dir`` and are linked as ``link/NAME``.
    ``skipped``: one line per record left out and why, listed at the top."""
    by_paper: dict[str | None, list] = defaultdict(list)
    for r in results:
        by_paper[(r.get("recipe") or {}).get("paper")].append(r)
    recipes = sorted({(r.get("recipe") or {}).get("name", "?") for r in results})
    compute = sum(r.get("timings", {}).get("total_s", 0.0) for r in results)
    v = results[0].get("versions", {}) if results else {}
    parts = ["# fewbits report", "",
             f"{len(results)} finished runs{f' in `{source}`' if source else ''} from recipes "
             f"{', '.join(f'`{n}`' for n in recipes)}; {compute:.0f} s of run time in total. Versions: fewbits "
             f"{v.get('fewbits')} (commit {str(v.get('git_commit'))[:10]}), torch {v.get('torch')}, python "
             f"{v.get('python')}.", ""]
    if skipped:
        parts += [f"**Skipped**: {len(skipped)} damaged or unusable record(s), left out of every table (run the "
                  "sweep again to recompute them):", "", *(f"- `{line}`" for line in skipped), ""]
    if sweeps:
        parts += ["Sweeps that computed these runs:", "", *sweeps, ""]
    from fewbits.experiments.report_extra import extra_sections

    sections = []
    for paper, build in (("P1", p1_section), ("P2", p2_section), ("P3", p3_section)):
        if by_paper.get(paper):
            sections.append(build(by_paper[paper], plots_dir, link))
            sections += extra_sections(paper, by_paper[paper], plots_dir, link)
    verdicts = [vd for s in sections for vd in s.verdicts]
    clashes = [c for s in sections for c in s.clashes]
    if clashes:
        parts += [f"**Warning**: {len(clashes)} run(s) fill a table cell and seed that another run already fills "
                  f"(their settings differ in something the tables do not show, e.g. runs of an older version of "
                  f"a recipe): {', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}. Only one of each is "
                  f"shown; report one recipe's runs with --recipe.", ""]
    if verdicts:
        parts += ["## Which of the papers' claims hold in our runs", "",
                  "Computed from the tables below (means over seeds); 'holds at k/n' counts the comparisons the "
                  "claim makes.", ""]
        for paper in ("P1", "P2", "P3"):
            mine = [vd for vd in verdicts if vd.paper == paper]
            if mine:
                parts += [f"**{paper}**", "", *[vd.line() for vd in mine], ""]
    parts += [s.markdown for s in sections]
    if by_paper.get(None):
        parts.append(other_section(by_paper[None]).markdown)
    return "\n".join(parts).rstrip() + "\n", [p for s in sections for p in s.plots], verdicts


def results_folder(results_dir: str | os.PathLike) -> Path:
    """``results_dir`` as a Path, refused in one line when it is not a folder (missing, or a file)."""
    directory = Path(results_dir).expanduser()
    if not directory.is_dir():
        problem = "is a file, not a folder" if os.path.lexists(directory) else "does not exist"
        raise FewbitsValueError(f"The results folder {str(directory)!r} {problem}; give the --out folder of "
                                "a fewbits sweep.")
    return directory


def report_path(results_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Where the report of ``results_dir`` goes: ``out``, else ``results_dir/report.md``."""
    return Path(out).expanduser() if out is not None else Path(results_dir).expanduser() / "report.md"


def _gather(directory: Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Valid results, skipped records (file: why) and sweep lines of a results folder or of its child folders."""
    folders = [directory] + sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
                                   and not os.path.lexists(p / "result.json"))
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    sweeps: list[str] = []
    for folder in folders:
        found, bad = Store(folder).scan()
        for r in found:
            if problem := table_problem(r):
                bad.append(f"{folder / r['run_id'] / 'result.json'}: {problem}")
            else:
                results.append(r)
        skipped += bad
        sweeps += _sweep_lines(folder)
    return results, skipped, sweeps


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 recipes: Sequence[str | os.PathLike] = ()) -> tuple[Path, list[Path]]:
    """Write the Markdown report of every finished run under ``results_dir`` (default ``results_dir/report.md``),
    its plots in ``<report stem>-plots/`` beside it; returns (report path, plot paths). With ``recipes`` (recipe
    files), only the runs those recipes define now are reported.

    Several results folders can be reported together by pointing at their common parent: every
    ``*/result.json`` one or two levels down is read. Example: ``write_report("results", "reports/offline.md")``.
    """
    directory = results_folder(results_dir)
    results, skipped, sweeps = _gather(directory)
    for line in skipped:
        log.warning("report: skipped %s", line)
    if recipes:
        from fewbits.experiments.recipe import load_recipe

        wanted = {run.run_id for path in recipes for run in load_recipe(path).runs}
        results = [r for r in results if r.get("run_id") in wanted]
    if not results:
        damaged = f" ({len(skipped)} damaged record(s) skipped: {skipped[0]})" if skipped else ""
        raise FewbitsValueError(f"No finished run (*/result.json) under {str(directory)!r}"
                                f"{' of the given recipes' if recipes else ''}{damaged}; run fewbits sweep first.")
    path = report_path(directory, out)
    plots_dir = path.parent / f"{path.stem}-plots"
    text, plots, _ = build_report(results, plots_dir, plots_dir.name, str(directory), sweeps, skipped)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path, plots


__all__ = ["build_report", "task_score", "write_report"]
