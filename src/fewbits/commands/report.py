"""Write the Markdown report (and PNG plots) of a results folder written by fewbits sweep.

Our numbers beside the papers', in the papers' table layouts (mean +- sd over seeds): P1 bits x tasks per
scheme with the GLUE average, P2 methods x A/W bits with the fitted Hessian trace and the KD temperature
sweep, P3 weights / structure / structure on 8, 4, 2, 1-bit weights. It states which of each paper's claims
hold in our runs, computed from the results. Plots go to <report stem>-plots/ beside the report. Several
results folders can be reported together by giving their common parent folder; --recipe keeps only the runs
a recipe defines now (a folder may also hold runs of older versions of a recipe).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits report`."""
    parser.add_argument("results", metavar="RESULTS_DIR", help="results folder of fewbits sweep (or their parent)")
    parser.add_argument("--out", default=None, metavar="FILE", help="report file (default: RESULTS_DIR/report.md)")
    parser.add_argument("--recipe", action="append", default=[], metavar="RECIPE",
                        help="report only the runs this recipe defines now (repeatable; default: every run found)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it is, with the claims' verdicts."""
    from fewbits.commands.preflight import check_out_file
    from fewbits.experiments.report import report_path, results_folder, write_report

    out = report_path(results_folder(args.results), args.out)
    check_out_file(out, "report", folders_beside=(f"{out.stem}-plots",))
    path, plots = write_report(args.results, args.out, args.recipe)
    text = path.read_text(encoding="utf-8")
    verdicts = [line for line in text.splitlines() if line.startswith("- **")]
    print(f"wrote {path} and {len(plots)} plot(s)")
    for line in verdicts:
        print(line.replace("**", ""))
    return 0
