"""P1 end to end: fine-tune FP32 -> quantize -> evaluate -> fine-tune the codebooks -> evaluate -> save.

The protocol of Zhao et al. (linear vs k-means quantization of BERT), shared by ``fewbits quantize`` and
``fewbits demo``::

    task = load_task("vader")
    fp32 = finetune_fp32("minilm", task, TrainConfig(epochs=2, max_length=16), "out/fp32")
    model = copy.deepcopy(fp32.model)  # quantize a copy, keep the FP32 model
    result = quantize_finetune(model, task, QuantizeFinetuneConfig("kmeans", bits=2, max_length=16),
                               tokenizer=fp32.tokenizer, artifact_dir="out/kmeans-2bit")
    print(result.before, result.metrics, result.sizes["ratio_to_fp32"])

Centroid fine-tuning is P1's: codes frozen, each centroid's gradient the mean of its members' gradients
(:class:`fewbits.nn.Codebook`), codebooks at ``quantized_lr_scale`` (10x) the base learning rate, every
unquantized parameter (biases, norms, the classifier) trained at the base rate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewbits._util.fs import config_hash, write_text_atomic
from fewbits.io import describe, save
from fewbits.methods.codebook import LayerReport, param_groups
from fewbits.models import load_model, save_model
from fewbits.protocols.common import TrainedRecord, other_split_metrics, trained_fields
from fewbits.protocols.sensitivity import check_settings, compress_for_task
from fewbits.quantize import SCHEMES
from fewbits.train import TrainConfig, evaluate, train
from fewbits.train.checkpoint import checkpoint_root
from fewbits.errors import bad_param

if TYPE_CHECKING:
    from fewbits.data.base import Task

log = logging.getLogger(__name__)

OLD_SIZE_KEYS = {"bytes": "artifact_bytes", "ratio": "ratio_to_fp32"}  # the size record before issue 14
FP32_RECORD = "fp32.json"  # written beside a cached FP32 fine-tune: its key, settings and metrics


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config: equal settings, equal key (used to name cached results)."""
    return config_hash(config, 12)


@dataclass
class QuantizeFinetuneConfig:
    """How one model is quantized and its codebooks fine-tuned. Defaults follow P1 (BERT-base, GLUE)."""

    scheme: str = "kmeans"  # linear | kmeans | optimal | uniform (fewbits.quantize.SCHEMES)
    bits: int | float = 4  # bits per weight (2**bits centroids per codebook); a float (2.5): mixed, that average
    groups: int | None = None  # codebooks per tensor (None: one; P1's group-wise: 128)
    max_iter: int | None = 3  # k-means Lloyd iterations (P1: 3; None: until convergence); other schemes ignore it
    seed: int = 0  # k-means++ seeding, data order and dropout of the centroid fine-tuning
    epochs: int = 1  # centroid fine-tuning passes over the training split (0: no fine-tuning)
    max_steps: int | None = None  # stop the centroid fine-tuning after this many steps
    batch_size: int = 32
    lr: float = 5e-5  # base rate: unquantized parameters
    quantized_lr_scale: float = 10.0  # codebooks train at lr * this (P1: 5e-4 vs 5e-5)
    weight_decay: float = 0.01  # on unquantized matrices only (never on codebooks)
    warmup_ratio: float = 0.1
    max_length: int = 128  # tokens per text input, in training and evaluation
    eval_batch_size: int = 256
    max_grad_norm: float | None = 1.0  # gradient-norm clip of the centroid fine-tuning (None: none)
    importance: str = "none"  # none | fisher (empirical, from training batches) | adam (fine-tuning's v_hat)
    importance_batches: int = 8  # training batches of batch_size examples for the Fisher (and its seed: seed)
    outliers: float = 0.0  # fraction of each layer's weights kept exact beside its codebook (SqueezeLLM: 0.005)
    outlier_selection: str = "magnitude"  # magnitude (largest |w|) | error (largest importance-weighted error)
    sensitivity: str = "error"  # mixed bits: error (importance-weighted squared error) | trace (HAWQ)
    trace_probes: int = 16  # Hutchinson probes per layer trace (sensitivity="trace")

    def __post_init__(self) -> None:

        if self.scheme not in SCHEMES:
            raise bad_param("scheme", f"one of {sorted(SCHEMES)}", self.scheme, "QuantizeFinetuneConfig")
        check_settings(self, "QuantizeFinetuneConfig")
        if self.groups is not None and (isinstance(self.groups, bool) or not isinstance(self.groups, int)
                                        or self.groups < 1):
            raise bad_param("groups", "None or an int >= 1", self.groups, "QuantizeFinetuneConfig")
        if self.max_iter is not None and (isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int)
                                          or self.max_iter < 0):
            raise bad_param("max_iter", "None or an int >= 0", self.max_iter, "QuantizeFinetuneConfig")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise bad_param("epochs", "an int >= 0 (0: no centroid fine-tuning)", self.epochs, "QuantizeFinetuneConfig")
        if not (isinstance(self.quantized_lr_scale, (int, float)) and math.isfinite(self.quantized_lr_scale)
                and self.quantized_lr_scale > 0):
            raise bad_param("quantized_lr_scale", "a finite number > 0", self.quantized_lr_scale, "QuantizeFinetuneConfig")
        self.train_config()  # TrainConfig validates the remaining training fields

    def train_config(self, progress: bool = False, out_dir: str | Path | None = None,
                     num_workers: int = 0) -> TrainConfig:
        """The TrainConfig of the centroid fine-tuning (checkpoints in ``out_dir``, resumed from there; None: none)."""
        return TrainConfig(epochs=max(1, self.epochs), batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                           lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                           max_grad_norm=self.max_grad_norm, seed=self.seed, max_length=self.max_length,
                           max_steps=self.max_steps, out_dir=out_dir, resume=out_dir is not None,
                           num_workers=num_workers, progress=progress)

    def scheme_kw(self) -> dict[str, Any]:
        """Keywords for the scheme beyond bits/groups/seed (k-means' Lloyd iterations)."""
        return {"max_iter": self.max_iter} if self.scheme == "kmeans" else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class QuantizeFinetuneResult(TrainedRecord):
    """The record of the codebook protocol: the one schema that ``fewbits quantize``, ``fewbits demo`` and the
    sweep's ``finetune_quantized`` stage write.

    ``before``/``metrics``: the task's metrics on ``split`` right after quantization and after centroid
    fine-tuning (``main_metric`` names the headline one); ``other_split_metrics``: the task's other dev splits
    at the end. ``relative_error``: ``sum((w - w_hat)**2) / sum(w**2)`` over every compressed weight, at
    quantization (``squared_error`` the numerator). ``sizes``: the saved artifact's
    (``ArtifactSummary.sizes``: ``artifact_bytes``, ``ratio_to_fp32``, ...; empty when not saved).
    ``seconds``: per step (timings).
    """

    config: dict[str, Any]
    before: dict[str, float]
    layers: int
    compressed_weights: int
    squared_error: float
    relative_error: float
    other_split_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    train_examples_per_s: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    layer_bits: dict[str, int] = field(default_factory=dict)  # each compressed layer's bits
    outliers: int = 0  # weights kept exact beside the codebooks, all layers

    @property
    def score_before(self) -> float:
        return self.before[self.main_metric]

    @property
    def score_after(self) -> float:
        return self.metrics[self.main_metric]

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> QuantizeFinetuneResult:
        """Inverse of :meth:`to_dict`; records written before the one schema (``after``, ``artifact`` with ``bytes``
        and ``ratio``; no ``split``, best step or squared error) are read too, their missing fields None."""
        record = dict(record)
        if "after" in record:
            record["metrics"] = record.pop("after")
        if "artifact" in record:
            artifact = record.pop("artifact") or {}
            record["sizes"] = {OLD_SIZE_KEYS.get(k, k): v for k, v in artifact.items() if k != "path"}
        return cls(**{f.name: record.get(f.name) for f in dataclasses.fields(cls)
                      if f.name in record or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})


@dataclass
class Quantized:
    """Step 1 of the protocol done: what quantizing the model measured (the start of its record)."""

    layers: int
    compressed_weights: int
    squared_error: float
    relative_error: float
    main_metric: str
    split: str
    before: dict[str, float]
    seconds: dict[str, float]
    layer_bits: dict[str, int] = field(default_factory=dict)  # each compressed layer's bits
    outliers: int = 0  # weights kept exact beside the codebooks, all layers
    plan: dict[str, int] = field(default_factory=dict)  # mixed bits: the plan's bytes and budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """The sweep's ``quantize`` stage record (``metrics``: the scores before any fine-tuning)."""
        record = dataclasses.asdict(self)
        record["metrics"] = record.pop("before")
        return record


def quantization_error(reports: Sequence[LayerReport]) -> tuple[float, float]:
    """``(squared error, relative error)`` summed over the layers ``fewbits.compress`` reported."""
    squared = sum(r.squared_error for r in reports)
    energy = sum(r.squared_error / r.relative_error for r in reports if r.relative_error > 0)
    return squared, squared / energy if energy > 0 else 0.0


def eval_sorted(task: Task, tokenizer: Any, max_length: int = 128) -> Task:
    """The same task with its evaluation splits ordered by token count (text tasks; others unchanged).

    Metrics do not depend on the order of the examples, but batches of similar length carry little
    padding: on VADER's single words evaluation runs about twice as fast.
    """
    if task.kind != "text" or tokenizer is None:
        return task
    splits = dict(task.splits)
    for name, split in task.splits.items():
        if name == "train":
            continue
        rows = list(split)
        encoded = tokenizer([ex["text_a"] for ex in rows], [ex["text_b"] for ex in rows]
                            if rows and rows[0]["text_b"] is not None else None, truncation=True, max_length=max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        splits[name] = [rows[i] for i in sorted(range(len(rows)), key=lengths.__getitem__)]
    return dataclasses.replace(task, splits=splits)


def _evaluate(model: nn.Module, task: Task, tokenizer: Any, config: QuantizeFinetuneConfig) -> dict[str, float]:
    return evaluate(model, task, tokenizer=tokenizer, batch_size=config.eval_batch_size, max_length=config.max_length)


def quantize_and_evaluate(model: nn.Module, task: Task, config: QuantizeFinetuneConfig, *, tokenizer: Any = None,
                          adam_from: str | Path | None = None, progress: bool = False) -> Quantized:
    """Protocol step 1, IN PLACE: quantize every embedding and fully connected weight except the task head
    (``fewbits.compress``'s default targets) and evaluate the quantized model. Importance, outliers and mixed
    bits: see :mod:`fewbits.protocols.sensitivity` (``adam_from``: the fine-tuning run's folder, for
    ``importance="adam"``)."""
    if not isinstance(config, QuantizeFinetuneConfig):
        raise bad_param("config", "a QuantizeFinetuneConfig", type(config).__name__, "quantize_finetune")
    tick = time.perf_counter()
    reports, plan = compress_for_task(model, task, config, tokenizer=tokenizer, adam_from=adam_from,
                                      progress=progress)
    squared, relative = quantization_error(reports)
    seconds = {"quantize": time.perf_counter() - tick}
    tick = time.perf_counter()
    before = _evaluate(model, eval_sorted(task, tokenizer, config.max_length), tokenizer, config)
    seconds["evaluate"] = time.perf_counter() - tick
    return Quantized(layers=len(reports), compressed_weights=sum(math.prod(r.shape) for r in reports),
                     squared_error=squared, relative_error=relative, main_metric=task.main_metric,
                     split=task.eval_split, before=before, seconds=seconds,
                     layer_bits={r.name: r.bits for r in reports}, outliers=sum(r.outliers for r in reports),
                     plan={} if plan is None else {"bytes": plan.bytes, "budget_bytes": plan.budget_bytes})


def finetune_codebooks(model: nn.Module, task: Task, config: QuantizeFinetuneConfig, quantized: Quantized, *,
                       tokenizer: Any = None, artifact_dir: str | Path | None = None,
                       train_dir: str | Path | None = None, num_workers: int = 0,
                       progress: bool = False) -> QuantizeFinetuneResult:
    """Protocol step 2, IN PLACE: fine-tune the codebooks of the model ``quantized`` describes, evaluate, save.

    With ``config.epochs == 0`` nothing is trained (``metrics`` equals ``before``). The artifact
    (``fewbits.save``, with ``tokenizer``) goes to ``artifact_dir`` when given; ``train_dir`` keeps the
    fine-tuning's checkpoints (an interrupted run resumes from them).
    """
    task = eval_sorted(task, tokenizer, config.max_length)
    seconds = dict(quantized.seconds)
    trained: dict[str, Any] = {"metrics": quantized.before, "best_metric": None, "best_step": None, "steps": 0}
    if config.epochs > 0:
        tick = time.perf_counter()
        groups = lambda m: param_groups(m, config.lr, config.quantized_lr_scale, config.weight_decay)  # noqa: E731
        result = train(model, task, config.train_config(progress, train_dir, num_workers), tokenizer=tokenizer,
                       param_groups=groups)
        trained = trained_fields(result, task)  # the loop evaluates the final model on the eval split
        seconds["finetune"] = time.perf_counter() - tick
    model.eval()
    other = other_split_metrics(model, task, tokenizer=tokenizer, batch_size=config.eval_batch_size,
                                max_length=config.max_length)
    sizes = {}
    if artifact_dir is not None:
        tick = time.perf_counter()
        save(model, artifact_dir, tokenizer=tokenizer)
        sizes = describe(artifact_dir).sizes()
        seconds["save"] = time.perf_counter() - tick
    return QuantizeFinetuneResult(**{"main_metric": task.main_metric, "split": task.eval_split, **trained},
                                  config=config.to_dict(), before=quantized.before, layers=quantized.layers,
                                  compressed_weights=quantized.compressed_weights,
                                  squared_error=quantized.squared_error, relative_error=quantized.relative_error,
                                  other_split_metrics=other, sizes=sizes, seconds=seconds,
                                  layer_bits=quantized.layer_bits, outliers=quantized.outliers)


def quantize_finetune(model: nn.Module, task: Task, config: QuantizeFinetuneConfig, *, tokenizer: Any = None,
                      artifact_dir: str | Path | None = None, adam_from: str | Path | None = None,
                      progress: bool = False) -> QuantizeFinetuneResult:
    """Run the codebook protocol on a fine-tuned FP32 ``model`` IN PLACE: quantize, evaluate, fine-tune the
    codebooks, evaluate, save (:func:`quantize_and_evaluate`, then :func:`finetune_codebooks`).

    Example: ``quantize_finetune(model, task, QuantizeFinetuneConfig("linear", 2), tokenizer=tok, artifact_dir="out/lin2")``.
    """
    quantized = quantize_and_evaluate(model, task, config, tokenizer=tokenizer, adam_from=adam_from, progress=progress)
    return finetune_codebooks(model, task, config, quantized, tokenizer=tokenizer, artifact_dir=artifact_dir,
                              progress=progress)


@dataclass
class FP32Model:
    """A fine-tuned full-precision model, where it is saved, and its metrics (``reused``: loaded from cache)."""

    model: nn.Module
    tokenizer: Any
    directory: Path
    key: str
    metrics: dict[str, float]
    reused: bool


def fp32_settings(model_name: str, task: Task, config: TrainConfig) -> dict[str, Any]:
    """What decides an FP32 fine-tune: the model, the task (name and data source) and the training settings."""
    return {"model": model_name, "task": task.name, "task_info": {k: str(v) for k, v in sorted(task.info.items())},
            "train": config.resume_fields()}


def finetune_fp32(model_name: str, task: Task, config: TrainConfig, directory: str | Path, *,
                  progress: bool = False, reuse: bool = True, keep_checkpoints: bool = False) -> FP32Model:
    """Fine-tune ``model_name`` on ``task`` and save it in ``directory``; reuse it when already there.

    The saved model is reused only if ``directory/fp32.json`` records the same settings (model, task,
    training config) and ``reuse`` is true; otherwise it is trained again (resuming from the checkpoints of
    an interrupted run with the same settings, unless ``reuse`` is false) and replaces the old one.
    ``torch.manual_seed(config.seed)`` draws the new head. ``keep_checkpoints`` keeps the run's last
    checkpoint in ``directory/train`` (Adam's moments, for ``importance="adam"``); a cached model without
    it is trained again.
    """

    directory = Path(directory)
    settings = fp32_settings(model_name, task, config)
    key = config_key(settings)
    record_path = directory / FP32_RECORD
    record = _read_json(record_path)
    kept = not keep_checkpoints or (directory / "train" / "checkpoints").is_dir()
    if reuse and record is not None and record.get("key") == key and kept:
        model, tokenizer = load_model(directory, task, new_head=False)
        log.info("reusing the FP32 model in %s (key %s)", directory, key)
        return FP32Model(model.eval(), tokenizer, directory, key, record["metrics"], reused=True)

    torch.manual_seed(config.seed)  # the new classification head
    model, tokenizer = load_model(model_name, task)
    directory.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)  # from now on the folder holds no finished model
    train_dir = directory / "train"
    if not reuse or _read_json(train_dir / "settings.json") != settings:  # start afresh
        shutil.rmtree(train_dir, ignore_errors=True)
        train_dir.mkdir(parents=True)
        (train_dir / "settings.json").write_text(json.dumps(settings))
    run_config = dataclasses.replace(config, out_dir=train_dir, resume=True, progress=progress)
    result = train(model, eval_sorted(task, tokenizer, config.max_length), run_config, tokenizer=tokenizer)
    save_model(model, directory, tokenizer)
    if not keep_checkpoints:
        shutil.rmtree(checkpoint_root(train_dir), ignore_errors=True)
    write_text_atomic(record_path, json.dumps({"key": key, "settings": settings, "metrics": result.metrics,
                                               "steps": result.step, "seconds": result.seconds}, indent=2))
    return FP32Model(model.eval(), tokenizer, directory, key, result.metrics, reused=False)


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a cache miss, not an error)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_fp32(model_dir: str | Path, task: Task) -> tuple[nn.Module, Any]:
    """A model already fine-tuned on ``task`` (a directory written by ``fewbits finetune``); refuses a bare base."""
    path = Path(model_dir)
    if not path.is_dir():
        raise bad_param("model", "a directory written by fewbits finetune", str(model_dir), "load_fp32")
    model, tokenizer = load_model(path, task, new_head=False)
    return model.eval(), tokenizer
