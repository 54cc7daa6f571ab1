"""What the protocols' records share: the training fields, the label prior's metrics and the metrics of a
task's other dev splits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from fewbits.train import TrainResult, evaluate

if TYPE_CHECKING:
    from fewbits.data.base import Task


@dataclass
class TrainedRecord:
    """The fields every protocol's record has: the training's last evaluation (``metrics``, on ``split``,
    headline ``main_metric``), its best one and the optimizer steps taken."""

    main_metric: str
    split: str
    metrics: dict[str, float]
    best_metric: float | None
    best_step: int | None
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trained_fields(result: TrainResult, task: Task) -> dict[str, Any]:
    """The :class:`TrainedRecord` fields of a training result (and its throughput, a timing)."""
    return {"main_metric": task.main_metric, "split": task.eval_split, "metrics": result.metrics,
            "best_metric": result.best_metric, "best_step": result.best_step, "steps": result.step,
            "train_examples_per_s": result.train_examples_per_s}


def prior_metrics(task: Task) -> dict[str, float]:
    """The metrics of always predicting the training split's most frequent class (regression: its mean).

    The "label prior" a collapsed model falls to (P1's linear CoLA/MRPC, P3's 2-bit masks).
    """
    train = np.array([ex["label"] for ex in task.splits["train"]])
    labels = np.array([ex["label"] for ex in task.splits[task.eval_split]])
    if task.is_regression:
        predictions = np.full(len(labels), float(train.mean()))
    else:
        values, counts = np.unique(train, return_counts=True)
        predictions = np.full(len(labels), int(values[counts.argmax()]))
    return {k: float(v) for k, v in task.compute_metrics(predictions, labels).items()}


def other_split_metrics(model: nn.Module, task: Task, *, tokenizer: Any = None, batch_size: int = 128,
                        max_length: int = 128) -> dict[str, dict[str, float]]:
    """Metrics on every dev split besides the task's evaluation split (MNLI's mismatched one), by split."""
    return {split: evaluate(model, task, split, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            for split in task.splits if split.startswith("dev") and split != task.eval_split}
