"""Curvature of a trained model: Hessian trace (Hutchinson), top eigenvalue, and P2's temperature bound.

Over the first --eval-size examples of the task's evaluation split, in eval mode, with respect to
the model's trainable effective weights (a quantized weight at its dequantized value):

- the trace of the Hessian of the mean loss, from Rademacher probes, stopping once the standard
  error is below --tol times the estimate (at least --min-probes, at most --probes);
- the eigenvalue of largest magnitude by Lanczos (--which both: also the largest and smallest;
  --top N: the N largest), each with its residual bound;
- with --density, the eigenvalue density by stochastic Lanczos quadrature (spectral_density.png/.json);
- with --layers, Hutchinson's trace of each parameter tensor's diagonal block, as a table;
- for the softmax head (the last Linear layer, or --head), the exact trace of the cross-entropy
  Hessian w.r.t. its weight at each --temperatures value, with the bound (K-1)/(K T^2) mean||x||^2.

Writes hessian.json, trace_vs_temperature.png/.json (and spectral_density.png/.json) into --out.
"""

from __future__ import annotations

import argparse
import json

from fewbits.commands.landscape import add_common_arguments, check_positive, evaluation_batches, load_for_analysis
from fewbits.commands.preflight import apply_threads, check_out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits hessian`."""
    add_common_arguments(parser)
    parser.add_argument("--probes", type=int, default=100, help="most Hutchinson probes (100)")
    parser.add_argument("--min-probes", type=int, default=10, help="fewest Hutchinson probes (10)")
    parser.add_argument("--tol", type=float, default=0.01,
                        help="stop when the standard error is at most this fraction of the trace (0.01)")
    parser.add_argument("--eig-iters", type=int, default=50,
                        help="most Lanczos steps (Hessian-vector products) for the eigenvalues (50; 0 skips them); "
                             "keeps that many parameter-sized vectors in memory")
    parser.add_argument("--which", choices=["magnitude", "both"], default="magnitude",
                        help="magnitude: the eigenvalue of largest |lambda|; both: largest and smallest algebraic")
    parser.add_argument("--top", type=int, default=1, help="report the N largest eigenvalues (1)")
    parser.add_argument("--density", action="store_true",
                        help="eigenvalue density by stochastic Lanczos quadrature, plotted to spectral_density.png")
    parser.add_argument("--density-steps", type=int, default=30, help="Lanczos steps per density probe (30)")
    parser.add_argument("--density-probes", type=int, default=5, help="random probes of the density (5)")
    parser.add_argument("--layers", type=int, default=0, metavar="PROBES",
                        help="per-parameter-tensor Hutchinson traces with this many probes (0: skip)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0],
                        help="temperatures for the softmax-head trace and bound (1 2 4 8)")
    parser.add_argument("--head", default=None, help="name of the softmax head module (default: the last Linear)")


def run(args: argparse.Namespace) -> int:
    """Load, estimate, write and print."""
    from fewbits.analysis import (
        evaluate,
        find_head,
        head_inputs,
        hutchinson_trace,
        layer_traces,
        plot_spectral_density,
        plot_trace_vs_temperature,
        spectral_density,
        temperature_sweep,
        top_eigenvalue,
    )
    from fewbits.data import load_task
    from fewbits.errors import bad_param

    check_positive(args, ["batch_size", "max_length", "probes", "min_probes", "tol"], "hessian")
    check_positive(args, ["top", "density_steps", "density_probes"], "hessian")
    check_positive(args, ["eval_size", "eig_iters", "layers"], "hessian", allow_zero=("eval_size", "eig_iters", "layers"))
    if args.density_steps < 2 or args.layers == 1:
        raise bad_param("--density-steps" if args.density_steps < 2 else "--layers", "an int >= 2",
                        args.density_steps if args.density_steps < 2 else args.layers, "fewbits hessian")
    if any(t <= 0 for t in args.temperatures):
        raise bad_param("--temperatures", "positive numbers", args.temperatures, "fewbits hessian")
    out = check_out_dir(args.out, "hessian", files=("hessian.json",))
    apply_threads(args, "hessian")
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task, args.data_dir)
    model, tokenizer = load_for_analysis(args.model, task)
    batches = evaluation_batches(task, tokenizer, args.eval_size, args.batch_size, args.max_length)
    centre = evaluate(model, batches)
    trace = hutchinson_trace(model, batches, max_probes=args.probes, min_probes=min(args.min_probes, args.probes),
                             tol=args.tol, seed=args.seed, progress=not args.no_progress)
    report = {"model": str(args.model), "task": task.name, "split": task.eval_split, "examples": centre.count,
              "loss": centre.loss, "accuracy": centre.accuracy, "hutchinson": trace.to_dict()}
    print(f"{task.name} {task.eval_split} ({centre.count} examples): loss {centre.loss:.4f}")
    state = "converged" if trace.converged else f"not converged to tol {args.tol}"
    print(f"Hessian trace (Hutchinson, {trace.probes} probes, {state}): "
          f"{trace.trace:.5g} +- {trace.standard_error:.2g}")
    if args.eig_iters:
        eig = top_eigenvalue(model, batches, which=args.which, max_iter=max(args.eig_iters, 2), seed=args.seed,
                             n=args.top)
        report["eigenvalues"] = eig.to_dict()
        line = f"largest-magnitude eigenvalue {eig.largest_magnitude:.5g}"
        if eig.largest is not None:
            line += f"; largest {eig.largest:.5g}, smallest {eig.smallest:.5g}"
        print(line + ("" if eig.converged else f" (not converged in {eig.iterations} Lanczos steps)"))
        if args.top > 1:
            print("top eigenvalues: " + ", ".join(f"{v:.5g} (+-{r:.1g})" for v, r in zip(eig.top, eig.residuals)))
    if args.density:
        sd = spectral_density(model, batches, steps=args.density_steps, probes=args.density_probes, seed=args.seed)
        report["spectral_density"] = sd.to_dict()
        plot_spectral_density(sd, out / "spectral_density.png", title=f"{task.name}: Hessian spectral density")
        print(f"spectral density: {args.density_probes} probes x {args.density_steps} Lanczos steps, "
              f"nodes in [{sd.nodes.min():.4g}, {sd.nodes.max():.4g}] -> {out / 'spectral_density.png'}")
    if args.layers:
        per = layer_traces(model, batches, probes=args.layers, seed=args.seed)
        report["layer_traces"] = per.to_dict()
        width = max(len(n) for n in per.traces)
        print(f"per-tensor Hessian trace (Hutchinson, {per.probes} probes):")
        for name, value in per.traces.items():
            print(f"  {name:<{width}}  {value:12.5g} +- {per.standard_errors[name]:.2g}")
    if task.num_labels >= 2:
        head_name, _ = find_head(model, args.head)
        features, weight, bias = head_inputs(model, batches, args.head)
        sweep = temperature_sweep(features, weight, bias, args.temperatures)
        report["softmax_head"] = {"module": head_name, "sweep": [c.to_dict() for c in sweep]}
        plot_trace_vs_temperature([c.temperature for c in sweep], [c.trace for c in sweep],
                                  out / "trace_vs_temperature.png", bounds=[c.bound for c in sweep],
                                  label=f"exact trace, head {head_name}", title=f"{task.name}: softmax head curvature")
        for c in sweep:
            print(f"head {head_name} T={c.temperature:g}: exact trace {c.trace:.5g} <= bound {c.bound:.5g}")
    (out / "hessian.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'hessian.json'}")
    return 0
