"""Evaluate a fine-tuned model on a task with the task's official metrics (GLUE's definitions).

The model must already have a classification head for the task (a directory written by
`fewbits finetune`, `fewbits quantize` or `fewbits qat`, or a Hugging Face model fine-tuned on it); a model
without one is refused rather than scored with a random head. A task mask (`fewbits mask`) is scored on
its base: `--model BASE --mask DIR`. Prints one line per metric, or a JSON object with --json.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits eval`."""
    parser.add_argument("--model", required=True,
                        help="directory written by fewbits finetune, quantize or qat (the run folder or the artifact "
                             "in it; or a fine-tuned Hugging Face "
                             "directory or hub id); with --mask, the base the mask was trained on")
    parser.add_argument("--mask", default=None,
                        help="task artifact written by fewbits mask: score base + this mask (refused if it was "
                             "trained on another base)")
    parser.add_argument("--task", required=True,
                        help="task name: vader, vader-regression, glue/<cola|sst2|mrpc|stsb|qqp|mnli|qnli|rte|wnli>, "
                             "mnist1d, cifar10, cifar100")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the task's files (as for fewbits finetune); without it GLUE comes from "
                             "the hub")
    parser.add_argument("--split", default=None,
                        help="split to score: dev (default; MNLI: dev_matched, MNIST-1D/CIFAR: test), dev_mismatched, "
                             "train, test (must be labeled)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per forward pass (128)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text input after truncation (128)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core); on cores shared with other "
                             "jobs 1 can be many times faster")


def run(args: argparse.Namespace) -> int:
    """Load the task and model, evaluate, print the metrics."""
    from fewbits.data import load_task
    from fewbits.errors import FewbitsValueError, bad_param
    from fewbits.loading import load_any, load_with_tokenizer
    from fewbits.train import evaluate

    import torch

    for name in ("batch_size", "max_length", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise bad_param(f"--{name.replace('_', '-')}", "a positive int", getattr(args, name), "fewbits eval")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    task = load_task(args.task, args.data_dir)
    if args.mask is not None:
        model, tokenizer = load_with_tokenizer(args.mask, base=args.model)
        classes = getattr(getattr(model, "config", None), "num_labels", task.num_labels)
        if classes != task.num_labels:
            raise FewbitsValueError(f"The mask in {args.mask} has a head with {classes} outputs but "
                                    f"task {task.name} has {task.num_labels}; give a mask trained on this task.")
    else:
        model, tokenizer = load_any(args.model, task, new_head=False)
    split = args.split or task.eval_split
    metrics = evaluate(model, task, split, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    if args.json:
        print(json.dumps({"task": task.name, "split": split, "metrics": metrics}))
    else:
        for key, value in metrics.items():
            print(f"{task.name} {split} {key}: {value:.4f}")
    return 0
