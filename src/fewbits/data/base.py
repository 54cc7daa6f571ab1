"""The task interface every loader returns: named splits of examples, label space and metric.

Examples are small read-only mappings, usable as ``ex["text_a"]`` or ``ex.text_a``, so that they
collate like dicts and read like records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


class _Example(Mapping):
    """Mapping access (``ex["label"]``, ``dict(ex)``) over a dataclass's fields."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


@dataclass(frozen=True, eq=True)
class TextExample(_Example):
    """One sentence or sentence pair. ``label``: int class id, float for regression, None if unlabeled."""

    text_a: str
    text_b: str | None
    label: int | float | None


@dataclass(frozen=True, eq=False)
class ImageExample(_Example):
    """One image as stored, uint8 of shape (H, W, C), and its int class id."""

    image: np.ndarray
    label: int | None


@dataclass(frozen=True, eq=False)
class SignalExample(_Example):
    """One 1-D signal (float32, shape (L,)) and its int class id."""

    signal: np.ndarray
    label: int | None


@dataclass
class Task:
    """A loaded task.

    ``splits`` maps 'train', 'dev' (MNLI: 'dev_matched' and 'dev_mismatched') and 'test' where the
    source has one, to sized, ordered sequences of examples. ``num_labels`` is 1 for regression.
    ``compute_metrics(predictions, labels)`` returns the task's official metrics (predictions are
    class ids, or floats for regression); ``main_metric`` names the one used to pick checkpoints.
    """

    name: str
    kind: str  # "text" | "image" | "signal"
    num_labels: int
    splits: dict[str, Sequence[_Example]]
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    main_metric: str
    label_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        """True when labels are floats scored by correlation (STS-B, vader-regression)."""
        return self.num_labels == 1

    @property
    def eval_split(self) -> str:
        """The split used for evaluation: 'dev', else MNLI's 'dev_matched', else 'test'."""
        for name in ("dev", "dev_matched", "test"):
            if name in self.splits:
                return name
        raise KeyError(f"task {self.name} has no evaluation split (splits: {sorted(self.splits)})")

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The task's official metrics for ``predictions`` against ``labels``."""
        return self.metric_fn(np.asarray(predictions), np.asarray(labels))


class ArraySplit(Sequence):
    """A split stored as two arrays (inputs, labels), handing out examples one at a time.

    Holding CIFAR's 50,000 images as one (N, H, W, C) uint8 array costs no more than the file;
    ``split[i]`` builds the :class:`ImageExample` (or :class:`SignalExample`) on demand, and
    ``split[a:b]`` is another ArraySplit over views of the same arrays.
    """

    def __init__(self, inputs: np.ndarray, labels: np.ndarray | None, example_type: type[_Example]) -> None:
        if labels is not None and len(labels) != len(inputs):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs = inputs
        self.labels = labels
        self.example_type = example_type
        self._field = "image" if example_type is ImageExample else "signal"

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            labels = None if self.labels is None else self.labels[index]
            return ArraySplit(self.inputs[index], labels, self.example_type)
        label = None if self.labels is None else int(self.labels[index])
        return self.example_type(**{self._field: self.inputs[index], "label": label})

    def __repr__(self) -> str:
        return f"ArraySplit({self.example_type.__name__}, n={len(self)}, shape={self.inputs.shape[1:]})"
