"""The codebook method's transform: compress a model in place (codebook parametrizations), undo it, optimizer groups.

``compress`` validates everything and quantizes every target before it changes the model, so an
error never leaves a model half converted.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, FewbitsValueError, TargetsNotFoundError, bad_param
from fewbits.methods.codebook.config import CodebookConfig
from fewbits.nn.codebook import Codebook
from fewbits.nn.targets import (Patterns, find_parametrizations, matching_names, register_weight_parametrization,
                                remove_weight_parametrizations, select_targets)
from fewbits.quantize import SCHEMES
from fewbits.quantize.base import MAX_BITS, QuantizedTensor, check_bits, check_sample_weight, resolve_group_size
from fewbits.runtime import to_training

Quantizer = Callable[..., QuantizedTensor]


@dataclass(frozen=True)
class LayerReport:
    """What :func:`compress` did to one weight.

    ``squared_error`` is ``sum((w - w_hat)**2)``; ``relative_error`` divides it by ``sum(w**2)``.
    ``tied`` names the other modules that share this weight (and so its codebook).
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    scheme: str
    n_groups: int
    squared_error: float
    relative_error: float
    tied: tuple[str, ...] = ()


def codebook_modules(model: nn.Module) -> dict[str, tuple[nn.Module, Codebook]]:
    """``name -> (module, Codebook)`` for every compressed module (tied modules share one Codebook)."""
    return find_parametrizations(model, Codebook)  # type: ignore[return-value]


def _resolve_quantizer(scheme: str | Quantizer) -> tuple[str, Quantizer]:
    """A scheme name from ``fewbits.quantize.SCHEMES``, or any callable returning a QuantizedTensor."""
    if callable(scheme):
        return getattr(scheme, "__name__", "custom"), scheme
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise bad_param("scheme", f"one of {sorted(SCHEMES)} or a callable", scheme, "compress")
    return scheme, SCHEMES[scheme]


def _keywords(quantizer: Quantizer) -> set[str] | None:
    """Keyword arguments the quantizer accepts; None when it takes ``**kwargs`` (anything goes)."""
    try:
        params = inspect.signature(quantizer).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def _weight_groups(model: nn.Module, selected: list[str], excluded: set[str]) -> list[list[str]]:
    """Group the selected modules by the weight Parameter they hold; tied partners join their group.

    Raises when a shared weight is also used outside a module's ``weight`` (it would stay FP32) or
    when a tied partner was explicitly excluded.
    """
    modules = dict(model.named_modules())
    holders: dict[int, list[str]] = {}
    for name, module in modules.items():
        weight = module._parameters.get("weight")
        if weight is not None:
            holders.setdefault(id(weight), []).append(name)
    uses: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        uses.setdefault(id(p), []).append(pname)
    groups, seen = [], set()
    for name in selected:
        weight = modules[name]._parameters["weight"]
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        partners = holders[id(weight)]
        other_uses = sorted(set(uses.get(id(weight), [])) - {f"{n}.weight" for n in partners})
        if other_uses:
            raise FewbitsValueError(
                f"compress: the weight of {name!r} is also used as {other_uses}; a codebook can replace it "
                f"only where it is a module's 'weight'. Exclude {name!r} (exclude=[{name!r}]).")
        refused = [n for n in partners if n in excluded]
        if refused:
            raise FewbitsValueError(
                f"compress: {name!r} shares its weight with the excluded {refused}; tied modules are compressed "
                f"together. Exclude all of {partners} or none.")
        groups.append([name] + [n for n in partners if n != name])
    return groups


def _importance(sample_weights: Mapping[str, torch.Tensor] | None,
                weight_groups: list[list[str]]) -> dict[str, torch.Tensor]:
    """``sample_weights`` keyed by the first module of each weight group; names must be compressed layers."""
    sample_weights = dict(sample_weights or {})
    if not all(isinstance(k, str) for k in sample_weights):
        raise bad_param("sample_weights", "a mapping from module names to tensors", list(sample_weights), "compress")
    aliases = {n: group[0] for group in weight_groups for n in group}
    unknown = sorted(set(sample_weights) - set(aliases))
    if unknown:
        raise TargetsNotFoundError(f"The 'sample_weights' of compress name layers that are not compressed: "
                                   f"{unknown}. Compressed layers: {sorted(aliases)}.")
    return {aliases[k]: v for k, v in sample_weights.items()}


def _scheme_kwargs(name: str, quantizer: Quantizer, scheme_kw: dict, importance: dict, seed: int | None) -> dict:
    """The keywords the scheme accepts (an unknown one is an error), plus ``seed`` where it draws random numbers."""
    accepted = _keywords(quantizer)
    kw = dict(scheme_kw)
    if accepted is not None:
        unknown = sorted(set(kw) - accepted)
        if unknown:
            raise bad_param("scheme_kw", f"keywords of the {name!r} scheme among {sorted(accepted - {'weight', 'bits'})}",
                            unknown, "compress")
        if importance and "sample_weight" not in accepted:
            raise bad_param("sample_weights", f"None: the {name!r} scheme does not weight weights by importance "
                            "(kmeans and optimal do)", sorted(importance), "compress")
    if seed is not None and (accepted is None or "seed" in accepted):
        kw["seed"] = seed  # only schemes that draw random numbers take a seed
    return kw


def compress(
    model: nn.Module,
    scheme: str | Quantizer = "kmeans",
    bits: int = 4,
    *,
    groups: int | str | None = None,
    group_size: int | None = None,
    targets: Patterns = None,
    exclude: Patterns = None,
    sample_weights: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = 0,
    progress: bool = False,
    **scheme_kw,
) -> list[LayerReport]:
    """Quantize the target weights of ``model`` in place; return one report per compressed weight.

    Each target's weight becomes frozen ``codes`` plus a trainable ``codebook`` (see
    :class:`~fewbits.nn.Codebook`); the FP32 values are freed. ``scheme`` names a quantizer of
    ``fewbits.quantize`` (``linear``, ``kmeans``, ``optimal``, ``uniform``) or is a callable
    ``f(weight, bits, *, group_size, **kw) -> QuantizedTensor``. ``groups``/``group_size``
    as in the quantizers (``groups=128``: P1's group-wise). ``targets``/``exclude``: see
    :mod:`fewbits.nn.targets` (default: Embeddings and fully connected layers, not the head).
    ``sample_weights`` maps target names to per-weight importances. ``seed`` goes to the
    schemes that draw random numbers (kmeans). ``scheme_kw`` go to the scheme (e.g. ``max_iter``
    for kmeans, ``mode`` for optimal). Modules sharing one weight
    (tied embeddings) share one codebook.

    Example: ``reports = compress(model, "kmeans", bits=3, exclude=["position_embeddings"])``.
    """
    name, quantizer = _resolve_quantizer(scheme)
    check_bits(bits, "compress", MAX_BITS)
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of compress must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    selected = select_targets(model, targets, exclude, owner="compress")
    modules = dict(model.named_modules())
    already = [n for n in selected if parametrize.is_parametrized(modules[n], "weight")]
    if already:
        raise FewbitsValueError(f"compress: the weight of {already[:5]} is already parametrized; call "
                                "fewbits.decompress(model) (or remove the other parametrization) first.")
    excluded = matching_names(model, exclude, "exclude", "compress") if exclude is not None else set()
    weight_groups = _weight_groups(model, selected, excluded)

    importance = _importance(sample_weights, weight_groups)

    plans = []
    for group in weight_groups:
        weight = modules[group[0]].weight
        owner = f"compress (layer {group[0]!r})"
        if not weight.is_floating_point():
            raise bad_param("weight", "a floating-point tensor", str(weight.dtype), owner)
        gs = resolve_group_size(weight.shape, groups, group_size, owner)
        sw = check_sample_weight(importance.get(group[0]), weight, owner)
        plans.append((group, weight, gs, sw))

    kw = _scheme_kwargs(name, quantizer, scheme_kw, importance, seed)
    quantized: list[QuantizedTensor] = []
    from tqdm.auto import tqdm

    for group, weight, gs, sw in tqdm(plans, desc=f"compress {name} {bits}-bit", disable=not progress):
        extra = dict(kw, sample_weight=sw) if sw is not None else kw
        qt = quantizer(weight.detach(), bits, group_size=gs, **extra)
        _check_result(qt, weight, bits, gs, group[0])
        quantized.append(qt)

    reports = []
    for (group, weight, _, _), qt in zip(plans, quantized):
        w64 = weight.detach().double()
        err = qt.squared_error(weight)
        norm = float(w64.pow(2).sum())
        reports.append(LayerReport(group[0], tuple(weight.shape), bits, qt.scheme, qt.n_groups, err,
                                   err / norm if norm > 0 else 0.0, tuple(group[1:])))
        codebook = Codebook(qt.codes.to(weight.device), qt.codebook.to(weight.device, weight.dtype), bits, qt.scheme)
        for module_name in group:
            register_weight_parametrization(modules[module_name], codebook, drop_original=True)
    return reports


def _check_result(qt: object, weight: torch.Tensor, bits: int, group_size: int, name: str) -> None:
    """A quantizer's output must fit the layer: shape, bits, grouping, finite codebook."""
    if not isinstance(qt, QuantizedTensor):
        raise FewbitsTypeError(f"The quantizer for layer {name!r} must return a QuantizedTensor. "
                               f"Got {type(qt).__name__} instead.")
    problems = []
    if tuple(qt.shape) != tuple(weight.shape):
        problems.append(f"codes shape {tuple(qt.shape)} != weight shape {tuple(weight.shape)}")
    if qt.bits != bits or qt.codebook.shape[-1] != 1 << bits:
        problems.append(f"bits {qt.bits} with {qt.codebook.shape[-1]} codebook columns, expected {bits}")
    if qt.codebook.dim() != 2 or qt.group_size != group_size:
        problems.append(f"group_size {qt.group_size}, expected {group_size}")
    if not bool(torch.isfinite(qt.codebook).all()):
        problems.append("NaN or inf in the codebook")
    if problems:
        raise FewbitsValueError(f"The quantizer returned an unusable result for layer {name!r}: {'; '.join(problems)}.")


def decompress(model: nn.Module) -> nn.Module:
    """Turn every compressed module back into a plain one whose weight holds the rebuilt values.

    Everything stacked on the weight (e.g. a mask over the quantized base) is baked in as well, so
    the result runs anywhere without fewbits. Tied modules share one Parameter again. Packed run-time
    layers (``fewbits.load``'s default) are decoded too. In place; returns ``model``.
    """
    model = to_training(model)
    rebuilt: dict[int, nn.Parameter] = {}
    for module, codebook in codebook_modules(model).values():
        with torch.no_grad():
            value = module.weight.detach().clone()
        shared = rebuilt.get(id(codebook))
        if shared is not None and torch.equal(shared, value):
            weight = shared
        else:
            weight = nn.Parameter(value)
            rebuilt.setdefault(id(codebook), weight)
        remove_weight_parametrizations(module)
        del module.weight  # the emptied original, registered back as a buffer
        module.weight = weight
    return model


def param_groups(model: nn.Module, lr: float, quantized_lr_scale: float = 10.0,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: codebooks at ``lr * quantized_lr_scale`` without weight decay.

    Other trainable parameters train at ``lr``; ``weight_decay`` applies to those with two or more
    dimensions (not to biases and norms). Frozen parameters are left out. Each group has a
    ``"name"``: ``codebooks``, ``decay``, ``no_decay`` (empty groups are dropped).
    Example: ``torch.optim.AdamW(param_groups(model, lr=5e-5))`` (P1: codebooks at 5e-4).
    """
    for pname, value, low in (("lr", lr, 0.0), ("quantized_lr_scale", quantized_lr_scale, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
            raise bad_param(pname, "a finite number > 0", value, "param_groups")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not math.isfinite(weight_decay) or weight_decay < 0:
        raise bad_param("weight_decay", "a finite number >= 0", weight_decay, "param_groups")
    codebook_ids = {id(cb.codebook) for _, cb in codebook_modules(model).values()}
    buckets: dict[str, list[nn.Parameter]] = {"codebooks": [], "decay": [], "no_decay": []}
    for p in model.parameters():
        if p.requires_grad:
            kind = "codebooks" if id(p) in codebook_ids else "decay" if p.dim() >= 2 else "no_decay"
            buckets[kind].append(p)
    settings = {"codebooks": (lr * quantized_lr_scale, 0.0), "decay": (lr, float(weight_decay)),
                "no_decay": (lr, 0.0)}
    groups = [{"name": k, "params": v, "lr": settings[k][0], "weight_decay": settings[k][1]}
              for k, v in buckets.items() if v]
    if not groups:
        raise FewbitsValueError("param_groups: the model has no trainable parameter (every parameter has "
                                "requires_grad=False); unfreeze something to train.")
    return groups


def apply(model: nn.Module, config: CodebookConfig) -> list[LayerReport]:
    """Compress ``model`` in place as ``config`` says (the registry's entry); returns one report per weight."""
    return compress(model, config.scheme, config.bits, groups=config.groups, group_size=config.group_size,
                    targets=config.targets, exclude=config.exclude, seed=config.seed, **config.options)
