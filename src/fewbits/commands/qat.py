"""Quantization-aware training (P2): STE to a first minimum, then a second phase with a regularizer.

Phase 1 trains the model with W-bit weights and A-bit layer inputs (straight-through estimator) into
OUT/ste-phase (skipped with --ste-checkpoint, which reuses a finished phase 1, so that every method
starts from the same weights). Phase 2 trains on from there with --method: ste (no regularizer),
msqe ((lam/2) sum (w - Q(w))^2), fisher (the same weighted by Adam's second moment from phase 1,
applied after each optimizer step, outside Adam's moments) or kd (distillation from the frozen FP32
--teacher at --temperature, loss CE + lam * T^2 * KL). Bits 32 mean full precision. The first and
last layers stay at full precision unless --quantize-first-last.

Writes into --out: checkpoints/ and metrics.jsonl of phase 2 (--resume continues either phase),
qat.json (settings), model/ (the artifact: packed W-bit codes with a per-channel codebook, and the
learned activation steps; fewbits.load reads it, `fewbits info OUT/model` shows its bytes), and
summary.json (the metrics of both phases). Settings left out take the model's recipe: cnn1d
lr 1e-3, 10 + 10 epochs, batch 64; resnet18 lr 1e-3, 30 + 10 epochs, batch 128; Hugging Face
models lr 1e-4, 3 + 2 epochs, batch 32.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fewbits.commands.preflight import add_threads_argument, apply_threads, check_out_dir

log = logging.getLogger(__name__)
STE_DIR, MODEL_DIR, SUMMARY_FILE = "ste-phase", "model", "summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits qat`."""
    parser.add_argument("--model", default="minilm",
                        help="model to start from: a directory written by fewbits finetune (the usual case: a trained "
                             "FP32 model), minilm, tiny-bert, resnet18, cnn1d, or a Hugging Face hub id")
    parser.add_argument("--task", required=True,
                        help="task name: vader, vader-regression, glue/<task>, mnist1d, cifar10, cifar100")
    parser.add_argument("--data-dir", default=None, help="folder with the task's files (as for fewbits finetune)")
    parser.add_argument("--out", required=True, help="output directory (see above)")
    parser.add_argument("--wbits", type=int, required=True, help="weight bits: 1 (binary), 2..8, or 32 (FP32)")
    parser.add_argument("--abits", type=int, default=32, help="bits of the quantized layers' inputs: 1..8 or 32 (32)")
    parser.add_argument("--method", choices=["ste", "msqe", "fisher", "kd"], default="ste",
                        help="regularizer of the second phase (ste: none)")
    parser.add_argument("--lam", type=float, default=1.0, help="weight of the regularizer (1.0)")
    parser.add_argument("--temperature", type=float, default=4.0, help="KD softmax temperature T (4, as P2)")
    parser.add_argument("--no-t2", action="store_true",
                        help="KD without the T^2 factor (as P2's own code; lam then weighs soft targets T^2 less)")
    parser.add_argument("--teacher", default=None,
                        help="FP32 teacher for kd (a directory written by fewbits finetune); default: --model when it "
                             "is a directory")
    parser.add_argument("--ste-checkpoint", default=None,
                        help="a finished phase-1 folder (OUT/ste-phase of an earlier run) to start phase 2 from")
    parser.add_argument("--fisher", choices=["adam", "true"], default="adam",
                        help="Fisher diagonal: adam (Adam's v_hat at the end of phase 1, P2) or true (labels sampled "
                             "from the model; --true-fisher-examples training examples)")
    parser.add_argument("--true-fisher-examples", type=int, default=256, help="examples for --fisher true (256)")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="use Adam's raw v instead of v / (1 - beta2^t) as the Fisher estimate")
    parser.add_argument("--fisher-normalize", action="store_true",
                        help="divide the Fisher diagonal by its mean, so --lam is on MSQE's scale")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    parser.add_argument("--asymmetric", action="store_true", help="asymmetric weight grid (default: symmetric)")
    parser.add_argument("--quantize-first-last", action="store_true",
                        help="quantize the first and last layers too (default: kept at full precision)")
    parser.add_argument("--ste-epochs", type=int, default=None, help="epochs of phase 1 (default: recipe)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of phase 2 (default: recipe)")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default: recipe)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="examples per evaluation forward pass (128)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of both phases (default: recipe)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="AdamW weight decay on the latent weights (0: the regularizers under study stand alone)")
    parser.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of steps of linear warm-up (0)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient-norm clip; 0 disables it (1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, dropout and a new head (0)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text input after truncation (128)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each phase after this many steps")
    parser.add_argument("--save-every", type=int, default=None, help="steps between extra checkpoints")
    parser.add_argument("--log-every", type=int, default=50, help="steps between train records in metrics.jsonl (50)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes (0)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same settings)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_threads_argument(parser)


def _check(args: argparse.Namespace) -> None:
    from fewbits.errors import bad_param

    for name in ("ste_epochs", "epochs", "batch_size", "true_fisher_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise bad_param(f"--{name.replace('_', '-')}", "a positive int", value, "fewbits qat")
    if args.method == "kd" and args.teacher is None and not Path(args.model).is_dir():
        raise bad_param("--teacher", "a trained FP32 model directory for --method kd (or give --model as one)",
                        None, "fewbits qat")


def run(args: argparse.Namespace) -> int:
    """Run the two phases, save the artifact and print a summary."""
    import torch

    from fewbits.data import load_task
    from fewbits.loading import load_any
    from fewbits.methods.qat import QATConfig, RegularizerConfig
    from fewbits.models.defaults import training_defaults
    from fewbits.protocols.qat import second_phase, ste_phase, ste_phase_done
    from fewbits.train import TrainConfig
    from fewbits.train.checkpoint import latest_checkpoint

    _check(args)
    check_out_dir(args.out, "qat", files=("qat.json", SUMMARY_FILE, "metrics.jsonl"), folders=("checkpoints", STE_DIR),
                  artifacts=(MODEL_DIR,))
    apply_threads(args, "qat")
    phase = RegularizerConfig(method=args.method, lam=args.lam, temperature=args.temperature, t2_scaling=not args.no_t2,
                              fisher=args.fisher, fisher_normalize=args.fisher_normalize,
                              true_fisher_examples=args.true_fisher_examples)
    qat = QATConfig(args.wbits, args.abits, per_channel=not args.per_tensor, symmetric=not args.asymmetric,
                    keep_first_last=not args.quantize_first_last)
    task = load_task(args.task, args.data_dir)
    out = Path(args.out)
    started = time.perf_counter()

    def fresh_model():
        torch.manual_seed(args.seed)  # a new head's (or a built-in model's) initial weights
        return load_any(args.model, task)

    model, tokenizer = fresh_model()
    recipe = training_defaults(model, "qat")

    def config(epochs: int | None, key: str, out_dir: Path) -> TrainConfig:
        return TrainConfig(
            epochs=epochs if epochs is not None else int(recipe[key]),
            batch_size=args.batch_size if args.batch_size is not None else int(recipe["batch_size"]),
            eval_batch_size=args.eval_batch_size, lr=args.lr if args.lr is not None else float(recipe["lr"]),
            weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm or None,
            seed=args.seed, max_length=args.max_length, out_dir=out_dir, resume=args.resume, max_steps=args.max_steps,
            log_every=args.log_every, save_every=args.save_every, num_workers=args.num_workers,
            progress=not args.no_progress)

    teacher = None
    if args.method == "kd":
        teacher, _ = load_any(args.teacher or args.model, task, new_head=False)
    summary: dict = {"task": task.name, "split": task.eval_split, "wbits": args.wbits, "abits": args.abits,
                     "method": args.method}
    ste_dir = Path(args.ste_checkpoint) if args.ste_checkpoint else out / STE_DIR
    if args.resume and not (ste_phase_done(ste_dir) or latest_checkpoint(ste_dir) or latest_checkpoint(out)):
        log.warning("no checkpoint in %s to resume from: training starts from the beginning", out)
    if args.ste_checkpoint is None and not (args.resume and ste_phase_done(ste_dir)):
        first = ste_phase(model, task, config(args.ste_epochs, "ste_epochs", ste_dir), qat, tokenizer=tokenizer,
                          bias_correction=not args.no_bias_correction)
        summary["ste_phase"] = first.to_dict()
        model, tokenizer = fresh_model()
    main = not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_rank())  # one process saves and reports
    artifact = out / MODEL_DIR
    second = second_phase(model, task, config(args.epochs, "epochs", out), ste_dir, phase, teacher=teacher,
                          tokenizer=tokenizer, export_dir=artifact if main else None,
                          expect_bits=(args.wbits, args.abits))
    if not main:
        return 0
    summary.update({"ste_checkpoint": str(ste_dir), "second_phase": second.to_dict(), "artifact": str(artifact),
                    "seconds": time.perf_counter() - started})
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in second.metrics.items())
    print(f"{task.name} {task.eval_split} W{args.wbits}/A{args.abits} {args.method}: {shown} after {second.steps} "
          f"steps ({summary['seconds']:.0f} s); artifact saved to {artifact}")
    return 0
