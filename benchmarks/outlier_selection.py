"""Which weights to keep exact: the largest |w| or the largest Fisher-weighted error? MiniLM-L6 on vader.

Run after ``benchmarks/sensitivity.py`` (it reuses that study's FP32 models and Fisher estimates):
``python benchmarks/outlier_selection.py [--work DIR] [--seeds 0 1 2]``. For each seed, bits (2, 3) and
fraction (0.1%, 0.5%): ``optimal`` with Fisher-weighted codebooks and outliers chosen each way; the
summed Fisher-weighted squared error over every compressed layer and the dev accuracy right after
quantization. Table to BENCHMARKS.md (section ``outlier-selection``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

import fewbits  # noqa: E402
from fewbits.data import load_task  # noqa: E402
from fewbits.models import load_model  # noqa: E402
from fewbits.protocols.codebook import eval_sorted  # noqa: E402
from fewbits.train import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/fewbits-sensitivity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    task = load_task("vader")
    cells: dict[tuple, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        folder = Path(args.work) / f"fp32-{seed}"
        model, tokenizer = load_model(folder / "model", task, new_head=False)
        fisher = load_file(str(folder / "fisher.safetensors"))
        dev = eval_sorted(task, tokenizer, 16)
        for bits in (2, 3):
            for fraction in (0.001, 0.005):
                for selection in ("magnitude", "error"):
                    q = copy.deepcopy(model)
                    fewbits.compress(q, "optimal", bits, sample_weights=fisher, outliers=fraction,
                                     outlier_selection=selection)
                    err = sum(float(((q.get_submodule(n).weight - model.get_submodule(n).weight).double() ** 2
                                     * f.double()).sum()) for n, f in fisher.items())
                    acc = evaluate(q, dev, tokenizer=tokenizer, max_length=16, batch_size=256)["accuracy"]
                    cells.setdefault((bits, fraction, selection), []).append((err, acc))
                    print(seed, bits, fraction, selection, err, acc, flush=True)
    rows = []
    for (bits, fraction, selection), values in cells.items():
        errs, accs = [v[0] for v in values], [v[1] for v in values]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(f"| {bits} | {100 * fraction:.1f}% | {selection} | {statistics.mean(errs):.4g} | "
                    f"{100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} |")
    section = "\n".join([
        "## Outliers: keep the largest |w| or the largest Fisher-weighted error?", "",
        f"`benchmarks/outlier_selection.py`: MiniLM-L6 / vader, seeds {args.seeds} (the FP32 models and Fisher "
        f"of `sensitivity.py`), `optimal` with Fisher-weighted codebooks, uniform bits, no fine-tuning. "
        f"{machine_line()}.", "",
        "| bits | outliers | selection | Fisher-weighted error (mean) | dev accuracy % |", "|---|---|---|---|---|",
        *rows])
    write_section("outlier-selection", section)
    print(section)


if __name__ == "__main__":
    main()
