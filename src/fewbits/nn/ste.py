"""STE weight quantization (P2): the forward pass sees Q(w), the gradient goes straight to the latent w.

:class:`STEQuantize` is a ``torch.nn.utils.parametrize`` parametrization of a layer's weight. The
module keeps its full-precision *latent* weight (``module.parametrizations.weight.original``, the
tensor the optimizer updates); every forward pass recomputes the scale from the current latent
weight and returns the quantized weight Q(w). The backward pass is the identity (the
straight-through estimator), so the latent weight's gradient is exactly the gradient of the loss
with respect to the weight, evaluated at the quantized point Q(w).

Grid: the uniform quantizer of :mod:`fewbits.quantize.uniform` (``uniform_scale`` then
``fake_quantize``), per output channel (``per_channel=True``, the default) or per tensor.
Symmetric by default, the mid-rise grid ``(k + 1/2) * scale``: its outer levels are ``+-max|w|``
(2 bits: ``{-1, -1/3, 1/3, 1} * max|w|``; zero is not a level), and 1 bit is binary,
``{-a, +a}`` with ``a = mean|w|`` (the least-squares scale of sign(w), as XNOR-Net), ``w = 0``
going to ``+a``. ``symmetric=False``: ``2**bits`` levels from ``min(w, 0)`` to ``max(w, 0)`` with
zero exactly a level.

Full precision (32 bits) means no parametrization at all: see :func:`fewbits.qat.prepare_qat`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from fewbits.errors import FewbitsTypeError, bad_param
from fewbits.nn.targets import find_parametrizations
from fewbits.quantize.base import MAX_BITS, check_bits
from fewbits.quantize.uniform import fake_quantize, uniform_scale

__all__ = ["STEQuantize", "latent_weight", "ste_modules"]


class _StraightThrough(torch.autograd.Function):
    """Forward returns ``quantized`` exactly; backward hands the gradient to ``latent`` unchanged."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class STEQuantize(nn.Module):
    """Parametrization ``weight -> Q(weight)`` with a straight-through gradient to the latent weight.

    The scale is recomputed from the latent weight on every call (no state, nothing to calibrate,
    and it follows the weight as it trains). Example::

        register_weight_parametrization(layer, STEQuantize(bits=2))
        layer.weight            # Q(w), at most 2**bits distinct values per channel
    """

    def __init__(self, bits: int, *, per_channel: bool = True, symmetric: bool = True) -> None:
        super().__init__()
        self.bits = check_bits(bits, "STEQuantize", MAX_BITS)
        if not isinstance(per_channel, bool):
            raise FewbitsTypeError(f"The 'per_channel' parameter of STEQuantize must be a bool. Got {per_channel!r}.")
        if not isinstance(symmetric, bool):
            raise FewbitsTypeError(f"The 'symmetric' parameter of STEQuantize must be a bool. Got {symmetric!r}.")
        self.per_channel = per_channel
        self.symmetric = symmetric

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, symmetric={self.symmetric}"

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Q(weight) without gradient: the grid point each weight is sent to."""
        groups = "channel" if self.per_channel and weight.dim() >= 2 else None
        scale, zero_point = uniform_scale(weight, self.bits, symmetric=self.symmetric, groups=groups)
        return fake_quantize(weight, self.bits, scale, zero_point, symmetric=self.symmetric)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Q(weight) in value; d/d weight is the identity."""
        return _StraightThrough.apply(weight, self.quantize(weight))


def ste_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, STEQuantize]]:
    """``(name, module, quantizer)`` for every module whose weight carries an :class:`STEQuantize`."""
    for name, (module, quantizer) in find_parametrizations(model, STEQuantize).items():
        yield name, module, quantizer  # type: ignore[misc]


def latent_weight(module: nn.Module) -> nn.Parameter:
    """The full-precision latent weight under a module's parametrizations (what the optimizer updates)."""
    try:
        return module.parametrizations.weight.original
    except AttributeError:
        raise bad_param("module", "a module whose weight is parametrized (e.g. by STEQuantize)",
                        type(module).__name__, "latent_weight") from None
