"""Training step of quantized MiniLM-L6 (centroid fine-tuning) against the same full-precision step.

Run: ``.venv/bin/python benchmarks/train_step.py [--repeats 15]``. One step = forward, backward and
AdamW update on a batch of 32 sequences of 64 tokens (P1's setting: FP32 trains every parameter;
the quantized models train the codebooks at 10x the rate plus every uncompressed parameter).
Variants run side by side in one process, alternating step by step in a rotating order; the table
gives the median over repeats of each step's time divided by the FP32 step of the same repeat
(the machine is shared, so only ratios mean anything). A naive group-wise rebuild (one gather and
concatenation per group, summed gradients, like P1's slow group-wise baseline) is shown for contrast.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

import fewbits  # noqa: E402
from fewbits.models.hf import minilm_path, quiet_transformers  # noqa: E402
from fewbits.methods.codebook import codebook_modules, param_groups  # noqa: E402
from fewbits.nn import remove_weight_parametrizations  # noqa: E402

LR = 5e-5


class NaiveGroupwise(nn.Module):
    """Rebuild the weight group by group (a Python loop of gathers and a concatenation): the slow way."""

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor) -> None:
        super().__init__()
        self.shape = codes.shape
        self.register_buffer("codes", codes.reshape(codebook.shape[0], -1).long())
        self.codebook = nn.Parameter(codebook.detach().clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        parts = [self.codebook[g][self.codes[g]] for g in range(self.codes.shape[0])]
        return torch.cat(parts).view(self.shape)


def naive_copy(model: nn.Module) -> nn.Module:
    """Same codes and codebooks as ``model``, rebuilt by :class:`NaiveGroupwise` instead of one gather."""
    twin = copy.deepcopy(model)
    for _, (module, cb) in codebook_modules(twin).items():
        remove_weight_parametrizations(module)  # leaves the emptied weight, which NaiveGroupwise ignores
        naive = NaiveGroupwise(cb.codes, cb.codebook)
        parametrize.register_parametrization(module, "weight", naive, unsafe=True)
    return twin


def build(scheme: str, bits: int, groups: int, naive: bool) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    """The FP32 model and its compressed variants, each with its optimizer."""
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    per_tensor, groupwise = copy.deepcopy(base), copy.deepcopy(base)
    fewbits.compress(per_tensor, scheme, bits)
    fewbits.compress(groupwise, scheme, bits, groups=groups)
    models = {"FP32": base,
              f"{scheme} {bits}-bit, one codebook per tensor": per_tensor,
              f"{scheme} {bits}-bit, {groups} groups per tensor": groupwise}
    if naive:
        models[f"naive group-wise rebuild, {groups} groups (reference)"] = naive_copy(groupwise)
    return {name: (model.train(), optimizer(model)) for name, model in models.items()}


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW as P1: codebooks at 10x the base rate without weight decay, everything else at the base rate."""
    if codebook_modules(model):
        return torch.optim.AdamW(param_groups(model, LR))
    books = [p for n, p in model.named_parameters() if n.endswith(".codebook")]  # the naive reference
    if books:
        rest = [p for n, p in model.named_parameters() if not n.endswith(".codebook")]
        return torch.optim.AdamW([{"params": books, "lr": 10 * LR, "weight_decay": 0.0}, {"params": rest}], lr=LR)
    return torch.optim.AdamW(model.parameters(), lr=LR)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def eval_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(**batch)
    model.train()
    return time.perf_counter() - start


def measure(variants: dict, batch: dict, repeats: int, fn) -> dict[str, list[float]]:
    """Per variant, the time of each repeat; variants alternate in a rotating order."""
    names = list(variants)
    for name in names:  # warm-up: allocator, optimizer state, caches
        fn(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(fn(name))
    return times


def table(times: dict[str, list[float]], title: str) -> str:
    reference = next(iter(times.values()))
    lines = [f"| {title} | median time (s) | ratio to FP32 (median of paired ratios) |", "|---|---|---|"]
    for name, ts in times.items():
        paired = statistics.median(t / f for t, f in zip(ts, reference))
        lines.append(f"| {name} | {statistics.median(ts):.3f} | {paired:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scheme", default="kmeans")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--groups", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive group-wise reference")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    variants = build(args.scheme, args.bits, args.groups, naive=not args.no_naive)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq_len)),
             "attention_mask": torch.ones(args.batch, args.seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch,))}
    train = measure(variants, batch, args.repeats, lambda n: train_step(*variants[n], batch))
    infer = measure(variants, batch, args.repeats, lambda n: eval_forward(variants[n][0], batch))
    markdown = "\n".join([
        "## Training step: quantized vs full-precision MiniLM-L6 (`benchmarks/train_step.py`)",
        "",
        f"Batch {args.batch} x {args.seq_len} tokens, forward + backward + AdamW step, {args.repeats} repeats "
        f"alternating the variants. Machine: {machine_line()}; shared with other jobs, so only ratios count. "
        "Quantized models train codebooks (mean of member gradients) and uncompressed parameters; FP32 "
        "trains all 22.7M weights. Target: quantized <= 1.15x FP32, group-wise included.",
        "",
        table(train, "training step"),
        "",
        table(infer, "inference forward (no grad)"),
    ])
    print(markdown)
    if not args.no_write:
        write_section("train_step", markdown)


if __name__ == "__main__":
    main()
