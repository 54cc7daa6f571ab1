"""Learn a binary mask for a task over the frozen weights of a shared base (fine-tuning by sparsification, P3).

The base (a fewbits.save directory, FP32 or quantized; a model directory; or "minilm") is never
changed: the command trains real-valued scores (mask = scores > 0, straight-through gradient) and a
fresh dense head, prints the kept fraction after every epoch, and writes to --out ONLY the masks
(bit-packed or entropy-coded, whichever is smaller per layer) and the head, tied to the base by its
checksum. Load the result with fewbits.load(OUT, base=BASE). --record FILE also writes the run's record. The score learning rate is
the sensitive setting: if the kept fraction falls fast and accuracy drops to the label prior,
lower --score-lr or raise --margin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewbits.commands.preflight import add_threads_argument, apply_threads, check_out_dir
from fewbits.errors import FewbitsValueError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, metavar="DIR", help="base: fewbits.save directory, model directory, "
                        "or 'minilm'")
    parser.add_argument("--task", required=True, metavar="T", help="task name, e.g. vader (see fewbits.data.TASKS)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the task artifact (mask + head)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="where the task's files are (GLUE, CIFAR)")
    parser.add_argument("--sparsity", type=float, default=None, metavar="S",
                        help="remove exactly this fraction of every masked layer (top-k of scores; default: learned)")
    parser.add_argument("--init-sparsity", type=float, default=0.0, metavar="S",
                        help="fraction removed at the start, smallest magnitudes first (default 0)")
    parser.add_argument("--score-lr", type=float, default=3e-4, metavar="LR", help="Adam rate of the scores (3e-4)")
    parser.add_argument("--margin", type=float, default=1e-2, metavar="M",
                        help="initial |score| (1e-2); margin/score-lr = steps needed to flip a weight")
    parser.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="rate of the dense head (1e-3)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="passes over the training split (1; the defaults were measured at 1 epoch on vader: "
                        "more epochs move the scores further, so lower --score-lr with them)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (32)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per input (128; vader words: 16)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head, data order and dropout (0)")
    parser.add_argument("--targets", nargs="+", default=None, metavar="NAME",
                        help="layers to mask: names or name suffixes (default: embeddings and fully connected "
                        "layers, not the head)")
    parser.add_argument("--exclude", nargs="+", default=None, metavar="NAME", help="layers never masked")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="also write the run's record (metrics, kept fractions, sizes; the schema of the sweep's "
                        "mask stage) as JSON to FILE")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from fewbits._util.fs import write_text_atomic
    from fewbits.data import load_task
    from fewbits.commands.info import format_mask_summary
    from fewbits.io import describe
    from fewbits.protocols.mask import MaskConfig, load_base, run_mask
    from fewbits.train import TrainConfig

    config = MaskConfig(score_lr=args.score_lr, margin=args.margin, init_sparsity=args.init_sparsity,
                        sparsity=args.sparsity, targets=args.targets, exclude=args.exclude)
    if args.epochs < 1:
        raise FewbitsValueError(f"The '--epochs' option of fewbits mask must be a positive int. "
                                f"Got {args.epochs} instead.")
    check_out_dir(args.out, "mask", is_artifact=True)
    apply_threads(args, "mask")
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                               max_steps=args.max_steps, seed=args.seed, progress=not args.no_progress)
    task = load_task(args.task, args.data_dir)
    base = load_base(args.base, task, seed=args.seed)
    print(f"base {args.base} (sha256 {base.sha256[:12]}...), task {task.name}: training a mask and a new head")

    def report(epoch: int, kept: float) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"epoch {epoch}: kept fraction {kept:.4f} (sparsity {100 * (1 - kept):.2f}%)")

    record = run_mask(base, task, config, train_config, out_dir=args.out, on_epoch=report)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.metrics.items())
    print(f"{task.eval_split}: {metrics}")
    print(format_mask_summary(describe(args.out), max_layers=10))
    if args.record is not None:
        write_text_atomic(Path(args.record), json.dumps(record.to_dict(), indent=2) + "\n")
    return 0
