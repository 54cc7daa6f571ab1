"""Loss landscape of a trained model (P2's flatness): 2-D surfaces along filter-normalized directions.

For each of --pairs random direction pairs (drawn from --seed and normalized per filter against this
model, or read from --directions so that several models share them), the loss and accuracy are
evaluated on a --grid x --grid square of half-width --span around the model's effective weights,
over the first --eval-size examples of the task's evaluation split, in eval mode. A paraboloid is
fitted near the centre of each surface; its 2x2 Hessian, trace and determinant are averaged over the
pairs (mean +- sd). Lower trace = flatter minimum. Beside it, the exact in-plane curvature
dx^T H dx + dy^T H dy at the centre along the same pairs (two Hessian-vector products per pair): the
fit measures the surface over the whole span (on ReLU nets 1.3-4.7x the exact value), the exact one
the Hessian itself.

Writes into --out: landscape.json (settings, centre loss, every fit, the summary), directions.safetensors
(the pairs used; give it to --directions when analysing other models), surface_pairK.png/.npz
(contour + 3-D view; the grid, loss[i, j] at alphas[i], betas[j]) and slices.png/.json (the 1-D
slices through the centre of the first pair).
Cost: pairs x grid^2 evaluation passes over the evaluation set.

--model takes a directory written by fewbits finetune, an artifact written by fewbits.save or
fewbits qat (OUT/model, or the run folder OUT), or a model name.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fewbits.commands.preflight import add_threads_argument, apply_threads, check_out_dir

TASK_HELP = "task name: vader, vader-regression, glue/<task>, mnist1d, cifar10, cifar100"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `fewbits landscape` and `fewbits hessian`."""
    parser.add_argument("--model", required=True,
                        help="directory written by fewbits finetune, a fewbits artifact (fewbits.save / fewbits qat "
                             "OUT/model or OUT), or a model name")
    parser.add_argument("--task", required=True, help=TASK_HELP)
    parser.add_argument("--data-dir", default=None, help="folder with the task's files (as for fewbits finetune)")
    parser.add_argument("--eval-size", type=int, default=500,
                        help="examples of the evaluation split to use, the first ones in order (500; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per forward pass (128)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text input after truncation (128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions / probes (0)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_threads_argument(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits landscape`."""
    add_common_arguments(parser)
    parser.add_argument("--grid", type=int, default=21, help="grid points per axis (21)")
    parser.add_argument("--span", type=float, default=1.0, help="half-width of the grid in direction units (1.0)")
    parser.add_argument("--pairs", type=int, default=10, help="direction pairs (10, as P2)")
    parser.add_argument("--directions", default=None,
                        help="directions.safetensors of an earlier run (e.g. of the reference STE model) to reuse")
    parser.add_argument("--include-1d", action="store_true",
                        help="also perturb biases and normalization parameters (default: left out)")
    parser.add_argument("--radius", type=float, default=None,
                        help="fit the paraboloid only to points within this distance of the centre (default: all)")
    parser.add_argument("--max-loss", type=float, default=None,
                        help="drop points above this loss from the fit (the P2 authors' scripts use 3)")


def check_positive(args: argparse.Namespace, names: list[str], verb: str, allow_zero: tuple[str, ...] = ()) -> None:
    """Raise the template error for an option that must be a positive (or, if listed, non-negative) number."""
    from fewbits.errors import bad_param

    for name in names:
        value = getattr(args, name)
        if value is None:
            continue
        low_ok = value >= 0 if name in allow_zero else value > 0
        if not low_ok:
            kind = "a non-negative number" if name in allow_zero else "a positive number"
            raise bad_param(f"--{name.replace('_', '-')}", kind, value, f"fewbits {verb}")


def load_for_analysis(model_arg: str, task: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a finetune directory, a fewbits artifact (QAT or not), or a model name."""
    from fewbits.loading import load_any

    return load_any(model_arg, task, new_head=False)


def evaluation_batches(task: Any, tokenizer: Any, eval_size: int, batch_size: int, max_length: int) -> list[Any]:
    """The fixed evaluation set: the first ``eval_size`` examples (0 = all) of the evaluation split, collated."""
    from fewbits.data import make_collate

    examples = task.splits[task.eval_split]
    n = len(examples) if eval_size == 0 else min(eval_size, len(examples))
    collate = make_collate(task, tokenizer, max_length=max_length)
    return [collate([examples[i] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]


def run(args: argparse.Namespace) -> int:
    """Load, draw or read directions, evaluate the surfaces, fit, write and print the summary."""
    from fewbits.analysis import (
        check_directions,
        direction_pairs,
        evaluate,
        landscape,
        load_directions,
        plot_slices,
        plot_surface,
        save_directions,
    )
    from fewbits.data import load_task
    from fewbits.errors import bad_param

    check_positive(args, ["batch_size", "max_length", "span", "pairs", "radius"], "landscape")
    check_positive(args, ["eval_size"], "landscape", allow_zero=("eval_size",))
    if args.grid < 3:
        raise bad_param("--grid", "an int >= 3", args.grid, "fewbits landscape")
    out = check_out_dir(args.out, "landscape", files=("landscape.json", "directions.safetensors"))
    apply_threads(args, "landscape")
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task, args.data_dir)
    model, tokenizer = load_for_analysis(args.model, task)
    batches = evaluation_batches(task, tokenizer, args.eval_size, args.batch_size, args.max_length)
    if args.directions:
        pairs, meta = load_directions(args.directions)
        check_directions(model, {**pairs[0][0], **pairs[0][1]})  # fail before any evaluation
        source = {"file": str(args.directions), **meta}
    else:
        pairs = direction_pairs(model, args.pairs, args.seed, include_1d=args.include_1d)
        source = {"seed": args.seed, "reference": str(args.model), "include_1d": args.include_1d}
    save_directions(out / "directions.safetensors", pairs, source)
    centre = evaluate(model, batches)
    result = landscape(model, batches, directions=pairs, grid=args.grid, span=args.span, radius=args.radius,
                       max_loss=args.max_loss, progress=not args.no_progress)
    for k, surface in enumerate(result.surfaces):
        plot_surface(surface, out / f"surface_pair{k}.png", title=f"{task.name}: pair {k}",
                     max_loss=args.max_loss, curvature=(result.fits[k].trace, float(result.exact[k].trace())))
    plot_slices(result.surfaces[0].slices(), out / "slices.png", title=f"{task.name}: slices of pair 0")
    report = {"model": str(args.model), "task": task.name, "split": task.eval_split, "examples": centre.count,
              "centre": {"loss": centre.loss, "accuracy": centre.accuracy}, "directions": source, **result.to_dict()}
    (out / "landscape.json").write_text(json.dumps(report, indent=2))
    s = result.summary
    acc = "" if centre.accuracy is None else f", accuracy {centre.accuracy:.4f}"
    print(f"{task.name} {task.eval_split} ({centre.count} examples): centre loss {centre.loss:.4f}{acc}")
    print(f"fitted Hessian over {s['pairs']} direction pairs (grid {args.grid}, span {args.span}): "
          f"trace {s['trace']['mean']:.4g} +- {s['trace']['sd']:.2g}, "
          f"determinant {s['determinant']['mean']:.4g} +- {s['determinant']['sd']:.2g}, "
          f"R^2 {s['r2']['mean']:.3f}, points dropped {s['dropped']}")
    print(f"exact in-plane curvature dx'Hdx + dy'Hdy at the centre (Hessian-vector products, same pairs): "
          f"{s['exact_trace']['mean']:.4g} +- {s['exact_trace']['sd']:.2g}")
    print(f"wrote {out / 'landscape.json'} and the plots")
    return 0
