"""Plan mixed precision: each layer's bits under an average-bits budget, from per-layer, per-bits sensitivities.

For every target layer and every width in ``bits_options`` the layer is quantized once (as
:func:`fewbits.compress` would, importances and outliers included) and two numbers are kept: its
bytes in an artifact (:func:`fewbits.quantize.allocate.layer_bytes`) and its predicted loss increase,

- ``sensitivity="error"``: the importance-weighted squared error ``sum(F * (w - w_hat)**2)`` (with a
  diagonal Fisher ``F`` this is twice the second-order loss increase; without importances, the plain
  squared error);
- ``sensitivity="trace"`` (HAWQ-V2): ``trace(H_layer) / numel * sum((w - w_hat)**2)``, from the
  per-layer Hessian traces given in ``traces`` (:func:`fewbits.analysis.importance.layer_traces`).

The widths are then chosen exactly (:func:`fewbits.quantize.allocate.allocate`) so that the summed
bytes of the compressed layers (codes, codebooks, outliers) stay within ``budget_bits`` per weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fewbits.errors import FewbitsValueError, TargetsNotFoundError, bad_param
from fewbits.methods.codebook.apply import Quantizer, prepare_layers
from fewbits.nn.targets import Patterns
from fewbits.quantize.allocate import allocate, layer_bytes
from fewbits.quantize.base import MAX_BITS, check_bits

SENSITIVITIES = ("error", "trace")
CODEBOOK_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class BitPlan:
    """Each layer's chosen bits, and the table it was chosen from.

    ``losses[layer][i]`` and ``costs[layer][i]`` are the predicted loss increase and the bytes of that
    layer at ``options[i]`` bits; ``bytes`` sums the chosen costs (never above ``budget_bytes``).
    """

    bits: dict[str, int]
    options: list[int]
    numel: dict[str, int]
    losses: dict[str, list[float]]
    costs: dict[str, list[int]]
    budget_bits: float
    budget_bytes: int
    bytes: int
    predicted_loss: float
    sensitivity: str

    @property
    def average_bits(self) -> float:
        """Bits per compressed weight the plan spends (codes, codebooks and outliers)."""
        return 8 * self.bytes / sum(self.numel.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)


def check_budget(budget_bits: object, owner: str) -> float:
    """Return ``budget_bits`` if it is a number in [1, 8] (average bits per compressed weight)."""
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) \
            or not 1 <= budget_bits <= MAX_BITS:
        raise bad_param("bits", f"an average number of bits in [1, {MAX_BITS}] (e.g. 2.5)", budget_bits, owner)
    return float(budget_bits)


def _options(bits_options: Iterable[int]) -> list[int]:
    options = sorted(set(bits_options))
    if not options:
        raise bad_param("bits_options", "a non-empty set of ints in [1, 8]", options, "plan_bits")
    return [check_bits(b, "plan_bits") for b in options]


def _scales(traces: Mapping[str, float] | None, aliases: dict[str, str], numel: dict[str, int],
            sensitivity: str) -> dict[str, float]:
    """Per-layer factor of the squared error: 1 (``error``) or trace / numel (``trace``)."""
    if sensitivity == "error":
        if traces is not None:
            raise bad_param("traces", "None with sensitivity='error' (traces weight sensitivity='trace')",
                            "given", "plan_bits")
        return dict.fromkeys(numel, 1.0)
    if traces is None:
        raise bad_param("traces", "per-layer Hessian traces (fewbits.analysis.importance.layer_traces)", None,
                        "plan_bits(sensitivity='trace')")
    unknown = sorted(set(traces) - set(aliases))
    if unknown:
        raise TargetsNotFoundError(f"The 'traces' of plan_bits name layers that are not compressed: {unknown}.")
    given = {aliases[k]: float(v) for k, v in traces.items()}
    missing = sorted(set(numel) - set(given))
    if missing or not all(math.isfinite(v) for v in given.values()):
        raise bad_param("traces", "a finite trace for every compressed layer", f"missing {missing[:5]}", "plan_bits")
    # a trace estimate can come out negative on a layer of little curvature: it then predicts no loss
    return {name: max(given[name], 0.0) / numel[name] for name in numel}


def plan_bits(model: nn.Module, budget_bits: float, scheme: str | Quantizer = "optimal", *,
              groups: int | str | None = None, group_size: int | None = None, targets: Patterns = None,
              exclude: Patterns = None, sample_weights: Mapping[str, torch.Tensor] | None = None,
              outliers: float = 0.0, outlier_selection: str = "magnitude", sensitivity: str = "error",
              traces: Mapping[str, float] | None = None, bits_options: Iterable[int] = range(1, MAX_BITS + 1),
              codebook_dtype: str = "float32", seed: int | None = 0, progress: bool = False,
              **scheme_kw: Any) -> BitPlan:
    """Choose each target layer's bits so that they average at most ``budget_bits`` per weight.

    Arguments as in :func:`fewbits.compress` (pass the same ones to it with ``bits=plan.bits``);
    ``codebook_dtype`` as in :func:`fewbits.save`, whose bytes the plan counts. Does not change the
    model. Costs ``len(bits_options)`` quantizations of every layer.
    Example: ``plan = plan_bits(model, 2.5, "optimal", sample_weights=fisher); compress(model, "optimal",
    plan.bits, sample_weights=fisher)``.
    """
    budget_bits = check_budget(budget_bits, "plan_bits")
    if sensitivity not in SENSITIVITIES:
        raise bad_param("sensitivity", f"one of {SENSITIVITIES}", sensitivity, "plan_bits")
    if codebook_dtype not in CODEBOOK_BYTES:
        raise bad_param("codebook_dtype", f"one of {sorted(CODEBOOK_BYTES)}", codebook_dtype, "plan_bits")
    options = _options(bits_options)
    prep = prepare_layers(model, scheme, targets=targets, exclude=exclude, groups=groups, group_size=group_size,
                          sample_weights=sample_weights, seed=seed, outliers=outliers,
                          outlier_selection=outlier_selection, owner="plan_bits", **scheme_kw)
    numel = {layer.name: layer.weight.numel() for layer in prep.layers}
    scales = _scales(traces, prep.aliases, numel, sensitivity)
    from tqdm.auto import tqdm

    losses: dict[str, list[float]] = {}
    costs: dict[str, list[int]] = {}
    for layer in tqdm(prep.layers, desc="plan bits", disable=not progress):
        losses[layer.name], costs[layer.name] = [], []
        weighted = layer.sample_weight if sensitivity == "error" else None
        for b in options:
            ds = prep.quantize(layer, b)
            losses[layer.name].append(scales[layer.name] * ds.squared_error(layer.weight, weighted))
            costs[layer.name].append(layer_bytes(numel[layer.name], b, ds.quantized.n_groups,
                                                 codebook_bytes=CODEBOOK_BYTES[codebook_dtype],
                                                 outliers=ds.index.numel()))
    table = BitPlan({}, options, numel, losses, costs, budget_bits, 0, 0, 0.0, sensitivity)
    return replan(table, budget_bits)


def replan(plan: BitPlan, budget_bits: float) -> BitPlan:
    """The same layers' table allocated again under another budget (no quantization: a sweep of budgets is cheap)."""
    budget_bits = check_budget(budget_bits, "plan_bits")
    names = list(plan.losses)
    total = sum(plan.numel.values())
    budget = math.floor(budget_bits * total / 8)
    try:
        result = allocate([plan.losses[n] for n in names], [plan.costs[n] for n in names], budget)
    except FewbitsValueError:
        least = 8 * sum(min(plan.costs[n]) for n in names) / total
        raise bad_param("bits", f"an average of at least {least:.4f} bits (the cheapest widths, with codebooks "
                        "and outliers)", budget_bits, "plan_bits") from None
    chosen = {n: plan.options[j] for n, j in zip(names, result.choice)}
    return BitPlan(chosen, plan.options, plan.numel, plan.losses, plan.costs, budget_bits, budget, result.cost,
                   result.loss, plan.sensitivity)
