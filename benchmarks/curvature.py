"""Fitted paraboloid trace vs the exact in-plane curvature on a trained MNIST-1D CNN (issue 15).

Trains the built-in ``cnn1d`` on ``mnist1d`` briefly (offline), then for several filter-normalized
direction pairs computes the loss surface and, through the library (``fewbits.analysis.landscape``
and ``fit_paraboloid``), the fitted paraboloid's trace at a few radii and loss thresholds beside
the exact in-plane curvature ``dx^T H dx + dy^T H dy`` (two Hessian-vector products per pair,
``in_plane_hessian``) and the Hutchinson trace of the full Hessian. Writes its section of
BENCHMARKS.md.

Run: ``.venv/bin/python benchmarks/curvature.py [--epochs 5] [--pairs 4] [--grid 21]`` (a few minutes of CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fewbits.analysis import evaluate, fit_paraboloid, hutchinson_trace, landscape  # noqa: E402
from fewbits.commands.landscape import evaluation_batches  # noqa: E402
from fewbits.data import load_task  # noqa: E402
from fewbits.models import build_model  # noqa: E402
from fewbits.train import TrainConfig, train  # noqa: E402

#: (label, radius, max_loss) of the fits compared; the grid's own square first.
FITS = (("whole grid", None, None), ("loss <= 3 (P2's scripts)", None, 3.0), ("radius 0.5", 0.5, None),
        ("radius 0.25", 0.25, None))
SMALL_SPAN = 0.05  # a second, small surface: does the fit approach the exact curvature as the span shrinks?


def trained_cnn(epochs: int, seed: int) -> tuple[torch.nn.Module, object, float]:
    """``cnn1d`` trained on mnist1d (AdamW lr 3e-3, batch 64), its task and the training seconds."""
    task = load_task("mnist1d")
    torch.manual_seed(seed)
    model = build_model("cnn1d")
    start = time.process_time()
    train(model, task, TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, seed=seed, progress=False, log_every=10**6))
    return model.eval(), task, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (5)")
    parser.add_argument("--pairs", type=int, default=4, help="direction pairs (4)")
    parser.add_argument("--grid", type=int, default=21, help="grid points per axis (21, the CLI's default)")
    parser.add_argument("--eval-size", type=int, default=500, help="evaluation examples (500, the CLI's default)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    model, task, train_s = trained_cnn(args.epochs, 0)
    batches = evaluation_batches(task, None, args.eval_size, 128, 128)
    centre = evaluate(model, batches)
    result = landscape(model, batches, pairs=args.pairs, grid=args.grid, span=1.0, seed=0)
    small = landscape(model, batches, directions=result.directions, grid=7, span=SMALL_SPAN, exact=False)
    full = hutchinson_trace(model, batches, max_probes=200, min_probes=20, tol=0.02)
    rows = ["| pair | fit | fitted trace | R^2 | exact in-plane curvature | fitted / exact |", "|---|---|---|---|---|---|"]
    small_label = f"7x7 grid of half-width {SMALL_SPAN}"
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in FITS + ((small_label, None, None),)}
    for p, (surface, hessian) in enumerate(zip(result.surfaces, result.exact)):
        exact = float(np.trace(hessian))
        fits = [(label, fit_paraboloid(surface, radius=radius, max_loss=max_loss)) for label, radius, max_loss in FITS]
        for label, fit in fits + [(small_label, small.fits[p])]:
            ratios[label].append(fit.trace / exact)
            rows.append(f"| {p} | {label} | {fit.trace:.4g} | {fit.r2:.3f} | {exact:.4g} | {fit.trace / exact:.2f} |")
    summary = [f"- {label}: fitted / exact {min(r):.2f}-{max(r):.2f} (median {statistics.median(r):.2f})"
               for label, r in ratios.items()]
    text = "\n".join([
        "## Fitted vs exact curvature on a trained MNIST-1D CNN (`benchmarks/curvature.py`)", "",
        f"Measured on {machine_line()}; load average {load:.1f}. `cnn1d` trained on mnist1d for {args.epochs} "
        f"epochs (AdamW lr 3e-3, batch 64, seed 0; {train_s:.0f} s CPU): loss {centre.loss:.4f}, accuracy "
        f"{100 * centre.accuracy:.1f}% on the first {args.eval_size} evaluation examples, the set every number "
        f"below is computed on. {args.pairs} filter-normalized direction pairs (seed 0), a {args.grid}x{args.grid} "
        "grid of half-width 1 (the CLI's defaults), each surface fitted (`fit_paraboloid`) over the whole grid, "
        f"over the points with loss <= 3, and within radius 0.5 and 0.25, and on a second surface, a 7x7 grid of "
        f"half-width {SMALL_SPAN} along the same pairs; exact = `in_plane_hessian`'s trace "
        "`dx^T H dx + dy^T H dy` at the centre. Full Hessian trace (Hutchinson, "
        f"{full.probes} probes): {full.trace:.4g} ± {full.standard_error:.2g}.", "",
    ] + summary + [""] + rows)
    print(text)
    if not args.no_write:
        write_section("curvature", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
