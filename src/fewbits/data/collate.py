"""Batching: turn a list of examples into the tensors a model takes.

- text: the tokenizer's output (``input_ids``, ``attention_mask``, ``token_type_ids`` if the
  tokenizer makes them), padded to the longest row of the batch and truncated to ``max_length``;
- image: ``x`` float32 (N, 3, H, W), normalized with the task's per-channel mean and std; with
  ``train=True`` each image is first randomly cropped from a copy zero-padded by 4 pixels and
  flipped left-right with probability 1/2 (the usual CIFAR augmentation);
- signal: ``x`` float32 (N, 1, L).

Each batch also has ``labels`` (int64, float32 for regression) unless its rows are unlabeled.
Augmentation draws from torch's global RNG (or ``generator``), so ``torch.manual_seed`` makes a
run reproducible; inside DataLoader workers torch seeds each worker from that same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fewbits.data.base import Task
from fewbits.errors import FewbitsValueError, bad_param

CROP_PADDING = 4

Collate = Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]


def make_collate(
    task: Task,
    tokenizer: Any = None,
    *,
    max_length: int = 128,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> Collate:
    """Return ``collate(examples) -> dict[str, Tensor]`` for ``task`` (see the module docstring).

    ``tokenizer`` (a Hugging Face tokenizer) is required for text tasks and unused otherwise.

    >>> collate = make_collate(load_task("mnist1d"))
    >>> collate(list(load_task("mnist1d").splits["test"][:8]))["x"].shape
    torch.Size([8, 1, 40])
    """
    if task.kind == "text":
        if tokenizer is None or not callable(tokenizer):
            raise bad_param("tokenizer", f"a Hugging Face tokenizer for the text task {task.name}", tokenizer,
                            owner="make_collate")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise bad_param("max_length", "a positive int", max_length, owner="make_collate")
        return _TextCollate(tokenizer, max_length, task.is_regression)
    if task.kind == "image":
        mean, std = task.info.get("mean"), task.info.get("std")
        if mean is None or std is None:
            raise bad_param("task", "an image task whose info holds 'mean' and 'std'", task.name, owner="make_collate")
        return _ImageCollate(mean, std, train, generator)
    if task.kind == "signal":
        return _signal_collate
    raise bad_param("task", "a task of kind 'text', 'image' or 'signal'", task.kind, owner="make_collate")


def _labels(examples: Sequence[Mapping[str, Any]], dtype: torch.dtype) -> torch.Tensor | None:
    """The batch's labels, or None if every row is unlabeled (test splits)."""
    labels = [ex["label"] for ex in examples]
    missing = sum(label is None for label in labels)
    if missing == len(labels):
        return None
    if missing:
        raise FewbitsValueError(
            f"The 'examples' parameter of collate must be all labeled or all unlabeled. "
            f"Got {missing} unlabeled rows among {len(labels)} instead; do not mix test rows with train/dev rows."
        )
    return torch.tensor(labels, dtype=dtype)


def _check_batch(examples: Sequence[Mapping[str, Any]]) -> None:
    if len(examples) == 0:
        raise bad_param("examples", "a non-empty list of examples", [], owner="collate")


class _TextCollate:
    """Tokenize single sentences or pairs with dynamic padding (a class so that it pickles for workers)."""

    def __init__(self, tokenizer: Any, max_length: int, regression: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_dtype = torch.float32 if regression else torch.long

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        _check_batch(examples)
        texts_a = [ex["text_a"] for ex in examples]
        texts_b = [ex["text_b"] for ex in examples]
        pairs = sum(t is not None for t in texts_b)
        if pairs not in (0, len(texts_b)):
            raise FewbitsValueError(
                f"The 'examples' parameter of collate must be all sentence pairs or all single sentences. "
                f"Got {pairs} pairs among {len(texts_b)} rows instead."
            )
        batch = dict(
            self.tokenizer(
                texts_a,
                texts_b if pairs else None,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        labels = _labels(examples, self.label_dtype)
        if labels is not None:
            batch["labels"] = labels
        return batch


class _ImageCollate:
    """Stack HxWxC uint8 images into normalized (N, C, H, W) float32, with optional augmentation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], train: bool,
                 generator: torch.Generator | None) -> None:
        # (x / 255 - mean) / std  ==  x * scale - shift, on uint8 x
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self.train = train
        self.generator = generator

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        _check_batch(examples)
        images = np.stack([np.asarray(ex["image"]) for ex in examples])  # (N, H, W, C) uint8
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W) uint8
        if self.train:
            x = augment(x, self.generator)
        batch = {"x": x.float().mul_(self.scale).sub_(self.shift)}
        labels = _labels(examples, torch.long)
        if labels is not None:
            batch["labels"] = labels
        return batch


def augment(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop from a zero-padded copy, then a random left-right flip, per image of (N, C, H, W) (any dtype)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # zeros = black pixels
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = left[:, None] + torch.arange(w)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (N, 1, 1, W)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _signal_collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack 1-D signals into (N, 1, L) float32."""
    _check_batch(examples)
    x = torch.from_numpy(np.stack([np.asarray(ex["signal"], dtype=np.float32) for ex in examples]))
    batch = {"x": x.unsqueeze(1)}
    labels = _labels(examples, torch.long)
    if labels is not None:
        batch["labels"] = labels
    return batch
