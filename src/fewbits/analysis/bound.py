"""P2's temperature bound: the exact Hessian trace of a softmax layer's cross-entropy, and its 1/T^2 bound.

Setting: a last layer with weight ``W`` (K classes x M inputs) and optional bias ``b``, inputs
``x_n`` (N samples), probabilities ``q_n = softmax((W x_n + b) / T)``, and the MEAN cross-entropy
``L(W) = -(1/N) sum_n log q_{n, y_n}``. Per sample, the Hessian w.r.t. ``vec(W)`` is
``(1/T^2) (diag q_n - q_n q_n^T) (x) x_n x_n^T`` (it does not depend on the labels), so

    Tr H = (1/(N T^2)) sum_n sum_k q_nk (1 - q_nk) ||x_n||^2                  (exact, P2 eq. 6 / N)

and since ``sum_k q_k (1 - q_k) = 1 - sum_k q_k^2 <= 1 - 1/K`` (equality at the uniform q),

    Tr H <= (K - 1) / (K T^2) * (1/N) sum_n ||x_n||^2                           (``bound``).

P2 prints the bound with an extra factor M (the input width); that form, ``M`` times ours, also
holds and is reported as ``bound_p2``. With ``reduction="sum"`` (the loss summed over samples, as
P2 writes it) every quantity is N times larger. The bias gets no curvature term here: the trace is
over W only (append a constant-1 input column to include a bias as part of W).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fewbits.analysis.objective import checked_batch_loss, classification_objective, prepare_batches
from fewbits.analysis.params import eval_mode
from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param


@dataclass(frozen=True)
class SoftmaxCurvature:
    """The exact ``trace`` of the softmax layer's CE Hessian w.r.t. W at ``temperature``, the tight
    ``bound`` (K-1)/(K T^2) mean||x||^2 and P2's printed ``bound_p2`` (M times the tight one), for
    ``classes`` K, ``features`` M, ``samples`` N and the loss ``reduction`` ('mean' or 'sum')."""

    temperature: float
    trace: float
    bound: float
    bound_p2: float
    classes: int
    features: int
    samples: int
    reduction: str

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON."""
        return asdict(self)


def softmax_curvature(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      temperature: float = 1.0, reduction: str = "mean") -> SoftmaxCurvature:
    """Exact Hessian trace and bound for a softmax layer (see the module docstring for the formulas).

    ``features``: (N, M) inputs of the layer; ``weight``: (K, M); ``bias``: (K,) or None.

    >>> c = softmax_curvature(torch.randn(5, 3), torch.zeros(4, 3), temperature=2.0)
    >>> abs(c.trace - c.bound) < 1e-9   # W = 0: uniform q, the bound is attained
    True
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 1:
        raise FewbitsTypeError(f"The 'features' parameter of softmax_curvature must be an (N, M) tensor. "
                               f"Got {getattr(features, 'shape', type(features).__name__)} instead.")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise FewbitsValueError(f"The 'weight' parameter of softmax_curvature must be a (K, {features.shape[1]}) "
                                f"tensor. Got {getattr(weight, 'shape', type(weight).__name__)} instead.")
    if weight.shape[0] < 2:
        raise bad_param("weight", "a (K, M) tensor with K >= 2 classes", tuple(weight.shape), "softmax_curvature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise bad_param("temperature", "a positive number", temperature, "softmax_curvature")
    if reduction not in ("mean", "sum"):
        raise bad_param("reduction", "'mean' or 'sum'", reduction, "softmax_curvature")
    x = features.detach().double()
    logits = x @ weight.detach().double().T
    if bias is not None:
        logits = logits + bias.detach().double()
    q = torch.softmax(logits / temperature, dim=-1)
    sq_norms = x.pow(2).sum(dim=1)
    n, m = x.shape
    k = weight.shape[0]
    t2 = float(temperature) ** 2
    scale = 1.0 / n if reduction == "mean" else 1.0
    trace = float((q * (1 - q)).sum(dim=1) @ sq_norms) / t2 * scale
    bound = (k - 1) / (k * t2) * float(sq_norms.sum()) * scale
    return SoftmaxCurvature(float(temperature), trace, bound, m * bound, k, m, n, reduction)


def find_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Module]:
    """The softmax layer: the module named ``head``, or else the last ``nn.Linear`` in module order."""
    modules = dict(model.named_modules())
    if head is not None:
        if head not in modules:
            linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise FewbitsValueError(f"The 'head' parameter must name a module of the model. Got {head!r} instead; "
                                    f"its Linear layers are {linear[-5:]}.")
        return head, modules[head]
    linear = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear) and "parametrizations" not in n.split(".")]
    if not linear:
        raise FewbitsValueError("The model has no nn.Linear layer to use as its softmax head; pass 'head' to name one.")
    return linear[-1]


def head_inputs(model: nn.Module, batches: Iterable[Any], head: str | None = None,
                loss_fn: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inputs of the softmax head over ``batches`` (eval mode, no grad): ``(features (N, M), weight, bias)``.

    The weight is the head's effective weight (dequantized if parametrized). Features are the
    vectors the head receives, leading dims flattened (one row per vector the head maps to logits).
    """
    _, module = find_head(model, head)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise FewbitsValueError("The softmax head must have a 2-D 'weight'; pass 'head' to name an nn.Linear.")
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).cpu())

    prepared = prepare_batches(model, batches)
    handle = module.register_forward_pre_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for batch in prepared:
                checked_batch_loss(loss_fn or classification_objective, model, batch)
            weight = module.weight.detach().cpu()
            bias = module.bias.detach().cpu() if getattr(module, "bias", None) is not None else None
    finally:
        handle.remove()
    return torch.cat(captured), weight, bias


def temperature_sweep(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      temperatures: Sequence[float], *, reduction: str = "mean") -> list[SoftmaxCurvature]:
    """:func:`softmax_curvature` at each temperature: the trace stays under a bound that falls like 1/T^2."""
    if not temperatures:
        raise bad_param("temperatures", "a non-empty sequence of positive numbers", temperatures, "temperature_sweep")
    return [softmax_curvature(features, weight, bias, temperature=t, reduction=reduction) for t in temperatures]
