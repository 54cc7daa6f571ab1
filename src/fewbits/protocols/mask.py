"""The mask protocol (the paper's P3, fine-tuning by sparsification): one frozen base shared by all tasks,
one binary mask and head per task.

The protocol, base -> mask per task:

1. :func:`load_base`: the base model (a ``fewbits.save`` artifact, FP32 or quantized; a plain model
   directory; or ``minilm``) and its checksum; the task head is created fresh from ``seed``.
2. :func:`fewbits.methods.mask.apply`: a :class:`~fewbits.nn.mask.Mask` on every target weight (on top of any
   codebook); every parameter is frozen except the scores and the head.
3. :func:`train_mask`: the scores train at ``score_lr`` without weight decay (decay would pull
   every score towards the threshold and flip weights for no reason), the head at the usual rate;
   the kept fraction is recorded at the start and after every epoch (it is the first thing to
   watch: too high a score rate removes weights wholesale and the model falls to the label prior).
4. :func:`save_mask`: only the masks (bit-packed or entropy-coded, whichever is smaller) and the
   head, tied to the base by its checksum; :func:`load_mask` rebuilds the trained model bit for
   bit and refuses a mask trained on another base.

:func:`run_mask` runs steps 3 and 4 and returns the protocol's record (:class:`MaskRecord`).

Example::

    base = load_base("minilm", task, seed=0)
    result = train_mask(base.model, task, MaskConfig(), TrainConfig(epochs=2), tokenizer=base.tokenizer)
    save_mask(base.model, "out/vader-mask", base, task=task)
    model = fewbits.load("out/vader-mask", base="minilm")
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewbits.errors import ArtifactError, bad_param
from fewbits.io import describe, read_artifact, save
from fewbits.loading import base_checksum, load_with_tokenizer
from fewbits.loading import load_base as load_base_model
from fewbits.methods.mask import MaskConfig, mask_param_groups, new_head
from fewbits.methods.mask import apply as prepare
from fewbits.nn.mask import kept_fraction, mask_modules
from fewbits.protocols.common import TrainedRecord, other_split_metrics, prior_metrics, trained_fields
from fewbits.train import TrainConfig, TrainResult, train

if TYPE_CHECKING:
    from fewbits.data.base import Task

log = logging.getLogger(__name__)


@dataclass
class MaskBase:
    """A loaded base: the model (with a fresh task head), its tokenizer, the checksum of its weights, its source."""

    model: nn.Module
    tokenizer: Any
    sha256: str
    source: str


@dataclass
class MaskResult:
    """What :func:`train_mask` did: the training result, the masked layers and the kept fraction per epoch.

    ``kept[0]`` is the kept fraction at the start, ``kept[e]`` after epoch ``e``.
    """

    train: TrainResult
    layers: list[str]
    kept: list[float] = field(default_factory=list)


def load_base(base: str | os.PathLike, task: Task | None = None, *, num_labels: int | None = None,
              label_names: list[str] | None = None, seed: int = 0) -> MaskBase:
    """Load a base for mask training, with a fresh head of the task's size drawn from ``seed``.

    ``base``: a ``fewbits.save`` directory (FP32 or quantized: its codebooks arrive frozen once a
    mask is applied), a model directory (``save_model``, ``save_pretrained``), or ``minilm``.
    """
    if task is not None:
        num_labels = task.num_labels if num_labels is None else num_labels
        label_names = label_names or task.label_names
    if num_labels is None:
        raise bad_param("num_labels", "given (or a task)", None, "load_base")
    sha = base_checksum(base)
    model, tokenizer = load_base_model(base, num_labels)
    new_head(model, num_labels, label_names, seed)
    return MaskBase(model.train(), tokenizer, sha, str(base))


def train_mask(model: nn.Module, task: Task, config: MaskConfig, train_config: TrainConfig, *,
               tokenizer: Any = None, collate: Callable | None = None,
               on_epoch: Callable[[int, float], None] | None = None) -> MaskResult:
    """Learn a mask (and the head) for ``task`` over the frozen weights of ``model``, in place.

    ``model`` is prepared here unless it already carries masks. ``on_epoch(epoch, kept)`` is
    called after every epoch with the kept fraction (it is also logged).
    """
    layers = list(mask_modules(model)) if mask_modules(model) else prepare(model, config)
    groups = mask_param_groups(model, config)
    steps_per_epoch = len(task.splits["train"]) // train_config.batch_size
    total = train_config.epochs * steps_per_epoch
    if train_config.max_steps is not None:
        total = min(total, train_config.max_steps)
    kept = [kept_fraction(model)]
    log.info("mask: %d layers, kept fraction %.4f at the start", len(layers), kept[0])

    def record(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if steps_per_epoch and (step % steps_per_epoch == 0 or step == total):
            kept.append(kept_fraction(model))
            epoch = math.ceil(step / steps_per_epoch)
            log.info("mask: epoch %d, kept fraction %.4f", epoch, kept[-1])
            if on_epoch is not None:
                on_epoch(epoch, kept[-1])

    result = train(model, task, train_config, tokenizer=tokenizer, param_groups=groups, after_step=[record],
                   collate=collate)
    return MaskResult(result, layers, kept)


def save_mask(model: nn.Module, directory: str | os.PathLike, base: MaskBase, *, task: Task | None = None,
              info: dict[str, Any] | None = None) -> Path:
    """Write the task artifact: the masks and the head of ``model``, tied to ``base`` by its checksum."""
    return save(model, directory, method="mask", base={"sha256": base.sha256, "source": base.source}, task=task,
                info=info)


def load_mask(base: str | os.PathLike, mask_dir: str | os.PathLike) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of a task mask over its base (``fewbits.load(mask_dir, base=base)`` with the tokenizer)."""
    if read_artifact(mask_dir).method != "mask":
        raise ArtifactError(f"{mask_dir}: not a task mask artifact; a base artifact is loaded with fewbits.load.")
    return load_with_tokenizer(mask_dir, base=base)


def mask_settings(config: MaskConfig, train_config: TrainConfig) -> dict[str, Any]:
    """JSON-safe record of the settings a mask was trained with (stored in the artifact's info): the mask's, and
    the training fields that change the numbers (not where it ran or how it showed progress)."""
    plain = (int, float, str, bool, list, type(None))
    return {"mask": {k: v for k, v in asdict(config).items() if isinstance(v, plain)},
            "train": train_config.resume_fields()}


@dataclass
class MaskRecord(TrainedRecord):
    """The record of one mask run: the one schema that ``fewbits mask``, the sweep's ``mask`` stage and
    ``benchmarks/mask_vader.py`` write.

    ``metrics``: the last evaluation, on ``split``; ``other_split_metrics``: the task's other dev splits;
    ``prior_metrics``: always predicting the majority class; ``kept``: the kept fraction at the start and after
    every epoch; ``sizes``: the saved task artifact's ``artifact_bytes`` (every file on disk), ``mask_bytes``
    (the encoded masks alone), ``mask_bits_per_weight`` and ``masked_weights`` (empty when not saved).
    """

    kept: list[float]
    masked_layers: int
    prior_metrics: dict[str, float]
    other_split_metrics: dict[str, dict[str, float]]
    base_sha256: str
    sizes: dict[str, Any] = field(default_factory=dict)
    train_examples_per_s: float = 0.0
    seconds: float = 0.0


def mask_sizes(directory: str | os.PathLike) -> dict[str, Any]:
    """What a saved task artifact costs: every file on disk, the encoded masks alone, bits per masked weight."""
    summary = describe(directory)
    return {"artifact_bytes": sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()),
            "mask_bytes": summary.mask_bytes, "mask_bits_per_weight": summary.mask_bits_per_weight,
            "masked_weights": summary.weights}


def run_mask(base: MaskBase, task: Task, config: MaskConfig, train_config: TrainConfig, *,
             out_dir: str | os.PathLike | None = None,
             on_epoch: Callable[[int, float], None] | None = None) -> MaskRecord:
    """The mask protocol on a loaded ``base`` (:func:`load_base`): learn the task's mask and head in place,
    evaluate, save the task artifact (its settings, metrics and kept fractions in its info) to ``out_dir``."""
    started = time.perf_counter()
    result = train_mask(base.model, task, config, train_config, tokenizer=base.tokenizer, on_epoch=on_epoch)
    trained = result.train
    other = other_split_metrics(base.model, task, tokenizer=base.tokenizer,
                                batch_size=train_config.eval_batch_size, max_length=train_config.max_length)
    sizes = {}
    if out_dir is not None:
        info = {**mask_settings(config, train_config), "metrics": trained.metrics, "kept": result.kept}
        sizes = mask_sizes(save_mask(base.model, out_dir, base, task=task, info=info))
    return MaskRecord(**trained_fields(trained, task), kept=result.kept, masked_layers=len(result.layers),
                      prior_metrics=prior_metrics(task), other_split_metrics=other, base_sha256=base.sha256,
                      sizes=sizes, seconds=time.perf_counter() - started)


__all__ = ["MaskBase", "MaskConfig", "MaskRecord", "MaskResult", "load_base", "load_mask", "mask_settings", "mask_sizes",
           "prepare", "run_mask", "save_mask", "train_mask"]
