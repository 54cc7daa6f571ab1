"""P1 end to end: fine-tune FP32 -> quantize -> evaluate -> fine-tune the codebooks -> evaluate -> save.

The protocol of Zhao et al. (linear vs k-means quantization of BERT), shared by ``fewbits quantize`` and
``fewbits demo``::

    task = load_task("vader")
    fp32 = finetune_fp32("minilm", task, TrainConfig(epochs=2, max_length=16), "out/fp32")
    model = copy.deepcopy(fp32.model)  # quantize a copy, keep the FP32 model
    result = quantize_finetune(model, task, QuantizeFinetuneConfig("kmeans", bits=2, max_length=16),
                               tokenizer=fp32.tokenizer, artifact_dir="out/kmeans-2bit")
    print(result.before, result.after, result.artifact["ratio_to_fp32"])

Centroid fine-tuning is P1's: codes frozen, each centroid's gradient the mean of its members' gradients
(:class:`fewbits.nn.Codebook`), codebooks at ``quantized_lr_scale`` (10x) the base learning rate, every
unquantized parameter (biases, norms, the classifier) trained at the base rate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
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
from fewbits.methods.codebook import LayerReport, compress, param_groups
from fewbits.models import load_model, save_model
from fewbits.quantize import SCHEMES
from fewbits.train import TrainConfig, evaluate, train
from fewbits.train.checkpoint import checkpoint_root
from fewbits.errors import bad_param
from fewbits.quantize.base import MAX_BITS, check_bits

if TYPE_CHECKING:
    from fewbits.data.base import Task

log = logging.getLogger(__name__)

OLD_SIZE_KEYS = {"bytes": "artifact_bytes", "ratio": "ratio_to_fp32"}  # the size record before issue 14
FP32_RECORD = "fp32.json"  # written beside a cached FP32 fine-tune: its key, settings and metrics


def choose_threads(requested: int = 0) -> int:
    """Set torch's CPU threads: ``requested`` if > 0, else as many cores as the load average leaves idle (>= 1).

    On a shared machine one thread is several times faster than two that wait on each other
    (MiniLM-L6 training step on 2 busy cores: 0.95 s with one thread, 4.5 s with two).
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise bad_param("threads", "an int >= 0 (0: choose from the load)", requested, "choose_threads")
    cores = os.cpu_count() or 1
    threads = requested or max(1, min(cores, int(cores - os.getloadavg()[0] + 0.5)))
    torch.set_num_threads(threads)
    return threads


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config: equal settings, equal key (used to name cached results)."""
    return config_hash(config, 12)


@dataclass
class QuantizeFinetuneConfig:
    """How one model is quantized and its codebooks fine-tuned. Defaults follow P1 (BERT-base, GLUE)."""

    scheme: str = "kmeans"  # linear | kmeans | optimal | uniform (fewbits.quantize.SCHEMES)
    bits: int = 4  # bits per weight: 2**bits centroids per codebook
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

    def __post_init__(self) -> None:

        if self.scheme not in SCHEMES:
            raise bad_param("scheme", f"one of {sorted(SCHEMES)}", self.scheme, "QuantizeFinetuneConfig")
        check_bits(self.bits, "QuantizeFinetuneConfig", MAX_BITS)
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

    def train_config(self, progress: bool = False) -> TrainConfig:
        """The TrainConfig of the centroid fine-tuning (nothing on disk)."""
        return TrainConfig(epochs=max(1, self.epochs), batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                           lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                           seed=self.seed, max_length=self.max_length, max_steps=self.max_steps, progress=progress)

    def scheme_kw(self) -> dict[str, Any]:
        """Keywords for the scheme beyond bits/groups/seed (k-means' Lloyd iterations)."""
        return {"max_iter": self.max_iter} if self.scheme == "kmeans" else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class QuantizeFinetuneResult:
    """One quantized model: scores before and after centroid fine-tuning, quantization error, artifact sizes.

    ``before``/``after``: the task's metrics on its evaluation split (``main_metric`` names the headline one).
    ``relative_error``: ``sum((w - w_hat)**2) / sum(w**2)`` over every compressed weight, at quantization.
    ``artifact``: path, bytes on disk, FP32 bytes, true bits per weight, ratio to FP32 (None when not saved).
    """

    config: dict[str, Any]
    main_metric: str
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    layers: int
    compressed_weights: int
    relative_error: float
    artifact: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def score_before(self) -> float:
        return self.before[self.main_metric]

    @property
    def score_after(self) -> float:
        return self.after[self.main_metric]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> QuantizeFinetuneResult:
        """Inverse of :meth:`to_dict`; records written before the one size schema (``bytes``, ``ratio``) are read too."""
        artifact = record.get("artifact")
        if isinstance(artifact, dict) and "bytes" in artifact:
            artifact = {OLD_SIZE_KEYS.get(k, k): v for k, v in artifact.items()}
            record = {**record, "artifact": artifact}
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})


def quantization_error(reports: Sequence[LayerReport]) -> tuple[float, float]:
    """``(squared error, relative error)`` summed over the layers ``fewbits.compress`` reported."""
    squared = sum(r.squared_error for r in reports)
    energy = sum(r.squared_error / r.relative_error for r in reports if r.relative_error > 0)
    return squared, squared / energy if energy > 0 else 0.0


def artifact_sizes(directory: str | Path) -> dict[str, Any]:
    """What an artifact truly costs (``ArtifactSummary.sizes``): bytes on disk (headers included), theory, FP32,
    bits per weight, ratio to FP32."""
    return {"path": str(directory), **describe(directory).sizes()}


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


def quantize_finetune(model: nn.Module, task: Task, config: QuantizeFinetuneConfig, *, tokenizer: Any = None,
                      artifact_dir: str | Path | None = None, progress: bool = False) -> QuantizeFinetuneResult:
    """Run P1 on a fine-tuned FP32 ``model`` IN PLACE: quantize, evaluate, fine-tune the codebooks, evaluate, save.

    Every embedding and fully connected weight except the task head is quantized (``fewbits.compress``'s
    default targets). With ``config.epochs == 0`` nothing is trained (``after`` equals ``before``). The
    artifact (``fewbits.save``, with ``tokenizer``) goes to ``artifact_dir`` when given.
    Example: ``quantize_finetune(model, task, QuantizeFinetuneConfig("linear", 2), tokenizer=tok, artifact_dir="out/lin2")``.
    """
    if not isinstance(config, QuantizeFinetuneConfig):
        raise bad_param("config", "a QuantizeFinetuneConfig", type(config).__name__, "quantize_finetune")
    task = eval_sorted(task, tokenizer, config.max_length)
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    reports = compress(model, config.scheme, config.bits, groups=config.groups, seed=config.seed,
                               progress=progress, **config.scheme_kw())
    _, relative = quantization_error(reports)
    seconds["quantize"] = time.perf_counter() - tick

    tick = time.perf_counter()
    before = _evaluate(model, task, tokenizer, config)
    seconds["evaluate"] = time.perf_counter() - tick
    after, steps = before, 0
    if config.epochs > 0:
        tick = time.perf_counter()
        groups = lambda m: param_groups(m, config.lr, config.quantized_lr_scale, config.weight_decay)  # noqa: E731
        result = train(model, task, config.train_config(progress), tokenizer=tokenizer, param_groups=groups)
        after, steps = result.metrics, result.step  # the loop evaluates the final model on the eval split
        seconds["finetune"] = time.perf_counter() - tick
    model.eval()

    artifact = None
    if artifact_dir is not None:
        tick = time.perf_counter()
        save(model, artifact_dir, tokenizer=tokenizer)
        artifact = artifact_sizes(artifact_dir)
        seconds["save"] = time.perf_counter() - tick
    return QuantizeFinetuneResult(config=config.to_dict(), main_metric=task.main_metric, before=before, after=after, steps=steps,
                    layers=len(reports), compressed_weights=sum(math.prod(r.shape) for r in reports),
                    relative_error=relative, artifact=artifact, seconds=seconds)


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
                  progress: bool = False, reuse: bool = True) -> FP32Model:
    """Fine-tune ``model_name`` on ``task`` and save it in ``directory``; reuse it when already there.

    The saved model is reused only if ``directory/fp32.json`` records the same settings (model, task,
    training config) and ``reuse`` is true; otherwise it is trained again (resuming from the checkpoints of
    an interrupted run with the same settings, unless ``reuse`` is false) and replaces the old one.
    ``torch.manual_seed(config.seed)`` draws the new head.
    """

    directory = Path(directory)
    settings = fp32_settings(model_name, task, config)
    key = config_key(settings)
    record_path = directory / FP32_RECORD
    record = _read_json(record_path)
    if reuse and record is not None and record.get("key") == key:
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


def plot_scores(results: Sequence[QuantizeFinetuneResult], path: str | Path, *, fp32_score: float | None = None,
                prior_score: float | None = None, title: str = "") -> Path:
    """Score vs bits, one colour per scheme: solid after centroid fine-tuning, dashed before; PNG at ``path``."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    schemes = list(dict.fromkeys(r.config["scheme"] for r in results))
    colors = dict(zip(schemes, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]))
    for scheme in schemes:
        rows = sorted((r for r in results if r.config["scheme"] == scheme), key=lambda r: r.config["bits"])
        bits = [r.config["bits"] for r in rows]
        ax.plot(bits, [r.score_before for r in rows], "--o", color=colors.get(scheme), alpha=0.55, markersize=4,
                label=f"{scheme}, quantized")
        ax.plot(bits, [r.score_after for r in rows], "-o", color=colors.get(scheme),
                label=f"{scheme}, + centroid fine-tuning")
    if fp32_score is not None:
        ax.axhline(fp32_score, color="black", linewidth=1, label="FP32")
    if prior_score is not None:
        ax.axhline(prior_score, color="gray", linewidth=1, linestyle=":", label="label prior")
    all_bits = sorted({r.config["bits"] for r in results})
    ax.set_xticks(all_bits)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(results[0].main_metric if results else "score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
