"""The loss that every analysis measures, and one evaluation pass over a fixed evaluation set.

A *loss function* here is ``loss_fn(model, batch) -> BatchLoss``: the batch's MEAN loss (a scalar
tensor, differentiable), the number of correct predictions (or None when accuracy means nothing)
and the number of examples. Dataset-level loss is the example-weighted mean of the batch means, so
splitting the evaluation set differently never changes it. :func:`classification_objective` is
the default: cross-entropy (or squared error for a single-output regression head) on the logits.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fewbits.analysis.params import eval_mode, model_device, override_parameters
from fewbits.errors import FewbitsTypeError, FewbitsValueError


class BatchLoss(NamedTuple):
    """One batch: mean ``loss`` (scalar tensor), ``correct`` predictions (or None), ``count`` of examples."""

    loss: torch.Tensor
    correct: torch.Tensor | int | None
    count: int


LossFn = Callable[[nn.Module, Any], BatchLoss]


@dataclass(frozen=True)
class Evaluation:
    """Example-weighted mean ``loss`` and ``accuracy`` (None if the loss function gives no counts)
    over ``count`` examples."""

    loss: float
    accuracy: float | None
    count: int


def _logits(output: Any) -> torch.Tensor:
    """Logits from a plain tensor output, a Hugging Face output (``.logits``) or a tuple (first item)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise FewbitsTypeError(
        f"classification_objective needs the model to return logits (a tensor, or an output with .logits). "
        f"Got {type(output).__name__} instead; pass your own loss_fn."
    )


def classification_objective(model: nn.Module, batch: Any) -> BatchLoss:
    """Mean cross-entropy and correct count of ``model`` on ``batch``; squared error for one-output heads.

    ``batch`` is a mapping with ``"labels"`` (``{"x": ...}`` calls ``model(x)``, anything else calls
    ``model(**inputs)``, as for Hugging Face models), or a pair ``(x, labels)``.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise FewbitsValueError(
                f"The 'batch' given to classification_objective must hold 'labels'. Got keys {sorted(batch)} instead."
            )
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        output = model(inputs["x"]) if set(inputs) == {"x"} else model(**inputs)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        output, labels = model(batch[0]), batch[1]
    else:
        raise FewbitsTypeError(
            f"The 'batch' given to classification_objective must be a mapping with 'labels' or a pair (x, labels). "
            f"Got {type(batch).__name__} instead."
        )
    logits = _logits(output)
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return BatchLoss(F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype)), None, int(labels.shape[0]))
    loss = F.cross_entropy(logits, labels)
    correct = (logits.argmax(dim=-1) == labels).sum()
    return BatchLoss(loss, correct, int(labels.shape[0]))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) mapping / tuple / list batch to ``device``; mappings become dicts."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def prepare_batches(model: nn.Module, batches: Iterable[Any]) -> list[Any]:
    """Materialize ``batches`` as a list on the model's device (the fixed evaluation set); must be non-empty."""
    device = model_device(model)
    prepared = [to_device(b, device) for b in batches]
    if not prepared:
        raise FewbitsValueError("The 'batches' parameter must hold at least one batch. Got an empty iterable instead.")
    return prepared


def checked_batch_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> BatchLoss:
    """Call ``loss_fn`` and check that it returned ``(scalar loss, correct or None, positive count)``."""
    result = loss_fn(model, batch)
    if not isinstance(result, tuple) or len(result) != 3:
        raise FewbitsTypeError(
            f"The 'loss_fn' must return (loss, correct, count). Got {type(result).__name__} instead."
        )
    loss, correct, count = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise FewbitsTypeError(f"The loss returned by 'loss_fn' must be a scalar tensor. Got {loss!r} instead.")
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise FewbitsValueError(f"The count returned by 'loss_fn' must be a positive int. Got {count!r} instead.")
    return BatchLoss(loss.reshape(()), correct, int(count))


def evaluate_prepared(model: nn.Module, batches: list[Any], loss_fn: LossFn) -> Evaluation:
    """One pass over prepared batches, trusting the caller for eval mode, no_grad and overrides.

    On the CPU each batch's numbers are read at once (free there); on an accelerator they are
    summed on the device and read once at the end, so the pass never waits for the device mid-way.
    """
    total_loss: torch.Tensor | float = 0.0
    total_correct: torch.Tensor | int = 0
    count = 0
    has_accuracy = True
    for batch in batches:
        loss, correct, n = checked_batch_loss(loss_fn, model, batch)
        on_device = loss.device.type != "cpu"
        total_loss = total_loss + (loss.detach().double() * n if on_device else float(loss) * n)
        if correct is None:
            has_accuracy = False
        elif has_accuracy:
            total_correct = total_correct + (correct if on_device or not isinstance(correct, torch.Tensor)
                                             else int(correct))
        count += n
    accuracy = float(total_correct) / count if has_accuracy else None
    return Evaluation(float(total_loss) / count, accuracy, count)


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None = None,
    overrides: Mapping[str, torch.Tensor] | None = None,
) -> Evaluation:
    """Loss and accuracy of ``model`` over ``batches``, in eval mode without gradients.

    ``overrides`` (effective name -> value) evaluates the model at other weights without changing it.

    >>> model = nn.Linear(3, 2)
    >>> evaluate(model, [(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))]).count
    4
    """
    prepared = prepare_batches(model, batches)
    with eval_mode(model), torch.no_grad(), override_parameters(model, overrides or {}):
        return evaluate_prepared(model, prepared, loss_fn or classification_objective)
