"""Cost of a 2-D loss surface against the evaluation passes it needs (grid points x one plain pass).

Run: ``.venv/bin/python benchmarks/landscape.py [--repeats 9] [--grid 7] [--examples 512] [--threads 1]``.
A "plain pass" is the loop anyone would write: model in eval mode, ``torch.no_grad``, forward every
batch of the fixed evaluation set, sum the cross-entropy and the correct predictions, one
``float()`` at the end. The surface is ``fewbits.analysis.surface_2d`` on a grid x grid square
(building the perturbed weights, swapping them in, evaluating, restoring). Each repeat times it two
ways: the whole surface in one call against grid^2 plain passes (real use), and row by row (one
call per row, each timed back to back with grid plain passes, alternating which goes first: less
exposed to the load changing between the two sides, but paying the per-call setup of checking
directions and moving batches once per row). The table gives the median over repeats of surface
time / plain time. Target: <= 1.1. The machine is shared, so
only the side-by-side ratio means anything; one torch thread (default) keeps the two sides from
competing differently for the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fewbits.analysis import direction_pairs, grid_coordinates, surface_2d  # noqa: E402
from fewbits.models import build_model  # noqa: E402


def plain_pass(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """One evaluation pass as written by hand: mean loss and accuracy."""
    loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    count = 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(-1) == y).sum()
            count += len(y)
    return float(loss) / count, float(correct) / count


def models() -> dict[str, nn.Module]:
    """The small models measured: an MLP and the built-in MNIST-1D CNN, on signals of length 40."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return {"MLP 40-256-256-10": mlp, "cnn1d (width 32)": build_model("cnn1d")}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: nn.Module, batches: list, grid: int, repeats: int) -> dict[str, float]:
    """Median over repeats of surface time / (grid^2 plain passes), for the two protocols."""
    model.eval()
    pair = direction_pairs(model, 1, seed=0)[0]
    coords = grid_coordinates(grid, 1.0)
    surface_2d(model, batches, pair, coords[:2], coords[:2])  # warm-up
    plain_pass(model, batches)

    def plain(n: int) -> None:
        for _ in range(n):
            plain_pass(model, batches)

    whole, rows, per_pass = [], [], []
    for r in range(repeats):
        # whole surface: one call, against grid^2 plain passes, alternating which goes first
        first, second = (lambda: plain(grid * grid)), (lambda: surface_2d(model, batches, pair, coords))
        if r % 2:
            t_surface, t_plain = _timed(second), _timed(first)
        else:
            t_plain, t_surface = _timed(first), _timed(second)
        whole.append(t_surface / t_plain)
        per_pass.append(t_plain / grid**2)
        # row by row: one call per row, each against grid plain passes
        spent = {"plain": 0.0, "surface": 0.0}
        for i, alpha in enumerate(coords):
            for what in (("plain", "surface") if (i + r) % 2 == 0 else ("surface", "plain")):
                if what == "plain":
                    spent[what] += _timed(lambda: plain(grid))
                else:
                    spent[what] += _timed(lambda: surface_2d(model, batches, pair, [alpha], coords))
        rows.append(spent["surface"] / spent["plain"])
    return {"whole": statistics.median(whole), "whole_range": (min(whole), max(whole)),
            "rows": statistics.median(rows), "rows_range": (min(rows), max(rows)),
            "pass_ms": 1e3 * statistics.median(per_pass)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.examples, 1, 40, generator=g)
    y = torch.randint(0, 10, (args.examples,), generator=g)
    batches = list(zip(x.split(args.batch_size), y.split(args.batch_size)))
    rows = []
    for name, model in models().items():
        m = measure(model, batches, args.grid, args.repeats)
        rows.append(f"| {name} | {sum(p.numel() for p in model.parameters()):,} | {m['pass_ms']:.2f} | "
                    f"**{m['whole']:.3f}** ({m['whole_range'][0]:.2f}-{m['whole_range'][1]:.2f}) | "
                    f"{m['rows']:.3f} ({m['rows_range'][0]:.2f}-{m['rows_range'][1]:.2f}) |")
        print(rows[-1], flush=True)
    table = "\n".join([
        "## Loss landscape: cost of a 2-D surface",
        "",
        f"`benchmarks/landscape.py`: time of a {args.grid}x{args.grid} surface (`fewbits.analysis.surface_2d`) "
        f"divided by the time of {args.grid}^2 hand-written evaluation passes over the same {args.examples} random "
        f"signals (batches of {args.batch_size}), measured side by side; median of {args.repeats} repeats "
        f"(min-max in brackets), {torch.get_num_threads()} torch thread(s). *Whole*: the surface in one call "
        "(real use). *Row by row*: one call per grid row, each timed next to as many plain passes (steadier "
        "on a loaded machine, but pays the per-call setup once per row). Target: ratio <= 1.1.",
        "",
        "| model | parameters | plain pass (ms) | ratio, whole surface | ratio, row by row |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Measured on {machine_line()}.",
    ])
    write_section("landscape", table)
    print("wrote the landscape section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
