"""How much each weight matters to the loss: diagonal empirical Fisher, Adam's second moments, layer traces.

These are the ``sample_weights`` of :func:`fewbits.compress` (importance-weighted codebooks, as in
SqueezeLLM) and the sensitivities of :func:`fewbits.nn.plan_bits` (mixed precision):

- :func:`fisher_diagonal`: ``F = mean over examples of (d loss_example / d w)**2`` on batches of
  training data, in eval mode. Per-example gradients come one example at a time (``method="loop"``)
  or from ``torch.func`` (``vmap`` of ``grad`` over chunks of examples, ``method="vmap"``).
- :func:`fewbits.train.moments.adam_second_moments` (in ``train``, which writes the checkpoints): Adam's
  ``exp_avg_sq`` (bias corrected) of each weight, a running mean of squared mini-batch gradients, free
  after fine-tuning (P2's Fisher estimate).
- :func:`layer_traces`: Hutchinson estimates of each layer's Hessian trace (HAWQ-V2's sensitivity),
  all layers from the same probes.

Results map module names (the layers whose ``weight`` they describe) to float32 tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from fewbits.analysis.hessian import hessian_vector_product
from fewbits.analysis.objective import LossFn, classification_objective, prepare_batches
from fewbits.analysis.params import effective_parameters, eval_mode, override_parameters
from fewbits.errors import bad_param
from fewbits.nn.targets import select_targets

FISHER_METHODS = ("loop", "vmap")


def _layers(model: nn.Module, layers: Sequence[str] | None, owner: str) -> list[str]:
    """The named layers (default: fewbits.compress's default targets) that have an effective weight."""
    if layers is None:
        layers = select_targets(model, None, None, owner=owner)
    every = effective_parameters(model)
    unknown = [n for n in layers if f"{n}.weight" not in every]
    if unknown or not layers:
        raise bad_param("layers", "module names with a floating-point weight", unknown or list(layers), owner)
    return list(layers)


def _split(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A collated batch as batches of one example."""
    n = int(batch["labels"].shape[0])
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]


def _fisher_loop(model: nn.Module, batches: list[Any], leaves: dict[str, torch.Tensor], loss_fn: LossFn,
                 sums: dict[str, torch.Tensor]) -> int:
    """Add each example's squared gradient to ``sums``, one example at a time; returns the examples seen."""
    count = 0
    names = list(leaves)
    with override_parameters(model, leaves):
        for batch in batches:
            for example in _split(batch):
                loss = loss_fn(model, example)[0]
                grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
                for n, g in zip(names, grads):
                    if g is not None:
                        sums[n].add_(g.detach().float().square())
                count += 1
    return count


def _fisher_vmap(model: nn.Module, batches: list[Any], leaves: dict[str, torch.Tensor], loss_fn: LossFn,
                 sums: dict[str, torch.Tensor], chunk: int) -> int:
    """As :func:`_fisher_loop`, with ``torch.func.vmap(grad(...))`` over chunks of ``chunk`` examples."""
    from torch.func import grad, vmap

    names = list(leaves)

    def example_loss(params: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in example.items()}
        with override_parameters(model, params):
            return loss_fn(model, one)[0]

    per_example = vmap(grad(example_loss), in_dims=(None, 0), chunk_size=chunk)
    count = 0
    for batch in batches:
        grads = per_example({n: leaves[n] for n in names}, batch)
        for n in names:
            sums[n].add_(grads[n].detach().float().square().sum(0))
        count += int(batch["labels"].shape[0])
    return count


def fisher_diagonal(model: nn.Module, batches: Iterable[Any], *, layers: Sequence[str] | None = None,
                    method: str = "loop", chunk: int = 8, loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of each layer's weight: the mean over examples of squared per-example gradients.

    ``batches``: collated batches with ``labels`` (e.g. ``make_collate(task, tokenizer)`` over training
    examples). ``layers``: module names (default: :func:`fewbits.compress`'s default targets).
    ``method``: ``"loop"`` (one backward pass per example) or ``"vmap"`` (``torch.func``, ``chunk``
    examples at a time; needs a model that ``vmap`` can trace). Eval mode; the model is not changed.
    Example: ``F = fisher_diagonal(model, batches); compress(model, "optimal", 2, sample_weights=F)``.
    """
    if method not in FISHER_METHODS:
        raise bad_param("method", f"one of {FISHER_METHODS}", method, "fisher_diagonal")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise bad_param("chunk", "a positive int", chunk, "fisher_diagonal")
    names = _layers(model, layers, "fisher_diagonal")
    prepared = prepare_batches(model, batches)
    if not all(isinstance(b, dict) and "labels" in b for b in prepared):
        raise bad_param("batches", "collated batches (dicts) holding 'labels'", type(prepared[0]).__name__,
                        "fisher_diagonal")
    every = effective_parameters(model)
    leaves = {f"{n}.weight": every[f"{n}.weight"].detach().clone().requires_grad_(True) for n in names}
    sums = {k: torch.zeros(v.shape, dtype=torch.float32, device=v.device) for k, v in leaves.items()}
    with eval_mode(model), torch.enable_grad():
        if method == "loop":
            count = _fisher_loop(model, prepared, leaves, loss_fn or classification_objective, sums)
        else:
            count = _fisher_vmap(model, prepared, leaves, loss_fn or classification_objective, sums, chunk)
    return {n: sums[f"{n}.weight"].div_(count).cpu() for n in names}


def layer_traces(model: nn.Module, batches: Iterable[Any], *, layers: Sequence[str] | None = None, probes: int = 16,
                 seed: int = 0, loss_fn: LossFn | None = None) -> dict[str, float]:
    """Hutchinson estimate of ``trace(H_ll)`` of each layer's diagonal Hessian block: ``mean(v_l . (H v)_l)``.

    Every probe ``v`` is one Rademacher vector over all the layers' weights; the same Hessian-vector
    product gives every layer's estimate. ``probes`` products in all (each a double backward pass
    over ``batches``).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise bad_param("probes", "a positive int", probes, "layer_traces")
    names = _layers(model, layers, "layer_traces")
    prepared = prepare_batches(model, batches)
    params = [f"{n}.weight" for n in names]
    every = effective_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(names, 0.0)
    for _ in range(probes):
        v = {p: torch.randint(0, 2, tuple(every[p].shape), generator=generator).mul_(2).sub_(1)
             .to(every[p].device, every[p].dtype) for p in params}
        with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernels have no double backward
            hv = hessian_vector_product(model, prepared, v, loss_fn=loss_fn, params=params)
        for n, p in zip(names, params):
            totals[n] += float((hv[p].double() * v[p].double()).sum())
    return {n: totals[n] / probes for n in names}
