"""Time of ``optimal`` against an older commit's code, in one process, alternating, on the tensors of
``benchmarks/quantizers.py``: the cost of a change to its kernels, measured where the machine is shared.

The old ``_kernels.py``, ``_optimal_dp.py`` (where it exists) and ``cluster.py`` are read with ``git
show COMMIT:path`` into a package of their own under ``~/.cache/fewbits-bench`` (numba caches its
compiled loops there), so old and new run side by side on the same tensors. Each cell runs old and new
in turn ``--rounds`` times; it reports the median CPU time of each (one thread) and the median of the
per-round ratios new / old. Writes its table into BENCHMARKS.md (section ``optimal-speed``).

Run: ``.venv/bin/python benchmarks/optimal_speed.py`` (a few minutes); ``--against COMMIT`` picks the old code
(default: the last commit before the outlier fix of issue 15).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _report import machine_line, write_section
from fewbits.quantize import optimal
from quantizers import laplace, minilm_weights

BEFORE_OUTLIER_FIX = "377b41c"
FILES = ("_kernels.py", "_optimal_dp.py", "cluster.py")


def old_optimal(commit: str) -> Callable[..., object]:
    """``optimal`` as of ``commit``, from a package built of that commit's quantizer files."""
    sha = subprocess.run(["git", "rev-parse", "--short=10", commit], capture_output=True, text=True, check=True).stdout.strip()
    pkg = f"fewbits_at_{sha}"
    root = Path.home() / ".cache" / "fewbits-bench"
    folder = root / pkg
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    for name in FILES:
        shown = subprocess.run(["git", "show", f"{commit}:src/fewbits/quantize/{name}"], capture_output=True, text=True)
        if shown.returncode != 0:
            continue
        text = shown.stdout.replace("from fewbits.quantize import _kernels", f"from {pkg} import _kernels")
        text = text.replace("from fewbits.quantize._kernels import", f"from {pkg}._kernels import")
        target = folder / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{pkg}.cluster").optimal


def cells() -> list[tuple[str, list[torch.Tensor], int, dict, int | None]]:
    """(label, tensors, bits, keyword arguments of optimal, rounds or None for ``--rounds``) of every
    timed cell; a cell of several tensors times them all, one after the other."""
    lap = [laplace((768, 3072), 1)]
    w = minilm_weights()
    out = [(f"Laplace 768x3072, {b} bits", lap, b, {}, None) for b in (1, 2, 3, 4, 8)]
    out.append(("Laplace 768x3072, 128 groups, 3 bits", lap, 3, {"groups": 128}, None))
    dense = [w["encoder.layer.0.output.dense.weight"]]
    out += [(f"MiniLM 384x1536 (L0 output.dense), exact, {b} bits", dense, b, {"mode": "exact"}, None) for b in (3, 4)]
    out += [(f"MiniLM 384x1536 (L0 output.dense), {b} bits", dense, b, {}, None) for b in (3, 8)]
    out.append(("MiniLM 1536x384 (L0 intermediate.dense), 4 bits", [w["encoder.layer.0.intermediate.dense.weight"]], 4,
                {}, None))
    out.append(("MiniLM 30522x384 (word_embeddings), 3 bits", [w["embeddings.word_embeddings.weight"]], 3, {}, None))
    every = list(w.values())
    out += [(f"MiniLM-L6, all {len(every)} 2-D weights, {b} bits", every, b, {}, None if b < 8 else 3) for b in (3, 4, 8)]
    return out


def cpu_seconds(fn: Callable[..., object], tensors: list[torch.Tensor], bits: int, kw: dict) -> float:
    """CPU time of ``fn`` on every tensor (this process, one thread)."""
    start = time.process_time()
    for x in tensors:
        fn(x, bits, **kw)
    return time.process_time() - start


def measure(old: Callable[..., object], rounds: int) -> list[str]:
    """One table row per cell: old and new medians and the median per-round ratio."""
    rows = ["| cell | old ms | new ms | new / old (median of rounds) | range of ratios |", "|---|---|---|---|---|"]
    for label, tensors, bits, kw, cell_rounds in cells():
        old(tensors[0], bits, **kw), optimal(tensors[0], bits, **kw)  # warm caches (and compile) outside the timings
        t_old, t_new = [], []
        for r in range(cell_rounds or rounds):
            pair = [(old, t_old), (optimal, t_new)]
            for fn, sink in (pair if r % 2 == 0 else pair[::-1]):
                sink.append(cpu_seconds(fn, tensors, bits, kw))
        ratios = sorted(n / o for n, o in zip(t_new, t_old))
        rows.append(f"| {label} | {statistics.median(t_old) * 1e3:.0f} | {statistics.median(t_new) * 1e3:.0f} | "
                    f"{statistics.median(ratios):.2f}x | {ratios[0]:.2f}-{ratios[-1]:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=BEFORE_OUTLIER_FIX, help="the old commit (default: before the outlier fix)")
    parser.add_argument("--rounds", type=int, default=9, help="old/new pairs per cell")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    old = old_optimal(args.against)
    load = os.getloadavg()[0]
    rows = measure(old, args.rounds)
    text = "\n".join([
        f"### `optimal` before and after the outlier fix (`benchmarks/optimal_speed.py --against {args.against}`)", "",
        f"Measured on {machine_line()}; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. "
        f"Old = `optimal` of commit {args.against} (the quantizer files of that commit, imported beside the current "
        f"ones), new = this checkout's; in one process, old and new alternating, {args.rounds} rounds per cell "
        "(3 for the whole model at 8 bits); CPU time of this single-threaded process (valid under load), "
        "medians; the ratio is the median of the rounds' new / old. Default mode unless the cell says exact.",
        ""] + rows)
    print(text)
    if not args.no_write:
        write_section("optimal-speed", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
