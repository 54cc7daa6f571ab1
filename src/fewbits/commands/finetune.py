"""Fine-tune a model on a task and save it: the full-precision starting point of every compression method.

Trains with AdamW and a linear warm-up/decay schedule, evaluates on the task's dev split (MNIST-1D and
CIFAR: test) after each epoch, and writes into --out: the final model (config.json, model.safetensors,
tokenizer files), metrics.jsonl (train and eval records) and checkpoints/ (last and best, used by
--resume). `fewbits eval --model OUT --task T` evaluates the saved model again.

Settings left out take the model's recipe: Hugging Face models lr 5e-5, 3 epochs, batch 32; cnn1d
lr 3e-3, 10 epochs, batch 64; resnet18 lr 1e-3, 30 epochs, batch 128. Runs unchanged on several
processes: `torchrun --nproc_per_node 2 -m fewbits.cli finetune ...` (--batch-size is the global batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fewbits.commands.preflight import add_threads_argument

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits finetune`."""
    parser.add_argument("--model", default="minilm",
                        help="model to start from: minilm (all-MiniLM-L6-v2, offline; default), tiny-bert, resnet18, "
                             "cnn1d, a directory written by fewbits finetune, or a Hugging Face hub id")
    parser.add_argument("--task", required=True,
                        help="task name: vader, vader-regression, glue/<cola|sst2|mrpc|stsb|qqp|mnli|qnli|rte|wnli>, "
                             "mnist1d, cifar10, cifar100")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the task's files (GLUE: the folder holding CoLA/, SST-2/, ...; CIFAR: the "
                             "folder holding cifar-10-batches-py/); without it GLUE comes from the Hugging Face hub")
    parser.add_argument("--out", required=True, help="output directory for the model, metrics.jsonl and checkpoints/")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training split (default: recipe)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples per optimizer step over all processes (default: recipe)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="examples per evaluation forward pass (128)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: recipe)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (0.01)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="fraction of steps with a linear rise of the learning rate (0.1)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient-norm clip; 0 disables it (1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new head's weights, data order, dropout (0)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text input after truncation (128)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--save-every", type=int, default=None,
                        help="steps between extra checkpoints (one is always written after each epoch)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between train records in metrics.jsonl (50)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="data-loading worker processes (0; bit-exact resume mid-epoch needs 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --out (same settings required); starts fresh "
                             "when there is none")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Load the task and model, train, save the final model into --out, print a summary."""
    import torch

    from fewbits.commands.preflight import apply_threads, check_out_dir
    from fewbits.data import load_task
    from fewbits.models import load_model, save_model
    from fewbits.models.defaults import training_defaults
    from fewbits.train import TrainConfig, train
    from fewbits.train.checkpoint import latest_checkpoint

    check_out_dir(args.out, "finetune", files=("finetune.json", "metrics.jsonl", "config.json"),
                  folders=("checkpoints",))
    apply_threads(args, "finetune")
    task = load_task(args.task, args.data_dir)
    torch.manual_seed(args.seed)  # the new classification head's initial weights
    model, tokenizer = load_model(args.model, task)
    recipe = training_defaults(model, "finetune")
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else recipe["epochs"],
        batch_size=args.batch_size if args.batch_size is not None else recipe["batch_size"],
        eval_batch_size=args.eval_batch_size, lr=args.lr if args.lr is not None else recipe["lr"],
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm or None, seed=args.seed, max_length=args.max_length, out_dir=args.out,
        resume=args.resume, max_steps=args.max_steps, log_every=args.log_every, save_every=args.save_every,
        num_workers=args.num_workers, progress=not args.no_progress)
    if args.resume and latest_checkpoint(args.out) is None:  # asked for, yet nothing to resume: say so
        log.warning("no checkpoint in %s to resume from: training starts from the beginning", args.out)
    result = train(model, task, config, tokenizer=tokenizer)
    trained_at = time.perf_counter()
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return 0  # one process saves and reports
    out = save_model(model, args.out, tokenizer)
    summary = {"task": task.name, "split": task.eval_split, "metrics": result.metrics, "steps": result.step,
               "best_metric": result.best_metric, "best_step": result.best_step,
               "train_examples_per_s": result.train_examples_per_s, "eval_examples_per_s": result.eval_examples_per_s,
               "seconds": result.seconds + time.perf_counter() - trained_at}  # every session's training, then saving
    (Path(out) / "finetune.json").write_text(json.dumps(summary, indent=2) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"{task.name} {task.eval_split}: {shown} after {result.step} steps "
          f"({summary['seconds']:.0f} s, {result.train_examples_per_s:.0f} train ex/s); model saved to {out}")
    return 0
