"""Activation quantization (P2's A bits): the inputs of quantized layers are fake-quantized to A bits.

An :class:`ActivationQuantizer` sits on a layer as a forward pre-hook (and as the child module
``input_quantizer``, so its step size is a parameter of the model: it is trained, checkpointed
and restored with the rest). It sends every input value to a uniform grid of ``2**bits`` points
with a straight-through gradient inside the clipping range and zero outside it.

The clipping range is LEARNED, as in LSQ (Esser et al. 2020): the step size ``scale`` is a
parameter trained by the task loss, with LSQ's gradient scale ``1 / sqrt(n * q_max)`` (``n``
values per example). Why learned rather than a tracked min/max: at 2 bits a range set by the
observed extremes is dominated by rare large activations and sends most values to zero, while a
learned step trades clipping error against rounding error for the loss itself.

Initialisation, from the first batch the layer sees in training mode: if every input is >= 0
(after a ReLU) the grid is unsigned, ``{0, s, ..., (2**bits - 1) s}``, else signed and symmetric;
``scale = 2 * mean(|x|) / sqrt(q_max)`` (LSQ's rule). Embedding inputs are integer ids and are
never quantized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.quantize.base import MAX_BITS, check_bits
from fewbits.quantize.uniform import fake_quantize

__all__ = ["ActivationQuantizer", "activation_quantizers", "add_activation_quantizer", "remove_activation_quantizers"]

CHILD_NAME = "input_quantizer"
_HOOK_ATTR = "_fewbits_input_quant_hook"


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in value, its gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


class ActivationQuantizer(nn.Module):
    """Fake-quantize a tensor to ``bits`` with a learned step size (see the module docstring).

    ``scale`` is a scalar parameter; ``signed`` and ``initialized`` are buffers set on the first
    training-mode call (an uninitialized quantizer in eval mode raises: train or calibrate first).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_bits(bits, "ActivationQuantizer", MAX_BITS)
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={bool(self.signed)}, scale={float(self.scale.detach()):.4g}"

    @property
    def q_max(self) -> int:
        """Largest grid index: ``2**(bits-1) - 1`` signed, ``2**bits - 1`` unsigned."""
        return 2 ** (self.bits - 1) - 1 if bool(self.signed) else 2 ** self.bits - 1

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Choose the grid's sign and LSQ's initial step from a batch of inputs."""
        self.signed.fill_(bool((x < 0).any()))
        q_max = max(self.q_max, 1)
        mean_abs = float(x.detach().abs().float().mean())
        self.scale.fill_(2.0 * mean_abs / math.sqrt(q_max) if mean_abs > 0 else 1.0)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` sent to the grid; straight-through gradient to ``x`` inside the range, LSQ gradient to ``scale``."""
        if not bool(self.initialized):
            if not self.training:
                raise FewbitsValueError(
                    "An ActivationQuantizer was called in eval mode before it saw any training batch, so its "
                    "range is unset: run a training step (or call .calibrate(x)) first."
                )
            self.calibrate(x)
        n = x[0].numel() if x.dim() > 1 else x.numel()
        step = _grad_scale(self.scale.abs().clamp(min=1e-8), 1.0 / math.sqrt(n * max(self.q_max, 1)))
        signed = bool(self.signed)
        zero_point = None if signed else torch.zeros((), device=x.device)
        return fake_quantize(x, self.bits, step.to(x.dtype), zero_point, symmetric=signed)


def _pre_hook(module: nn.Module, args: tuple) -> tuple | None:
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        return None
    return (getattr(module, CHILD_NAME)(args[0]),) + tuple(args[1:])


def add_activation_quantizer(module: nn.Module, bits: int) -> ActivationQuantizer:
    """Quantize the first positional input of ``module`` to ``bits`` on every forward pass."""
    if not isinstance(module, nn.Module):
        raise FewbitsTypeError(f"The 'module' parameter of add_activation_quantizer must be an nn.Module. "
                               f"Got {type(module).__name__} instead.")
    if isinstance(module, nn.Embedding):
        raise bad_param("module", "a layer with floating-point inputs (not an Embedding, whose inputs are ids)",
                        type(module).__name__, "add_activation_quantizer")
    if hasattr(module, _HOOK_ATTR):
        raise FewbitsValueError(f"The {type(module).__name__} already quantizes its input; remove it first with "
                                "remove_activation_quantizers(model).")
    quantizer = ActivationQuantizer(bits)
    param = next(module.parameters(), None)
    if param is not None:
        quantizer.to(param.device)
    module.add_module(CHILD_NAME, quantizer)
    setattr(module, _HOOK_ATTR, module.register_forward_pre_hook(_pre_hook))
    return quantizer


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """``name of the quantized layer -> its ActivationQuantizer``."""
    return {name: getattr(m, CHILD_NAME) for name, m in model.named_modules() if hasattr(m, _HOOK_ATTR)}


def remove_activation_quantizers(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Stop quantizing the inputs of the named layers (all of them by default)."""
    modules = dict(model.named_modules())
    for name in list(activation_quantizers(model) if names is None else names):
        module = modules[name]
        handle: RemovableHandle = getattr(module, _HOOK_ATTR)
        handle.remove()
        delattr(module, _HOOK_ATTR)
        delattr(module, CHILD_NAME)
