"""Mixed precision under a size budget: choose each layer's bits to minimise the summed predicted loss.

Each layer offers options (bits 1..8), each with a byte cost (packed codes + codebooks + kept outliers,
:func:`layer_bytes`) and a predicted loss increase (e.g. the importance-weighted squared error of that
layer quantized at those bits). Picking one option per layer so that the summed loss is least and the
summed bytes stay within the budget is a multiple-choice knapsack; :func:`allocate` solves it exactly
by dynamic programming over byte costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fewbits.errors import FewbitsValueError, bad_param
from fewbits.quantize.outliers import INDEX_BYTES
from fewbits.quantize.pack import packed_nbytes

#: Most budget cells the dynamic program uses; above, costs are counted in coarser units (rounded up).
MAX_CELLS = 1 << 20


def layer_bytes(numel: int, bits: int, n_groups: int = 1, *, codebook_bytes: int = 4, outliers: int = 0) -> int:
    """Bytes a compressed layer takes in an artifact: packed codes, codebook rows, kept outliers.

    ``codebook_bytes`` per codebook value (4 for float32, 2 for float16); each outlier costs its
    int32 position plus one value of the codebook's dtype.
    """
    return packed_nbytes(numel, bits) + n_groups * (1 << bits) * codebook_bytes + outliers * (INDEX_BYTES
                                                                                              + codebook_bytes)


@dataclass(frozen=True)
class Allocation:
    """The chosen option of each layer, the summed predicted loss and bytes, the budget and the DP's unit."""

    choice: list[int]
    loss: float
    cost: int
    budget: int
    unit: int


def _check_table(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[int]]) -> None:
    """Same shape, at least one option per layer, finite losses, non-negative integer costs."""
    if len(losses) != len(costs) or not losses:
        raise bad_param("losses", f"one row per layer like 'costs' ({len(costs)} rows)", len(losses), "allocate")
    for i, (row_l, row_c) in enumerate(zip(losses, costs)):
        if len(row_l) != len(row_c) or not row_l:
            raise bad_param(f"losses[{i}]", f"{len(row_c)} options like costs[{i}]", len(row_l), "allocate")
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in row_c):
            raise bad_param(f"costs[{i}]", "non-negative ints (bytes)", list(row_c), "allocate")
        if not all(math.isfinite(float(v)) for v in row_l):
            raise bad_param(f"losses[{i}]", "finite numbers", list(row_l), "allocate")


def allocate(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[int]], budget: int, *,
             unit: int | None = None) -> Allocation:
    """Pick one option per layer minimising ``sum(losses[l][j])`` subject to ``sum(costs[l][j]) <= budget``.

    Exact dynamic program over the bytes each layer spends above its cheapest option, counted in
    ``unit`` bytes with each option's extra rounded UP (so the budget always holds); ``unit=1``
    is exact in bytes, the default is the smallest unit giving at most :data:`MAX_CELLS` cells
    (1 for budgets up to ~1 MiB of extra bytes). Ties go to the earlier option. Raises when even
    the cheapest options exceed the budget.
    Example: ``allocate([[4, 1], [9, 2]], [[1, 2], [1, 2]], 3).choice == [0, 1]``.
    """
    _check_table(losses, costs)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise bad_param("budget", "an int (bytes)", budget, "allocate")
    floor = sum(min(row) for row in costs)
    if floor > budget:
        raise FewbitsValueError(f"allocate: the budget of {budget} bytes is below the {floor} bytes of the cheapest "
                                "options; give a larger budget.")
    spare = int(budget - floor)
    if unit is None:
        unit = max(1, math.ceil(spare / MAX_CELLS))
    elif isinstance(unit, bool) or not isinstance(unit, int) or unit < 1:
        raise bad_param("unit", "a positive int (bytes)", unit, "allocate")
    cells = spare // unit
    best = np.full(cells + 1, np.inf)
    best[0] = 0.0  # best[x]: least loss of the layers so far spending exactly x units above their cheapest
    back = np.zeros((len(costs), cells + 1), np.int8)
    for layer, (row_l, row_c) in enumerate(zip(losses, costs)):
        base = min(row_c)
        new = np.full(cells + 1, np.inf)
        for j, (loss, cost) in enumerate(zip(row_l, row_c)):
            extra = -(-(int(cost) - base) // unit)
            if extra > cells:
                continue
            cand = np.full(cells + 1, np.inf)
            cand[extra:] = best[:cells + 1 - extra] + float(loss)
            better = cand < new
            new[better] = cand[better]
            back[layer, better] = j
        best = new
    end = int(np.argmin(best))
    choice = [0] * len(costs)
    for layer in range(len(costs) - 1, -1, -1):
        j = int(back[layer, end])
        choice[layer] = j
        end -= -(-(int(costs[layer][j]) - min(costs[layer])) // unit)
    return Allocation(choice, float(sum(losses[i][j] for i, j in enumerate(choice))),
                      int(sum(costs[i][j] for i, j in enumerate(choice))), int(budget), unit)
