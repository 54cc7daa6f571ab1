"""Quantization-aware training (P2): STE weights and activations, then a second phase with a regularizer.

``prepare_qat(model, wbits, abits)`` puts an :class:`~fewbits.nn.ste.STEQuantize` on the weight of
every target layer and an :class:`~fewbits.nn.activations.ActivationQuantizer` on its input.
Bits 32 mean full precision (nothing registered). Targets default to every layer with a weight
of two or more dimensions (convolutions, fully connected layers, embeddings), except the first
and the last such layer (``keep_first_last=True``): the stem sees raw inputs and the head
produces the logits, both cheap in parameters and costly in accuracy when quantized, which is the
common practice of QAT papers (DoReFa, PACT, LSQ keep them at high precision). Embeddings get STE
weights but never activation quantization (their inputs are ids).

The two-phase protocol (:func:`run_ste_phase`, then :func:`run_second_phase` once per method):
STE training to a first minimum, a checkpoint that holds the model, the optimizer (Adam's moments)
and the Fisher diagonal estimated from them, then a second phase from that same checkpoint with
``ste`` (no regularizer), ``msqe``, ``fisher`` (decoupled) or ``kd`` (a frozen FP32 teacher).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.models import forward_batch
from fewbits.nn.activations import CHILD_NAME as ACTIVATION_CHILD
from fewbits.nn.activations import activation_quantizers, add_activation_quantizer
from fewbits.nn.ste import STEQuantize, latent_weight, ste_modules
from fewbits.nn.targets import candidate_names, register_weight_parametrization, select_targets
from fewbits.quantize.base import MAX_BITS, QuantizedTensor
from fewbits.quantize.uniform import uniform
from fewbits.train.loop import TrainConfig, TrainResult, train
from fewbits.train.regularizers import MSQE, Distillation, FisherPenalty, adam_fisher, true_fisher

if TYPE_CHECKING:
    from fewbits.data.base import Task

FULL_PRECISION = 32
METHODS = ("ste", "msqe", "fisher", "kd")


def _check_qat_bits(bits: object, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= MAX_BITS or bits == FULL_PRECISION):
        raise bad_param(name, f"an int in [1, {MAX_BITS}] or {FULL_PRECISION} (full precision)", bits, "prepare_qat")
    return bits


@dataclass(frozen=True)
class QATSpec:
    """How a model was prepared for QAT: enough to rebuild it before loading a checkpoint (JSON-able)."""

    wbits: int
    abits: int = FULL_PRECISION
    per_channel: bool = True
    symmetric: bool = True
    keep_first_last: bool = True
    targets: str | list[str] | None = None
    exclude: str | list[str] | None = None
    layers: list[str] = field(default_factory=list)  # filled by prepare_qat: the quantized layers

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QATSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise FewbitsValueError(f"Unknown QAT spec field(s) {sorted(unknown)}; was it written by a newer fewbits?")
        return cls(**data)


def qat_targets(model: nn.Module, targets: str | Sequence[str] | None = None,
                exclude: str | Sequence[str] | None = None, *, keep_first_last: bool = True) -> list[str]:
    """Names of the layers to quantize, in registration order (see the module docstring); changes nothing.

    ``targets``/``exclude`` follow :mod:`fewbits.nn.targets` (a full-match regex, or a list of
    names or suffixes). ``keep_first_last`` removes the first and last candidate layers from the
    selection whatever the patterns say.
    """
    candidates = candidate_names(model)
    kept = {candidates[0], candidates[-1]} if keep_first_last and candidates else set()
    selected = select_targets(model, targets, exclude, default=candidate_names, owner="prepare_qat")
    names = [name for name in selected if name not in kept]
    if not names:
        raise FewbitsValueError(
            f"prepare_qat: nothing left to quantize after keeping the first and last layers {sorted(kept)} at full "
            "precision; pass keep_first_last=False or select other targets."
        )
    return names


def prepare_qat(model: nn.Module, wbits: int, abits: int = FULL_PRECISION, *,
                targets: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None,
                keep_first_last: bool = True, per_channel: bool = True, symmetric: bool = True) -> QATSpec:
    """Quantize the target layers' weights (STE) and inputs (learned-step fake quantization), in place.

    Validates everything before changing the model. Returns the :class:`QATSpec` (with the layer
    names) to store beside checkpoints. Example: ``prepare_qat(model, wbits=2, abits=2)``.
    """
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of prepare_qat must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    _check_qat_bits(wbits, "wbits")
    _check_qat_bits(abits, "abits")
    for name, value in (("keep_first_last", keep_first_last), ("per_channel", per_channel), ("symmetric", symmetric)):
        if not isinstance(value, bool):
            raise bad_param(name, "a bool", value, "prepare_qat")
    if any(True for _ in ste_modules(model)) or activation_quantizers(model):
        raise FewbitsValueError("prepare_qat: the model is already prepared for QAT; build a fresh model instead.")
    names = qat_targets(model, targets, exclude, keep_first_last=keep_first_last)
    modules = dict(model.named_modules())
    if wbits != FULL_PRECISION:
        busy = [n for n in names if parametrize.is_parametrized(modules[n], "weight")]
        if busy:
            raise FewbitsValueError(f"prepare_qat: the weight of {busy[:5]} is already parametrized (compressed?); "
                                    "STE quantization needs the plain full-precision weight.")
    for name in names:
        module = modules[name]
        if wbits != FULL_PRECISION:
            register_weight_parametrization(module, STEQuantize(wbits, per_channel=per_channel, symmetric=symmetric))
        if abits != FULL_PRECISION and not isinstance(module, nn.Embedding):
            add_activation_quantizer(module, abits)
    return QATSpec(wbits, abits, per_channel, symmetric, keep_first_last,
                   targets if targets is None or isinstance(targets, str) else list(targets),
                   exclude if exclude is None or isinstance(exclude, str) else list(exclude), names)


def apply_spec(model: nn.Module, spec: QATSpec) -> QATSpec:
    """Prepare a fresh model exactly as ``spec`` says (before loading a QAT checkpoint into it)."""
    rebuilt = prepare_qat(model, spec.wbits, spec.abits, targets=spec.targets, exclude=spec.exclude,
                          keep_first_last=spec.keep_first_last, per_channel=spec.per_channel, symmetric=spec.symmetric)
    if spec.layers and rebuilt.layers != spec.layers:
        raise FewbitsValueError(f"The model's quantized layers {rebuilt.layers[:5]}... differ from the spec's "
                                f"{spec.layers[:5]}...: is it the same architecture?")
    return rebuilt


# ------------------------------------------------------------------------------------ two phases

QAT_FILE, FISHER_FILE = "qat.json", "fisher.safetensors"


@dataclass(frozen=True)
class SecondPhase:
    """The regularizer of the second phase and its settings (plain data, stored in ``qat.json``).

    ``method``: ``ste`` (no regularizer, STE training goes on), ``msqe``, ``fisher`` or ``kd``.
    ``lam``: the regularizer's weight. ``temperature`` and ``t2_scaling``: KD's softmax temperature
    and its ``T**2`` factor. ``fisher``: ``adam`` (Adam's ``v_hat`` at the end of the STE phase,
    P2) or ``true`` (labels sampled from the model, ``true_fisher_examples`` training examples).
    ``fisher_normalize``: divide F by its mean so ``lam`` is on MSQE's scale.
    """

    method: str = "ste"
    lam: float = 1.0
    temperature: float = 4.0
    t2_scaling: bool = True
    fisher: str = "adam"
    fisher_normalize: bool = False
    true_fisher_examples: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad_param("method", f"one of {list(METHODS)}", self.method, "SecondPhase")
        if self.fisher not in ("adam", "true"):
            raise bad_param("fisher", "'adam' or 'true'", self.fisher, "SecondPhase")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 <= self.lam < float("inf"):
            raise bad_param("lam", "a finite float >= 0", self.lam, "SecondPhase")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise bad_param("temperature", "a float > 0", self.temperature, "SecondPhase")
        if isinstance(self.true_fisher_examples, bool) or not isinstance(self.true_fisher_examples, int) \
                or self.true_fisher_examples < 1:
            raise bad_param("true_fisher_examples", "a positive int", self.true_fisher_examples, "SecondPhase")


def _out_dir(config: TrainConfig, owner: str) -> Path:
    if config.out_dir is None:
        raise bad_param("config.out_dir", "a directory (the phase's checkpoints go there)", None, owner)
    path = Path(config.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_manifest(out: Path, spec: QATSpec, phase: str, extra: dict[str, Any] | None = None) -> None:
    from fewbits._util.fs import write_text_atomic

    manifest = {"format": 1, "phase": phase, "spec": spec.to_dict(), **(extra or {})}
    write_text_atomic(out / QAT_FILE, json.dumps(manifest, indent=2))


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
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
    from fewbits.train.checkpoint import load_trainer_state
    from fewbits.train.loop import build_param_groups

    state = load_trainer_state(checkpoint)
    optimizer = torch.optim.AdamW(build_param_groups(model, config, None), lr=config.lr)
    optimizer.load_state_dict(state["optimizer"])
    return adam_fisher(model, optimizer, bias_correction=bias_correction)


def run_ste_phase(model: nn.Module, task: Task, config: TrainConfig, spec: QATSpec, *, tokenizer: Any = None,
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
    from safetensors.torch import save_file

    tmp = out / f".{FISHER_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(tmp))
    os.replace(tmp, out / FISHER_FILE)
    return result


def ste_phase_done(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished STE phase (its Fisher file is written last)."""
    return (Path(run_dir) / FISHER_FILE).is_file() and (Path(run_dir) / QAT_FILE).is_file()


def load_ste_checkpoint(model: nn.Module, ste_dir: str | Path) -> tuple[QATSpec, dict[str, torch.Tensor]]:
    """Prepare a fresh ``model`` as the STE run did and load its last checkpoint; returns (spec, Fisher).

    Every second phase starts here, from the same weights (and the same activation ranges).
    """
    from safetensors.torch import load_file

    from fewbits.train.checkpoint import latest_checkpoint, load_weights

    if not ste_phase_done(ste_dir):
        raise FewbitsValueError(f"{str(ste_dir)!r} holds no finished STE phase ({QAT_FILE} and {FISHER_FILE} are "
                                "written at its end); run the STE phase to completion first.")
    manifest = read_manifest(ste_dir)
    spec = apply_spec(model, QATSpec.from_dict(manifest["spec"]))
    load_weights(model, latest_checkpoint(ste_dir))
    return spec, load_file(str(Path(ste_dir) / FISHER_FILE))


def _train_subset_batches(task: Task, n: int, seed: int, tokenizer: Any, collate: Any, batch_size: int = 64):
    """Batches of ``n`` training examples drawn without replacement by ``seed`` (for the true Fisher)."""
    from fewbits.data import make_collate

    collate = collate or make_collate(task, tokenizer, train=False)
    split = task.splits["train"]
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    for i in range(0, len(order), batch_size):
        yield collate([split[j] for j in order[i:i + batch_size]])


def run_second_phase(model: nn.Module, task: Task, config: TrainConfig, spec: QATSpec, phase: SecondPhase, *,
                     fisher: dict[str, torch.Tensor] | None = None, teacher: nn.Module | None = None,
                     tokenizer: Any = None, collate: Any = None) -> TrainResult:
    """Phase 2: train the STE model (loaded with :func:`load_ste_checkpoint`) with ``phase.method``'s regularizer.

    ``fisher`` is the STE phase's Adam estimate (needed for ``fisher`` with ``phase.fisher='adam'``);
    ``teacher`` is the frozen FP32 model for ``kd``. The optimizer starts afresh. Writes
    ``qat.json`` (spec and ``phase``) beside the checkpoints.
    """
    out = _out_dir(config, "run_second_phase")
    loss_terms: list[Any] = []
    after_step: list[Any] = []
    if phase.method == "msqe":
        loss_terms.append(MSQE(phase.lam))
    elif phase.method == "fisher":
        if phase.fisher == "true":
            batches = _train_subset_batches(task, phase.true_fisher_examples, config.seed, tokenizer, collate)
            fisher = true_fisher(model, batches, forward_batch, max_examples=phase.true_fisher_examples,
                                 seed=config.seed)
        elif fisher is None:
            raise bad_param("fisher", "the STE phase's Fisher estimate (from load_ste_checkpoint)", None,
                            "run_second_phase(method='fisher')")
        after_step.append(FisherPenalty(fisher, phase.lam, normalize=phase.fisher_normalize))
    elif phase.method == "kd":
        if teacher is None:
            raise bad_param("teacher", "the frozen full-precision model", None, "run_second_phase(method='kd')")
        loss_terms.append(Distillation(teacher, forward_batch, lam=phase.lam, temperature=phase.temperature,
                                       t2_scaling=phase.t2_scaling, regression=task.is_regression))
    _write_manifest(out, spec, phase.method, {"second_phase": asdict(phase)})
    return train(model, task, config, tokenizer=tokenizer, collate=collate, loss_terms=loss_terms,
                 after_step=after_step)


# ------------------------------------------------------------------------------------- artifact


def ste_codebook(module: nn.Module, quantizer: STEQuantize) -> QuantizedTensor:
    """The layer's quantized weight Q(w) as codes + codebook (one row per channel, or per tensor).

    :func:`fewbits.quantize.uniform.uniform` on the latent weight: its codebook rebuilds exactly the
    values the STE forward pass uses.
    """
    w = latent_weight(module).detach().float()
    groups = "channel" if quantizer.per_channel and w.dim() >= 2 else None
    return uniform(w, quantizer.bits, symmetric=quantizer.symmetric, groups=groups)


def _plain_copy(model: nn.Module) -> nn.Module:
    """A new model of the same architecture, without QAT, holding ``model``'s other tensors (on the CPU).

    Built afresh rather than deep-copied: a deep copy of a parametrized module shares its injected
    class with the original, so removing a parametrization from the copy would break the original.
    The weights of STE layers are left as initialized (their codebooks replace them).
    """
    spec = getattr(model, "fewbits_spec", None)
    with torch.random.fork_rng(devices=[]):
        if isinstance(spec, dict) and "fewbits_model" in spec:
            from fewbits.models import build_model

            copy = build_model(spec["fewbits_model"], **spec.get("args", {}))
        elif hasattr(model, "config") and hasattr(model, "save_pretrained"):
            copy = type(model)(model.config)
        else:
            raise bad_param("model", "a built-in model (fewbits.models.build_model) or a Hugging Face model",
                            type(model).__name__, "export_qat")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if ".parametrizations.weight." not in k and f".{ACTIVATION_CHILD}." not in k}
    missing, unexpected = copy.load_state_dict(state, strict=False)
    ste_weights = {f"{name}.weight" for name, _, _ in ste_modules(model)}
    if unexpected or set(missing) - ste_weights:
        raise FewbitsValueError(f"export_qat: the rebuilt model does not match (missing {sorted(missing)[:5]}, "
                                f"unexpected {sorted(unexpected)[:5]}); was the model changed after loading?")
    return copy


def export_qat(model: nn.Module, directory: str | Path, spec: QATSpec, *, tokenizer: Any = None) -> Path:
    """Save the QAT model as a compact artifact: Q(w) as packed codes + codebooks, plus the activation steps.

    The artifact is a :func:`fewbits.save` directory (read by :func:`load_qat`, or by
    :func:`fewbits.load` without the activation quantizers), with ``qat.json`` beside it holding
    the spec and every activation quantizer's bits, sign and learned step. ``model`` is unchanged.
    """
    from fewbits.io import save
    from fewbits.nn.codebook import Codebook
    from fewbits._util.fs import write_text_atomic

    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model in .module
    activations = {name: {"bits": q.bits, "signed": bool(q.signed), "scale": float(q.scale.detach().abs()),
                          "initialized": bool(q.initialized)}
                   for name, q in activation_quantizers(model).items()}
    codebooks = {name: ste_codebook(module, quantizer) for name, module, quantizer in ste_modules(model)}
    copy = _plain_copy(model)
    modules = dict(copy.named_modules())
    for name, qt in codebooks.items():
        register_weight_parametrization(modules[name], Codebook(qt.codes.cpu(), qt.codebook.cpu(), qt.bits, qt.scheme),
                                        drop_original=True)
    out = save(copy, directory, tokenizer=tokenizer)
    manifest = {"format": 1, "phase": "artifact", "spec": spec.to_dict(), "activations": activations}
    write_text_atomic(out / QAT_FILE, json.dumps(manifest, indent=2))
    return out


def load_qat(directory: str | Path) -> nn.Module:
    """Rebuild the model saved by :func:`export_qat`, in eval mode, with its A-bit input quantizers.

    Its outputs equal those of the QAT model it was exported from (in eval mode).
    """
    from fewbits.io import load

    manifest = read_manifest(directory)
    model = load(directory)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, state in manifest.get("activations", {}).items():
            if name not in modules:
                raise FewbitsValueError(f"{Path(directory) / QAT_FILE} names a layer {name!r} the model lacks.")
            quantizer = add_activation_quantizer(modules[name], int(state["bits"]))
            quantizer.scale.fill_(float(state["scale"]))
            quantizer.signed.fill_(bool(state["signed"]))
            quantizer.initialized.fill_(bool(state["initialized"]))
    return model.eval()
