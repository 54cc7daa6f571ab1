"""Sensitivity-aware compression of a task model: importance from data or Adam, outliers, mixed bits.

One path through the pieces, used by ``fewbits quantize`` and the sweep's quantize stage::

    importance "fisher": diagonal empirical Fisher on N batches of the task's training split
               "adam":   Adam's v_hat from the fine-tuning run's last checkpoint
    -> sample_weights of the codebook fit (kmeans, optimal)
    -> bits an int: every layer at those bits | a float (2.5): plan_bits under that average budget,
       sensitivity "error" (importance-weighted squared error) or "trace" (HAWQ: trace x error)
    -> compress(model, scheme, bits, sample_weights=..., outliers=F)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fewbits.analysis.importance import fisher_diagonal, layer_traces
from fewbits.data import make_collate
from fewbits.errors import bad_param
from fewbits.methods.codebook import BitPlan, LayerReport, compress, plan_bits
from fewbits.methods.codebook.mixed import SENSITIVITIES, check_budget
from fewbits.quantize import SCHEMES
from fewbits.quantize.base import MAX_BITS, check_bits
from fewbits.quantize.outliers import check_outlier_fraction, check_selection
from fewbits.train.moments import adam_second_moments

if TYPE_CHECKING:
    from fewbits.data.base import Task

IMPORTANCES = ("none", "fisher", "adam")
#: Schemes whose fit takes per-weight importances (and so can leave outliers out).
WEIGHTED_SCHEMES = ("kmeans", "optimal")
#: Training batches the Hutchinson traces of ``sensitivity="trace"`` use (each probe is a double backward over them).
TRACE_BATCHES = 2


class SensitivitySettings(Protocol):
    """The fields of a quantization config that :func:`compress_for_task` reads."""

    scheme: str
    bits: int | float
    groups: int | None
    seed: int
    importance: str
    importance_batches: int
    outliers: float
    outlier_selection: str
    sensitivity: str
    trace_probes: int
    batch_size: int
    max_length: int

    def scheme_kw(self) -> dict[str, Any]: ...


@dataclass
class CompressSettings:
    """Everything :func:`compress_for_task` reads, on its own (the sweep's quantize stage builds one)."""

    scheme: str = "optimal"
    bits: int | float = 4  # an int: every layer; a float: the average budget of mixed precision
    groups: int | None = None
    seed: int = 0
    max_iter: int | None = 3  # k-means' Lloyd iterations (other schemes ignore it)
    importance: str = "none"
    importance_batches: int = 8
    outliers: float = 0.0
    outlier_selection: str = "magnitude"
    sensitivity: str = "error"
    trace_probes: int = 16
    batch_size: int = 32  # examples per Fisher batch
    max_length: int = 128

    def __post_init__(self) -> None:
        check_settings(self, "CompressSettings")

    def scheme_kw(self) -> dict[str, Any]:
        """k-means' Lloyd iterations; nothing for the other schemes."""
        return {"max_iter": self.max_iter} if self.scheme == "kmeans" else {}


def check_settings(settings: SensitivitySettings, owner: str) -> None:
    """Validate the sensitivity fields of a config (one-line errors naming the field)."""
    if settings.scheme not in SCHEMES:
        raise bad_param("scheme", f"one of {sorted(SCHEMES)}", settings.scheme, owner)
    if isinstance(settings.bits, float):
        check_budget(settings.bits, owner)
    else:
        check_bits(settings.bits, owner, MAX_BITS)
    if settings.importance not in IMPORTANCES:
        raise bad_param("importance", f"one of {IMPORTANCES}", settings.importance, owner)
    if settings.importance != "none" and settings.scheme not in WEIGHTED_SCHEMES:
        raise bad_param("importance", f"'none' with scheme {settings.scheme!r} (only {WEIGHTED_SCHEMES} weight "
                        "their fit by importance)", settings.importance, owner)
    check_outlier_fraction(settings.outliers, owner)
    check_selection(settings.outlier_selection, owner)
    if settings.outliers and settings.scheme not in WEIGHTED_SCHEMES:
        raise bad_param("outliers", f"0 with scheme {settings.scheme!r} (only {WEIGHTED_SCHEMES} can leave weights "
                        "out of their fit)", settings.outliers, owner)
    if settings.sensitivity not in SENSITIVITIES:
        raise bad_param("sensitivity", f"one of {SENSITIVITIES}", settings.sensitivity, owner)
    for name in ("importance_batches", "trace_probes"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_param(name, "a positive int", value, owner)


def training_batches(task: Task, tokenizer: Any, n_batches: int, batch_size: int, max_length: int,
                     seed: int) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` collated batches of training examples drawn without replacement by ``seed``."""
    rows = task.splits["train"]
    collate = make_collate(task, tokenizer, max_length=max_length)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    n = min(n_batches, math.ceil(len(rows) / batch_size))
    return [collate([rows[i] for i in order[b * batch_size:(b + 1) * batch_size]]) for b in range(n)]


def task_importance(model: nn.Module, task: Task, settings: SensitivitySettings, *, tokenizer: Any = None,
                    adam_from: str | Path | None = None) -> dict[str, torch.Tensor] | None:
    """Per-weight importances of the default targets: empirical Fisher, Adam's v_hat, or None for ``"none"``."""
    if settings.importance == "none":
        return None
    if settings.importance == "adam":
        if adam_from is None:
            raise bad_param("importance", "'fisher' or 'none' here: 'adam' needs the fine-tuning run's checkpoints "
                            "(a --model folder written by fewbits finetune)", "adam", "task_importance")
        return adam_second_moments(model, adam_from)
    batches = training_batches(task, tokenizer, settings.importance_batches, settings.batch_size,
                               settings.max_length, settings.seed)
    return fisher_diagonal(model, batches)


def compress_for_task(model: nn.Module, task: Task, settings: SensitivitySettings, *, tokenizer: Any = None,
                      adam_from: str | Path | None = None,
                      progress: bool = False) -> tuple[list[LayerReport], BitPlan | None]:
    """Compress ``model`` in place as ``settings`` say; returns the layer reports and the bit plan (mixed only)."""
    check_settings(settings, "compress_for_task")
    importance = task_importance(model, task, settings, tokenizer=tokenizer, adam_from=adam_from)
    common = {"groups": settings.groups, "sample_weights": importance, "outliers": settings.outliers,
              "outlier_selection": settings.outlier_selection, "seed": settings.seed, **settings.scheme_kw()}
    plan = None
    bits: int | dict[str, int] = settings.bits  # type: ignore[assignment]
    if isinstance(settings.bits, float):
        traces = None
        if settings.sensitivity == "trace":
            batches = training_batches(task, tokenizer, TRACE_BATCHES, settings.batch_size, settings.max_length,
                                       settings.seed)
            traces = layer_traces(model, batches, probes=settings.trace_probes, seed=settings.seed)
        plan = plan_bits(model, settings.bits, settings.scheme, sensitivity=settings.sensitivity, traces=traces,
                         progress=progress, **common)
        bits = plan.bits
    reports = compress(model, settings.scheme, bits, progress=progress, **common)
    return reports, plan


def plot_allocation(layer_bits: dict[str, int], numel: dict[str, int], path: str | Path, *, title: str = "") -> Path:
    """Bits of each layer (bars, in model order; width of the label: the layer's weights); PNG at ``path``."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(layer_bits)
    fig = Figure(figsize=(max(6.0, 0.28 * len(names)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), [layer_bits[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n} ({numel[n]:,})" for n in names], rotation=90, fontsize=6)
    total = sum(numel.values())
    average = sum(layer_bits[n] * numel[n] for n in names) / total if total else 0.0
    ax.axhline(average, color="black", linewidth=1, label=f"average {average:.3f} bits (codes only)")
    ax.set_ylabel("bits")
    ax.set_yticks(range(0, 9))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
