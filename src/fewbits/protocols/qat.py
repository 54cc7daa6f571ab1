"""The QAT protocol (the paper's P2): STE training, then a second phase with a regularizer.

The model is prepared by :func:`fewbits.methods.qat.prepare_qat`. The two-phase protocol (:func:`run_ste_phase`, then :func:`run_second_phase` once per method):
STE training to a first minimum, a checkpoint that holds the model, the optimizer (Adam's moments)
and the Fisher diagonal estimated from them, then a second phase from that same checkpoint with
``ste`` (no regularizer), ``msqe``, ``fisher`` (decoupled) or ``kd`` (a frozen FP32 teacher).

The protocol as its callers run it (``fewbits qat``, the sweep's ``ste`` and ``regularize`` stages,
``benchmarks/qat_mnist1d.py``): :func:`ste_phase` (prepare and train), then :func:`second_phase` per method
(load the STE folder, train, export), each returning a :class:`QATPhaseRecord`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from fewbits._util.fs import write_bytes_atomic, write_text_atomic
from fewbits.data import make_collate
from fewbits.errors import FewbitsValueError, bad_param
from fewbits.io import describe, save
from fewbits.methods.qat import QATConfig, RegularizerConfig
from fewbits.methods.qat import apply as apply_qat
from fewbits.methods.qat.training import adam_fisher, regularizer_terms, ste_squared_error, true_fisher
from fewbits.nn.forward import forward_batch
from fewbits.protocols.common import TrainedRecord, trained_fields
from fewbits.train.checkpoint import latest_checkpoint, load_trainer_state, load_weights
from fewbits.train.loop import TrainConfig, TrainResult, build_param_groups, train

if TYPE_CHECKING:
    from fewbits.data.base import Task

QAT_FILE, FISHER_FILE = "qat.json", "fisher.safetensors"


def _out_dir(config: TrainConfig, owner: str) -> Path:
    if config.out_dir is None:
        raise bad_param("config.out_dir", "a directory (the phase's checkpoints go there)", None, owner)
    path = Path(config.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_manifest(out: Path, spec: QATConfig, phase: str, extra: dict[str, Any] | None = None) -> None:
    manifest = {"format": 1, "phase": phase, "spec": spec.to_dict(), **(extra or {})}
    write_text_atomic(out / QAT_FILE, json.dumps(manifest, indent=2))


def read_run_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The ``qat.json`` of a QAT run folder (phase, spec, second-phase settings)."""
    path = Path(run_dir) / QAT_FILE
    if not path.is_file():
        raise FewbitsValueError(f"{str(run_dir)!r} is not a QAT run folder (no {QAT_FILE}); give the --out folder "
                                "of a `fewbits qat` run or of run_ste_phase.")
    return json.loads(path.read_text())


def fisher_from_checkpoint(model: nn.Module, config: TrainConfig, checkpoint: str | Path, *,
                           bias_correction: bool = True) -> dict[str, torch.Tensor]:
    """Adam's ``v`` (or ``v_hat``) of every STE weight, read from a checkpoint written by :func:`~fewbits.train.train`.

    The optimizer is rebuilt with the same parameter groups as the run (``config`` and no extra
    groups), so the saved state maps back onto the model's parameters.
    """
    state = load_trainer_state(checkpoint)
    optimizer = torch.optim.AdamW(build_param_groups(model, config, None), lr=config.lr)
    optimizer.load_state_dict(state["optimizer"])
    return adam_fisher(model, optimizer, bias_correction=bias_correction)


def run_ste_phase(model: nn.Module, task: Task, config: TrainConfig, spec: QATConfig, *, tokenizer: Any = None,
                  collate: Any = None, bias_correction: bool = True) -> TrainResult:
    """Phase 1: STE training of a model prepared by :func:`prepare_qat`, into ``config.out_dir``.

    Writes the usual checkpoints and ``metrics.jsonl``, plus ``qat.json`` (the spec) and
    ``fisher.safetensors`` (Adam's second moment of every STE weight at the last step, bias
    corrected unless told otherwise, keyed by layer name), which :func:`load_ste_checkpoint` reads.
    """
    out = _out_dir(config, "run_ste_phase")
    _write_manifest(out, spec, "ste", {"bias_correction": bias_correction})
    result = train(model, task, config, tokenizer=tokenizer, collate=collate)
    fisher = fisher_from_checkpoint(model, config, result.last_checkpoint, bias_correction=bias_correction)
    write_bytes_atomic(out / FISHER_FILE, st_save({k: v.contiguous() for k, v in fisher.items()}))
    return result


def ste_phase_done(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished STE phase (its Fisher file is written last)."""
    return (Path(run_dir) / FISHER_FILE).is_file() and (Path(run_dir) / QAT_FILE).is_file()


def load_ste_checkpoint(model: nn.Module, ste_dir: str | Path) -> tuple[QATConfig, dict[str, torch.Tensor]]:
    """Prepare a fresh ``model`` as the STE run did and load its last checkpoint; returns (spec, Fisher).

    Every second phase starts here, from the same weights (and the same activation ranges).
    """
    if not ste_phase_done(ste_dir):
        raise FewbitsValueError(f"{str(ste_dir)!r} holds no finished STE phase ({QAT_FILE} and {FISHER_FILE} are "
                                "written at its end); run the STE phase to completion first.")
    manifest = read_run_manifest(ste_dir)
    spec = apply_qat(model, QATConfig.from_dict(manifest["spec"]))
    load_weights(model, latest_checkpoint(ste_dir))
    return spec, load_file(str(Path(ste_dir) / FISHER_FILE))


def _train_subset_batches(task: Task, n: int, seed: int, tokenizer: Any, collate: Any, batch_size: int = 64):
    """Batches of ``n`` training examples drawn without replacement by ``seed`` (for the true Fisher)."""
    collate = collate or make_collate(task, tokenizer, train=False)
    split = task.splits["train"]
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    for i in range(0, len(order), batch_size):
        yield collate([split[j] for j in order[i:i + batch_size]])


def run_second_phase(model: nn.Module, task: Task, config: TrainConfig, spec: QATConfig, phase: RegularizerConfig, *,
                     fisher: dict[str, torch.Tensor] | None = None, teacher: nn.Module | None = None,
                     tokenizer: Any = None, collate: Any = None) -> TrainResult:
    """Phase 2: train the STE model (loaded with :func:`load_ste_checkpoint`) with ``phase.method``'s regularizer.

    ``fisher`` is the STE phase's Adam estimate (needed for ``fisher`` with ``phase.fisher='adam'``);
    ``teacher`` is the frozen FP32 model for ``kd``. The optimizer starts afresh. Writes
    ``qat.json`` (spec and ``phase``) beside the checkpoints.
    """
    out = _out_dir(config, "run_second_phase")
    if phase.method == "fisher" and phase.fisher == "true":
        batches = _train_subset_batches(task, phase.true_fisher_examples, config.seed, tokenizer, collate)
        fisher = true_fisher(model, batches, forward_batch, max_examples=phase.true_fisher_examples, seed=config.seed)
    loss_terms, after_step = regularizer_terms(phase, fisher=fisher, teacher=teacher, regression=task.is_regression)
    _write_manifest(out, spec, phase.method, {"second_phase": asdict(phase)})
    return train(model, task, config, tokenizer=tokenizer, collate=collate, loss_terms=loss_terms,
                 after_step=after_step)


def export_qat(model: nn.Module, directory: str | Path, config: QATConfig, *, tokenizer: Any = None) -> Path:
    """Save the QAT model as a compact artifact (``fewbits.save(model, directory, config=config)``).

    Q(w) as packed codes + codebooks, plus the activation steps; ``fewbits.load`` reads it back with
    its input quantizers. ``model`` is unchanged.
    """
    return save(model, directory, config=config, tokenizer=tokenizer)


@dataclass
class QATPhaseRecord(TrainedRecord):
    """The record of one phase of the QAT protocol: the one schema that ``fewbits qat``, the sweep's ``ste`` and
    ``regularize`` stages and ``benchmarks/qat_mnist1d.py`` write.

    ``phase``: ``ste`` for phase 1, else the second phase's method; ``metrics``: the last evaluation, on
    ``split``; ``squared_error``: sum (w - Q(w))^2 over the STE weights at the end; ``regularizer``: the
    second phase's settings (None for phase 1); ``sizes``: the exported artifact's (empty when not exported).
    """

    phase: str
    wbits: int
    abits: int
    quantized_layers: int
    squared_error: float
    regularizer: dict[str, Any] | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    train_examples_per_s: float = 0.0
    seconds: float = 0.0


def _phase_record(model: nn.Module, task: Task, spec: QATConfig, result: TrainResult, phase: str,
                  started: float, **extra: Any) -> QATPhaseRecord:
    return QATPhaseRecord(**trained_fields(result, task), phase=phase, wbits=spec.wbits, abits=spec.abits,
                          quantized_layers=len(spec.layers), squared_error=float(ste_squared_error(model).detach()),
                          **extra, seconds=time.perf_counter() - started)


def ste_phase(model: nn.Module, task: Task, config: TrainConfig, qat: QATConfig, *, tokenizer: Any = None,
              collate: Any = None, bias_correction: bool = True) -> QATPhaseRecord:
    """Protocol step 1: prepare the full-precision ``model`` as ``qat`` says and train it with STE into
    ``config.out_dir`` (checkpoints, ``qat.json``, the Fisher estimate); returns the phase's record."""
    started = time.perf_counter()
    spec = apply_qat(model, qat)
    result = run_ste_phase(model, task, config, spec, tokenizer=tokenizer, collate=collate,
                           bias_correction=bias_correction)
    return _phase_record(model, task, spec, result, "ste", started)


def second_phase(model: nn.Module, task: Task, config: TrainConfig, ste_dir: str | Path,
                 regularizer: RegularizerConfig, *, teacher: nn.Module | None = None, tokenizer: Any = None,
                 collate: Any = None, export_dir: str | Path | None = None,
                 expect_bits: tuple[int, int] | None = None) -> QATPhaseRecord:
    """Protocol step 2: load the finished STE phase of ``ste_dir`` into the fresh ``model``, train on with
    ``regularizer`` into ``config.out_dir`` and export the artifact to ``export_dir`` (when given).

    ``expect_bits``: the ``(wbits, abits)`` the caller asked for; an STE phase trained at others is refused.
    """
    started = time.perf_counter()
    spec, fisher = load_ste_checkpoint(model, ste_dir)
    if expect_bits is not None and (spec.wbits, spec.abits) != tuple(expect_bits):
        raise FewbitsValueError(f"The STE phase {str(ste_dir)!r} was trained at W{spec.wbits}/A{spec.abits}, not "
                                f"W{expect_bits[0]}/A{expect_bits[1]}; give matching --wbits/--abits.")
    result = run_second_phase(model, task, config, spec, regularizer, fisher=fisher, teacher=teacher,
                              tokenizer=tokenizer, collate=collate)
    sizes = {}
    if export_dir is not None:
        sizes = describe(export_qat(model, export_dir, spec, tokenizer=tokenizer)).sizes()
    return _phase_record(model, task, spec, result, regularizer.method, started, regularizer=asdict(regularizer),
                         sizes=sizes)
