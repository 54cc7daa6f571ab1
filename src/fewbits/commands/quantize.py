"""P1 on one model: quantize a fine-tuned model, fine-tune its codebooks, evaluate, save a compact artifact.

--model is either a directory written by `fewbits finetune` (used as the fine-tuned FP32 model as is), or a
base model (minilm, tiny-bert, cnn1d, resnet18, a hub id) that is first fine-tuned on --task for
--fp32-epochs and saved in OUT/fp32 (reused by a rerun with the same settings). Then every embedding and
fully connected weight except the task head is quantized with --scheme at --bits, the model is evaluated,
its codebooks are fine-tuned as in P1 (codes frozen, each centroid moved by the mean gradient of its
weights, codebooks at --quantized-lr-scale times --lr, unquantized parameters at --lr), evaluated again,
and saved with fewbits.save in OUT/artifact (`fewbits info OUT/artifact` shows its sizes). OUT/result.json
holds the scores, the quantization error and the sizes.

Sensitivity-aware options (kmeans and optimal): --importance fisher (diagonal empirical Fisher from
--importance-batches training batches) or adam (Adam's second moments of the FP32 fine-tuning) weights
the codebook fit; --outliers F keeps that fraction of each layer's weights exact; a non-integer --bits
(2.5) is an average budget: each layer's bits in 1..8 are chosen to minimise the predicted loss
increase (--sensitivity error: importance-weighted squared error; trace: Hessian trace x error, HAWQ)
so that codes, codebooks and outliers of the compressed layers fit it; OUT/bits.png plots the choice.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fewbits.commands.preflight import check_out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits quantize`."""
    parser.add_argument("--model", default="minilm",
                        help="a directory written by fewbits finetune (used as is), or a base model to fine-tune "
                             "first: minilm (offline, default), tiny-bert, cnn1d, resnet18, a hub id")
    parser.add_argument("--task", required=True, help="task name: vader, vader-regression, glue/<name>, mnist1d, ...")
    parser.add_argument("--data-dir", default=None, help="folder with the task's files (see fewbits finetune)")
    parser.add_argument("--scheme", required=True, help="linear (P1), kmeans (P1), optimal (least squared error), "
                                                        "uniform")
    parser.add_argument("--bits", type=_bits, required=True,
                        help="bits per weight, 1 to 8; a non-integer (2.5) or a decimal point (3.0): mixed "
                             "precision, each layer's bits chosen under that average")
    parser.add_argument("--importance", choices=["none", "fisher", "adam"], default="none",
                        help="weights of the codebook fit: none, fisher (empirical, from training batches) or adam "
                             "(second moments of the FP32 fine-tuning run)")
    parser.add_argument("--importance-batches", type=int, default=8,
                        help="training batches (of --batch-size) for --importance fisher (8)")
    parser.add_argument("--outliers", type=float, default=0.0,
                        help="fraction of each layer's weights kept exact beside its codebook, in [0, 0.5) "
                             "(0; SqueezeLLM keeps 0.005)")
    parser.add_argument("--outlier-selection", choices=["magnitude", "error"], default="magnitude",
                        help="which weights --outliers keeps: the largest |w| or the largest importance-weighted "
                             "error (magnitude)")
    parser.add_argument("--sensitivity", choices=["error", "trace"], default="error",
                        help="what mixed precision minimises: error (importance-weighted squared error) or trace "
                             "(per-layer Hessian trace x squared error, HAWQ)")
    parser.add_argument("--trace-probes", type=int, default=16, help="Hutchinson probes for --sensitivity trace")
    parser.add_argument("--groups", type=int, default=None,
                        help="codebooks per weight tensor (default one; P1's group-wise: 128)")
    parser.add_argument("--max-iter", type=int, default=3,
                        help="k-means Lloyd iterations (P1: 3, the default; 0: until convergence)")
    parser.add_argument("--finetune-epochs", type=int, default=1,
                        help="centroid fine-tuning epochs (1; 0: evaluate the quantized model only)")
    parser.add_argument("--finetune-max-steps", type=int, default=None,
                        help="stop the centroid fine-tuning after this many steps")
    parser.add_argument("--lr", type=float, default=None,
                        help="base learning rate of the unquantized parameters (default: the model's fine-tuning "
                             "rate, 5e-5 for Hugging Face models)")
    parser.add_argument("--quantized-lr-scale", type=float, default=10.0,
                        help="codebooks train at this times --lr (P1: 10)")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per step (default: the model's, 32)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text input (128; 16 suits vader)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="examples per evaluation forward pass (256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of k-means++, data order, dropout, a new head (0)")
    parser.add_argument("--fp32-epochs", type=int, default=None,
                        help="epochs of the FP32 fine-tune when --model is a base model (default: the model's, 3)")
    parser.add_argument("--fp32-max-steps", type=int, default=None, help="cap on the FP32 fine-tune's steps")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the cores the load average leaves idle, at least 1)")
    parser.add_argument("--out", required=True, help="output directory: artifact/, result.json (and fp32/)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _bits(text: str) -> int | float:
    """``3`` -> 3 (every layer), ``2.5`` or ``3.0`` -> a float (an average budget: mixed precision)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}") from None
        return value


def _family(model: str) -> str:
    """Which fine-tuning recipe of `fewbits finetune` a model follows: a built-in's name, else "hf"."""
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            model = str(json.loads(config.read_text()).get("fewbits_model", "hf"))
        except (ValueError, AttributeError):
            return "hf"  # load_model reports an unreadable config itself
    return model


def run(args: argparse.Namespace) -> int:
    """Check the settings, get the FP32 model, run the pipeline, save and print the result."""
    from fewbits.data import load_task
    from fewbits.protocols.codebook import QuantizeFinetuneConfig, finetune_fp32, load_fp32, quantize_finetune
    from fewbits.train.threads import choose_threads
    from fewbits.models.defaults import training_defaults
    from fewbits.train import TrainConfig, evaluate

    out = check_out_dir(args.out, "quantize", files=("result.json",), folders=("fp32",), artifacts=("artifact",))
    model_dir = Path(args.model).expanduser()
    recipe = training_defaults(_family(args.model), "finetune")
    lr = args.lr if args.lr is not None else recipe["lr"]
    batch_size = args.batch_size if args.batch_size is not None else int(recipe["batch_size"])
    config = QuantizeFinetuneConfig(scheme=args.scheme, bits=args.bits, groups=args.groups, max_iter=args.max_iter or None,
                      seed=args.seed, epochs=args.finetune_epochs, max_steps=args.finetune_max_steps,
                      batch_size=batch_size, lr=lr, quantized_lr_scale=args.quantized_lr_scale,
                      max_length=args.max_length, eval_batch_size=args.eval_batch_size, importance=args.importance,
                      importance_batches=args.importance_batches, outliers=args.outliers,
                      outlier_selection=args.outlier_selection, sensitivity=args.sensitivity,
                      trace_probes=args.trace_probes)
    fp32_config = None
    if not model_dir.is_dir():
        fp32_config = TrainConfig(epochs=args.fp32_epochs if args.fp32_epochs is not None else int(recipe["epochs"]),
                                  batch_size=batch_size, eval_batch_size=args.eval_batch_size, lr=lr, seed=args.seed,
                                  max_length=args.max_length, max_steps=args.fp32_max_steps)
    progress = not args.no_progress
    choose_threads(args.threads)

    task = load_task(args.task, args.data_dir)
    if fp32_config is None:
        model, tokenizer = load_fp32(model_dir, task)
        fp32_metrics = evaluate(model, task, tokenizer=tokenizer, batch_size=args.eval_batch_size,
                                max_length=args.max_length)
        source, adam_from = str(model_dir), model_dir
    else:
        fp32 = finetune_fp32(args.model, task, fp32_config, out / "fp32", progress=progress,
                             keep_checkpoints=args.importance == "adam")
        model, tokenizer, fp32_metrics, source = fp32.model, fp32.tokenizer, fp32.metrics, str(fp32.directory)
        adam_from = fp32.directory / "train"
        print(f"FP32 model {'reused from' if fp32.reused else 'fine-tuned into'} {fp32.directory}")
    result = quantize_finetune(model, task, config, tokenizer=tokenizer, artifact_dir=out / "artifact",
                               adam_from=adam_from, progress=progress)
    record = {"model": args.model, "fp32_model": source, "task": task.name, "split": task.eval_split,
              "fp32": fp32_metrics, **result.to_dict()}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")

    metric, art = task.main_metric, result.sizes
    print(f"{task.name} {task.eval_split} {metric}: FP32 {fp32_metrics[metric]:.4f} | {args.scheme} {args.bits}-bit "
          f"quantized {result.score_before:.4f} -> {result.score_after:.4f} after {result.steps} centroid "
          f"fine-tuning steps (relative weight error {result.relative_error:.3g})")
    print(f"artifact {out / 'artifact'}: {art['artifact_bytes'] / 2**20:.2f} MiB, {art['bits_per_weight']:.3f} bits per weight, "
          f"{art['ratio_to_fp32']:.2f}x smaller than FP32 ({art['fp32_bytes'] / 2**20:.2f} MiB)")
    if isinstance(args.bits, float):
        from fewbits.protocols.sensitivity import plot_allocation

        numel = {name: math.prod(model.get_submodule(name).weight.shape) for name in result.layer_bits}
        counts = {b: sum(1 for v in result.layer_bits.values() if v == b) for b in sorted(set(result.layer_bits.values()))}
        plot = plot_allocation(result.layer_bits, numel, out / "bits.png",
                               title=f"{task.name}: {args.bits} bits on average ({args.sensitivity}, importance "
                                     f"{args.importance})")
        print(f"mixed precision: layers per bits {counts}; plot {plot}")
    return 0
