"""Hessian of the dataset loss w.r.t. the effective parameters: products and the Hutchinson trace.

The loss is the example-weighted mean of the batch losses over a fixed evaluation set, in eval mode,
so ``H = sum_b (n_b / N) H_b`` and any split of the set into batches gives the same H. Products use
double backprop on fresh leaf copies of the effective weights (a parametrized weight is
differentiated as its effective value, see :mod:`fewbits.analysis.params`); the model's own
parameters and ``.grad`` are never touched. Tensors that get no gradient (unused by the forward
pass, or entering it linearly) count as zero rather than failing, and every autograd graph is
released before a call returns: only detached results leave. Eigenvalues, the spectral density
and per-layer traces are in :mod:`fewbits.analysis.spectrum`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from fewbits.analysis.objective import LossFn, checked_batch_loss, classification_objective, prepare_batches
from fewbits.analysis.params import effective_parameters, eval_mode, override_parameters
from fewbits.errors import FewbitsValueError, bad_param

Vector = dict[str, torch.Tensor]


class _Hessian:
    """The dataset-level Hessian of one model as an operator on dicts of tensors."""

    def __init__(self, model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None,
                 params: Sequence[str] | None, owner: str) -> None:
        self.model = model
        self.batches = prepare_batches(model, batches)
        self.loss_fn = loss_fn or classification_objective
        if params is None:
            values = effective_parameters(model, trainable_only=True)
            if not values:
                raise FewbitsValueError(
                    f"The model given to {owner} has no trainable parameter; pass 'params' to name the ones to use."
                )
        else:
            every = effective_parameters(model)
            unknown = [p for p in params if p not in every]
            if unknown or not params:
                raise bad_param("params", "a non-empty list of effective parameter names (see effective_parameters)",
                                unknown or list(params), owner)
            values = {p: every[p] for p in params}
        self.base = values
        self.names = list(values)

    def like(self, fill: str, generator: torch.Generator) -> Vector:
        """A random vector shaped like the parameters: ``"rademacher"`` (+-1) or ``"normal"``; drawn on the CPU."""
        out: Vector = {}
        for n in self.names:
            shape = tuple(self.base[n].shape)
            if fill == "rademacher":
                v = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).mul_(2).sub_(1)
            else:
                v = torch.randn(shape, generator=generator, dtype=torch.float64)
            out[n] = v.to(self.base[n].device, self.base[n].dtype)
        return out

    def apply(self, vector: Mapping[str, torch.Tensor], *, need_product: bool = True) -> tuple[float, Vector | None]:
        """``(v^T H v, H v)`` for the dataset loss; ``H v`` is None unless ``need_product``."""
        quad = 0.0
        product = {n: torch.zeros_like(self.base[n]) for n in self.names} if need_product else None
        count = 0
        # the math attention kernel: the fused CPU kernels have no double backward
        with eval_mode(self.model), sdpa_kernel([SDPBackend.MATH]):
            for batch in self.batches:
                leaves = {n: self.base[n].detach().clone().requires_grad_(True) for n in self.names}
                with override_parameters(self.model, leaves):
                    loss, _, n_batch = checked_batch_loss(self.loss_fn, self.model, batch)
                q, hv = _batch_hvp(loss, leaves, vector, self.names)
                del leaves, loss
                quad += q * n_batch
                if product is not None:
                    for n in self.names:
                        product[n].add_(hv[n], alpha=float(n_batch))
                count += n_batch
        if product is not None:
            for n in self.names:
                product[n].div_(count)
        return quad / count, product


def _batch_hvp(loss: torch.Tensor, leaves: Vector, vector: Mapping[str, torch.Tensor],
               names: list[str]) -> tuple[float, Vector | None]:
    """``(v^T H_b v, H_b v)`` for one batch's loss by double backprop; frees the graph."""
    order = [leaves[n] for n in names]
    if not loss.requires_grad:
        return 0.0, {n: torch.zeros_like(leaves[n]) for n in names}
    grads = torch.autograd.grad(loss, order, create_graph=True, allow_unused=True)
    dot = None
    for n, g in zip(names, grads):
        if g is not None and g.requires_grad:
            term = (g * vector[n]).sum()
            dot = term if dot is None else dot + term
    if dot is None:  # the gradient does not depend on the parameters: H = 0
        return 0.0, {n: torch.zeros_like(leaves[n]) for n in names}
    hvs = torch.autograd.grad(dot, order, allow_unused=True)
    product = {n: (torch.zeros_like(leaves[n]) if h is None else h.detach()) for n, h in zip(names, hvs)}
    quad = float(sum((product[n].double() * vector[n].double()).sum() for n in names))
    return quad, product


def hessian_vector_product(model: nn.Module, batches: Iterable[Any], vector: Mapping[str, torch.Tensor], *,
                           loss_fn: LossFn | None = None, params: Sequence[str] | None = None) -> Vector:
    """``H v`` for the Hessian of the dataset loss w.r.t. ``params`` (default: the trainable effective parameters).

    ``vector`` maps each of those names to a tensor of its shape. Results are detached.
    """
    op = _Hessian(model, batches, loss_fn, params, "hessian_vector_product")
    missing = [n for n in op.names if n not in vector]
    if missing:
        raise bad_param("vector", f"a dict holding every parameter used (missing {missing[:3]})", sorted(vector)[:5],
                        "hessian_vector_product")
    v = {n: vector[n].to(op.base[n].device, op.base[n].dtype) for n in op.names}
    _, product = op.apply(v)
    assert product is not None
    return product


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr(H): ``trace`` (mean of the probes), its ``standard_error``, the
    number of ``probes``, whether the relative standard error reached ``tol`` (``converged``), and
    every probe's value ``v^T H v`` (``samples``)."""

    trace: float
    standard_error: float
    probes: int
    converged: bool
    tol: float
    samples: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON."""
        return {"trace": self.trace, "standard_error": self.standard_error, "probes": self.probes,
                "converged": self.converged, "tol": self.tol, "samples": self.samples.tolist()}


def hutchinson_trace(model: nn.Module, batches: Iterable[Any], *, max_probes: int = 100, min_probes: int = 10,
                     tol: float = 0.01, seed: int = 0, loss_fn: LossFn | None = None,
                     params: Sequence[str] | None = None, progress: bool = False) -> TraceEstimate:
    """Estimate tr(H) of the dataset loss as the mean of ``v^T H v`` over Rademacher probes ``v``.

    Stops once at least ``min_probes`` probes are done and the standard error of the mean is at
    most ``tol * |mean|``, or after ``max_probes``. (Stopping when the running mean barely moves
    stops far too early: the mean of a few probes can sit still while being far off.)
    """
    for name, value, low in (("max_probes", max_probes, 2), ("min_probes", min_probes, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad_param(name, f"an int >= {low}", value, "hutchinson_trace")
    if min_probes > max_probes:
        raise bad_param("min_probes", f"at most max_probes={max_probes}", min_probes, "hutchinson_trace")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise bad_param("tol", "a positive number", tol, "hutchinson_trace")
    op = _Hessian(model, batches, loss_fn, params, "hutchinson_trace")
    generator = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    converged = False
    bar = tqdm(total=max_probes, desc="Hutchinson probes", disable=not progress, leave=False)
    try:
        while len(samples) < max_probes:
            quad, _ = op.apply(op.like("rademacher", generator), need_product=False)
            samples.append(quad)
            bar.update(1)
            if len(samples) >= min_probes:
                arr = np.asarray(samples)
                se = float(arr.std(ddof=1) / math.sqrt(arr.size))
                bar.set_postfix(trace=f"{arr.mean():.4g}", se=f"{se:.2g}")
                if se <= tol * abs(float(arr.mean())):
                    converged = True
                    break
    finally:
        bar.close()
    arr = np.asarray(samples)
    return TraceEstimate(float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size)), arr.size, converged,
                         float(tol), arr)
