"""`fewbits <verb>`: a thin command-line layer over the library.

Each verb lives in its own module that defines ``add_arguments(parser)`` and ``run(args) -> int``;
it is imported only when used, so ``fewbits --help`` stays fast. Errors a user can cause print one
line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fewbits.errors import FewbitsError

# verb -> (module, one-line help). Add a verb by adding a line here and a module beside it.
VERBS: dict[str, tuple[str, str]] = {
    "data": ("fewbits.commands.data", "set-up: fetch the rated sentences (vaderSentiment sdist); show their splits"),
    "demo": ("fewbits.commands.demo", "quantize the offline default model with every scheme and print the table"),
    "finetune": ("fewbits.commands.finetune", "fine-tune a model on a task and save it (the full-precision start)"),
    "eval": ("fewbits.commands.eval", "evaluate a fine-tuned model on a task with the task's official metrics"),
    "quantize": ("fewbits.commands.quantize", "P1: quantize a fine-tuned model, fine-tune its codebooks, save the artifact"),
    "export": ("fewbits.commands.export", "export an artifact to hf (plain safetensors), onnx (int8) or coreml (palettized)"),
    "info": ("fewbits.commands.info", "show an artifact's per-layer bits, sizes, true bits per weight and ratio to FP32"),
    "qat": ("fewbits.commands.qat", "quantization-aware training: STE phase, then ste/msqe/fisher/kd from its checkpoint"),
    "mask": ("fewbits.commands.mask", "learn a task's binary mask over a frozen shared base; save only mask + head"),
    "landscape": ("fewbits.commands.landscape", "2-D loss surfaces along filter-normalized directions, paraboloid curvature"),
    "hessian": ("fewbits.commands.hessian", "Hessian trace (Hutchinson), top eigenvalue and the softmax temperature bound"),
    "sweep": ("fewbits.commands.sweep", "run a recipe's grid (TOML) once per run: resumable, shardable (--shard i/n)"),
    "report": ("fewbits.commands.report", "Markdown report + plots of a results folder, beside the papers' numbers"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with one sub-parser per verb."""
    parser = argparse.ArgumentParser(prog="fewbits", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fewbits`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args._module.run(args) or 0)
    except (FewbitsError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"fewbits {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fewbits {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
