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
from fewbits.quantize.outliers import DenseAndSparse, check_outlier_fraction, check_selection, split_outliers
from fewbits.runtime import to_training

Quantizer = Callable[..., QuantizedTensor]


@dataclass(frozen=True)
class LayerReport:
    """What :func:`compress` did to one weight.

    ``squared_error`` is ``sum((w - w_hat)**2)``; ``relative_error`` divides it by ``sum(w**2)``.
    ``tied`` names the other modules that share this weight (and so its codebook); ``outliers`` counts
    the weights kept exact beside the codebook.
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    scheme: str
    n_groups: int
    squared_error: float
    relative_error: float
    tied: tuple[str, ...] = ()
    outliers: int = 0


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


def _scheme_kwargs(name: str, quantizer: Quantizer, scheme_kw: dict, importance: dict, seed: int | None,
                   outliers: float = 0.0) -> dict:
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
        if outliers and "sample_weight" not in accepted:
            raise bad_param("outliers", f"0: the {name!r} scheme cannot leave weights out of its fit "
                            "(kmeans and optimal can)", outliers, "compress")
    if seed is not None and (accepted is None or "seed" in accepted):
        kw["seed"] = seed  # only schemes that draw random numbers take a seed
    return kw


def _layer_bits(bits: int | Mapping[str, int], aliases: dict[str, str]) -> dict[str, int]:
    """One bit width per weight group: ``bits`` for all, or a mapping naming every compressed layer once."""
    if not isinstance(bits, Mapping):
        return {first: check_bits(bits, "compress", MAX_BITS) for first in set(aliases.values())}
    chosen: dict[str, int] = {}
    for name, b in bits.items():
        if name not in aliases:
            raise TargetsNotFoundError(f"The 'bits' of compress name a layer that is not compressed: {name!r}. "
                                       f"Compressed layers: {sorted(aliases)}.")
        check_bits(b, f"compress (layer {name!r})", MAX_BITS)
        if chosen.setdefault(aliases[name], b) != b:
            raise bad_param("bits", "one width per shared weight", f"{chosen[aliases[name]]} and {b} for {name!r}",
                            "compress")
    missing = sorted(first for first in set(aliases.values()) if first not in chosen)
    if missing:
        raise bad_param("bits", "a mapping naming every compressed layer (or one int for all)",
                        f"no width for {missing[:5]}", "compress")
    return chosen


@dataclass(frozen=True)
class TargetLayer:
    """One weight to compress: its modules (the first names it), the weight, group size and importances."""

    group: list[str]
    weight: torch.Tensor
    group_size: int
    sample_weight: torch.Tensor | None

    @property
    def name(self) -> str:
        return self.group[0]


@dataclass
class PreparedLayers:
    """Every target of a model, validated, and how to quantize one (shared by compress and plan_bits)."""

    scheme: str
    quantizer: Quantizer
    kw: dict
    modules: dict[str, nn.Module]
    layers: list[TargetLayer]
    aliases: dict[str, str]  # every compressed module name -> the first module of its weight group
    outliers: float
    outlier_selection: str

    def quantize(self, layer: TargetLayer, bits: int) -> DenseAndSparse:
        """Quantize one layer at ``bits`` (its outliers kept apart when asked) and check the result."""
        if self.outliers:
            ds = split_outliers(layer.weight, self.quantizer, bits, self.outliers, selection=self.outlier_selection,
                                sample_weight=layer.sample_weight, group_size=layer.group_size, **self.kw)
        else:
            extra = dict(self.kw, sample_weight=layer.sample_weight) if layer.sample_weight is not None else self.kw
            ds = DenseAndSparse.plain(self.quantizer(layer.weight.detach(), bits, group_size=layer.group_size, **extra))
        _check_result(ds.quantized, layer.weight, bits, layer.group_size, layer.name)
        return ds


def prepare_layers(model: nn.Module, scheme: str | Quantizer, *, targets: Patterns = None, exclude: Patterns = None,
                   groups: int | str | None = None, group_size: int | None = None,
                   sample_weights: Mapping[str, torch.Tensor] | None = None, seed: int | None = 0,
                   outliers: float = 0.0, outlier_selection: str = "magnitude", owner: str = "compress",
                   **scheme_kw) -> PreparedLayers:
    """Validate every argument of :func:`compress` (but bits) and find the target weights; changes nothing."""
    name, quantizer = _resolve_quantizer(scheme)
    outliers = check_outlier_fraction(outliers, owner)
    check_selection(outlier_selection, owner)
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of {owner} must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    selected = select_targets(model, targets, exclude, owner=owner)
    modules = dict(model.named_modules())
    already = [n for n in selected if parametrize.is_parametrized(modules[n], "weight")]
    if already:
        raise FewbitsValueError(f"{owner}: the weight of {already[:5]} is already parametrized; call "
                                "fewbits.decompress(model) (or remove the other parametrization) first.")
    excluded = matching_names(model, exclude, "exclude", owner) if exclude is not None else set()
    weight_groups = _weight_groups(model, selected, excluded)
    importance = _importance(sample_weights, weight_groups)
    layers = []
    for group in weight_groups:
        weight = modules[group[0]].weight
        where = f"{owner} (layer {group[0]!r})"
        if not weight.is_floating_point():
            raise bad_param("weight", "a floating-point tensor", str(weight.dtype), where)
        layers.append(TargetLayer(group, weight, resolve_group_size(weight.shape, groups, group_size, where),
                                  check_sample_weight(importance.get(group[0]), weight, where)))
    kw = _scheme_kwargs(name, quantizer, scheme_kw, importance, seed, outliers)
    aliases = {n: group[0] for group in weight_groups for n in group}
    return PreparedLayers(name, quantizer, kw, modules, layers, aliases, outliers, outlier_selection)


def compress(
    model: nn.Module,
    scheme: str | Quantizer = "kmeans",
    bits: int | Mapping[str, int] = 4,
    *,
    groups: int | str | None = None,
    group_size: int | None = None,
    targets: Patterns = None,
    exclude: Patterns = None,
    sample_weights: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = 0,
    outliers: float = 0.0,
    outlier_selection: str = "magnitude",
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
    ``bits`` is one width for every layer or a mapping from layer names to widths (mixed precision,
    e.g. from :func:`fewbits.methods.codebook.plan_bits`). ``sample_weights`` maps target names to
    per-weight importances. ``outliers`` keeps that fraction of each layer's weights exact beside its
    codebook, chosen by ``outlier_selection`` (``"magnitude"`` or ``"error"``; see
    :mod:`fewbits.quantize.outliers`); it needs a scheme that takes ``sample_weight``. ``seed`` goes to the
    schemes that draw random numbers (kmeans). ``scheme_kw`` go to the scheme (e.g. ``max_iter``
    for kmeans, ``mode`` for optimal). Modules sharing one weight
    (tied embeddings) share one codebook.

    Example: ``reports = compress(model, "kmeans", bits=3, exclude=["position_embeddings"])``.
    """
    if not isinstance(bits, Mapping):
        check_bits(bits, "compress", MAX_BITS)
    prep = prepare_layers(model, scheme, targets=targets, exclude=exclude, groups=groups, group_size=group_size,
                          sample_weights=sample_weights, seed=seed, outliers=outliers,
                          outlier_selection=outlier_selection, owner="compress", **scheme_kw)
    widths = _layer_bits(bits, prep.aliases)
    from tqdm.auto import tqdm

    label = f"{bits}-bit" if not isinstance(bits, Mapping) else "mixed"
    quantized = [prep.quantize(layer, widths[layer.name])
                 for layer in tqdm(prep.layers, desc=f"compress {prep.scheme} {label}", disable=not progress)]
    reports = []
    for layer, ds in zip(prep.layers, quantized):
        qt, kept, weight = ds.quantized, ds.index.numel(), layer.weight
        err = ds.squared_error(weight)
        norm = float(weight.detach().double().pow(2).sum())
        reports.append(LayerReport(layer.name, tuple(weight.shape), qt.bits, qt.scheme, qt.n_groups, err,
                                   err / norm if norm > 0 else 0.0, tuple(layer.group[1:]), kept))
        device = weight.device
        codebook = Codebook(qt.codes.to(device), qt.codebook.to(device, weight.dtype), qt.bits, qt.scheme,
                            ds.index if kept else None, ds.values if kept else None)
        for module_name in layer.group:
            register_weight_parametrization(prep.modules[module_name], codebook, drop_original=True)
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
                    targets=config.targets, exclude=config.exclude, seed=config.seed, outliers=config.outliers,
                    outlier_selection=config.outlier_selection, **config.options)
