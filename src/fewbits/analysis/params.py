"""Effective parameters of a model, and a context that evaluates the model at other values of them.

The "effective" value of a weight is what the forward pass sees: ``module.weight`` itself for a plain
module, the parametrized value (e.g. the dequantized codebook weight) for a module parametrized with
``torch.nn.utils.parametrize``. Landscapes and Hessians in :mod:`fewbits.analysis` are taken with
respect to these values, so a quantized model is analysed around its dequantized weights and a
perturbation is never re-quantized.

:func:`override_parameters` swaps values in for the duration of a ``with`` block and puts every
original object back on exit, even when the block raises. It does not use ``torch.func.functional_call``
because that calls a parametrization's ``right_inverse`` (writing into the model, or failing) instead
of bypassing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsValueError


@dataclass(frozen=True)
class _Site:
    """Where one effective tensor lives: ``module.<attr>``; ``parametrized`` if computed by a parametrization."""

    module: nn.Module
    attr: str
    parametrized: bool


class _Constant(nn.Module):
    """Stands in for a ParametrizationList: returns a fixed tensor (held as a plain attribute)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self) -> torch.Tensor:
        return self.value


def _is_machinery(name: str) -> bool:
    """True for modules inside a ``parametrizations`` container (their tensors fold into the effective value)."""
    return "parametrizations" in name.split(".")


def _tie_key(plist: nn.Module) -> int | tuple[int, ...]:
    """What a parametrized tensor's value depends on: its chain of parametrizations and its original.

    Tied modules may each hold their own list around one shared parametrization (fewbits.nn's tied
    codebooks, whose original is an empty placeholder): those compute one value and share a key.
    """
    original = getattr(plist, "original", None)
    chain = tuple(id(p) for p in plist)
    if isinstance(original, torch.Tensor) and original.numel() == 0:
        return chain
    return chain + (id(original) if original is not None else id(plist),)


def _sites(model: nn.Module) -> dict[str, list[_Site]]:
    """Effective tensor name -> every place it is stored (tied weights have several), in module order."""
    sites: dict[str, list[_Site]] = {}
    first_name: dict[int, str] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if _is_machinery(mod_name):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations.keys():
                name = first_name.setdefault(_tie_key(module.parametrizations[attr]), prefix + attr)
                site = _Site(module, attr, True)
                if site not in sites.get(name, []):
                    sites.setdefault(name, []).append(site)
        for attr, param in module._parameters.items():
            if param is None or not param.is_floating_point():
                continue
            name = first_name.setdefault(id(param), prefix + attr)
            site = _Site(module, attr, False)
            if site not in sites.get(name, []):
                sites.setdefault(name, []).append(site)
    return sites


def _trainable(site: _Site) -> bool:
    if site.parametrized:
        return any(p.requires_grad for p in site.module.parametrizations[site.attr].parameters())
    return bool(site.module._parameters[site.attr].requires_grad)


def effective_parameters(model: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Name -> detached effective value of every floating-point parameter, in module order.

    A parametrized weight appears once under its plain name (``"fc.weight"``, not
    ``"fc.parametrizations.weight.original"``), with the value the forward pass sees; tensors
    inside the parametrization (an original weight, a codebook) are folded into it. Tied weights
    appear once, under their first name. ``trainable_only`` keeps tensors that receive gradient
    (a plain parameter with ``requires_grad``, or a parametrized one with any trainable source).

    >>> effective_parameters(nn.Linear(3, 2))["weight"].shape
    torch.Size([2, 3])
    """
    values: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, sites in _sites(model).items():
            site = sites[0]
            if trainable_only and not _trainable(site):
                continue
            value = getattr(site.module, site.attr) if site.parametrized else site.module._parameters[site.attr]
            if value.is_floating_point():
                values[name] = value.detach()
    return values


@contextlib.contextmanager
def override_parameters(model: nn.Module, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, the forward pass of ``model`` sees ``values`` (effective names) instead of its own.

    Names not in ``values`` keep their own value. A parametrized tensor's parametrization is bypassed
    (the given value is used as is). Values may require grad, so Hessians can be taken through them.
    Every original object is restored on exit, also on an exception.

    Raises FewbitsValueError for an unknown name, or a plain parameter given a value of another shape
    (a parametrized tensor's shape is not checked here: computing it would cost a parametrization call).
    """
    sites = _sites(model)
    unknown = sorted(set(values) - set(sites))
    if unknown:
        raise FewbitsValueError(
            f"The 'values' parameter of override_parameters must name effective parameters of the model. "
            f"Got unknown name(s) {unknown[:5]} instead; see effective_parameters(model) for the names."
        )
    saved: list[tuple[dict, str, object]] = []
    try:
        for name, value in values.items():
            for site in sites[name]:
                if site.parametrized:
                    container = site.module.parametrizations._modules
                    replacement: object = _Constant(value)
                else:
                    container = site.module._parameters
                    replacement = value
                    if tuple(container[site.attr].shape) != tuple(value.shape):
                        raise FewbitsValueError(
                            f"The value for {name!r} given to override_parameters must have shape "
                            f"{tuple(container[site.attr].shape)}. Got {tuple(value.shape)} instead."
                        )
                saved.append((container, site.attr, container[site.attr]))
                container[site.attr] = replacement
        yield
    finally:
        for container, attr, original in reversed(saved):
            container[attr] = original


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the block, then restore each one's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
