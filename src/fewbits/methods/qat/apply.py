"""The QAT method's transform: STE weights and learned-step input quantizers on the target layers.

``prepare_qat(model, wbits, abits)`` puts an :class:`~fewbits.nn.ste.STEQuantize` on the weight of
every target layer and an :class:`~fewbits.nn.activations.ActivationQuantizer` on its input.
Bits 32 mean full precision (nothing registered). Targets default to every layer with a weight
of two or more dimensions (convolutions, fully connected layers, embeddings), except the first
and the last such layer (``keep_first_last=True``): the stem sees raw inputs and the head
produces the logits, both cheap in parameters and costly in accuracy when quantized, which is the
common practice of QAT papers (DoReFa, PACT, LSQ keep them at high precision). Embeddings get STE
weights but never activation quantization (their inputs are ids).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, FewbitsValueError
from fewbits.methods.qat.config import FULL_PRECISION, QATConfig
from fewbits.nn.activations import activation_quantizers, add_activation_quantizer
from fewbits.nn.ste import STEQuantize, ste_modules
from fewbits.nn.targets import candidate_names, register_weight_parametrization, select_targets


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
                keep_first_last: bool = True, per_channel: bool = True, symmetric: bool = True) -> QATConfig:
    """Quantize the target layers' weights (STE) and inputs (learned-step fake quantization), in place.

    Validates everything before changing the model. Returns the :class:`QATConfig` (with the layer
    names) to store beside checkpoints. Example: ``prepare_qat(model, wbits=2, abits=2)``.
    """
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of prepare_qat must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    config = QATConfig(wbits, abits, per_channel, symmetric, keep_first_last,
                       targets if targets is None or isinstance(targets, str) else list(targets),
                       exclude if exclude is None or isinstance(exclude, str) else list(exclude))
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
    return QATConfig(wbits, abits, per_channel, symmetric, keep_first_last, config.targets, config.exclude, names)


def apply(model: nn.Module, config: QATConfig) -> QATConfig:
    """Prepare a fresh model exactly as ``config`` says (the registry's entry; before loading a QAT checkpoint)."""
    rebuilt = prepare_qat(model, config.wbits, config.abits, targets=config.targets, exclude=config.exclude,
                          keep_first_last=config.keep_first_last, per_channel=config.per_channel,
                          symmetric=config.symmetric)
    if config.layers and rebuilt.layers != config.layers:
        raise FewbitsValueError(f"The model's quantized layers {rebuilt.layers[:5]}... differ from the config's "
                                f"{config.layers[:5]}...: is it the same architecture?")
    return rebuilt
