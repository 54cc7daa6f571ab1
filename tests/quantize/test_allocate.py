"""allocate (multiple-choice knapsack by dynamic programming) against brute force; layer_bytes by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fewbits.errors import FewbitsValueError
from fewbits.quantize.allocate import allocate, layer_bytes


def _brute(losses, costs, budget):
    """Least summed loss over every choice within the budget (None when nothing fits)."""
    best = None
    for choice in itertools.product(*[range(len(row)) for row in costs]):
        if sum(costs[i][j] for i, j in enumerate(choice)) <= budget:
            loss = sum(losses[i][j] for i, j in enumerate(choice))
            best = loss if best is None else min(best, loss)
    return best


def test_hand_checked_case():
    # two layers, 1 or 2 bytes each; budget 3: spend the extra byte where it saves most (layer 1: 9 -> 2)
    result = allocate([[4.0, 1.0], [9.0, 2.0]], [[1, 2], [1, 2]], 3)
    assert result.choice == [0, 1] and result.loss == 6.0 and result.cost == 3 and result.unit == 1


def test_bits_widths_hand_case():
    # three layers of 8 weights at 1/2/3 bits (1/2/3 bytes of codes); an average of 2 bits buys 6 bytes
    losses = [[10.0, 4.0, 1.0], [1.0, 0.5, 0.25], [30.0, 5.0, 0.0]]
    costs = [[1, 2, 3]] * 3
    assert allocate(losses, costs, 6).choice == [1, 0, 2]  # 4 + 1 + 0 = 5 beats 2 bits everywhere (9.5)


@pytest.mark.parametrize("seed", range(40))
def test_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers, options = rng.integers(1, 5), rng.integers(1, 5)
    costs = [sorted(rng.integers(0, 12, options).tolist()) for _ in range(layers)]
    losses = [sorted(rng.random(options).round(3).tolist(), reverse=True) for _ in range(layers)]
    if seed % 3 == 0:  # losses that do not fall with cost
        losses = [rng.random(options).round(3).tolist() for _ in range(layers)]
    budget = int(rng.integers(sum(min(r) for r in costs), sum(max(r) for r in costs) + 2))
    result = allocate(losses, costs, budget, unit=1)
    assert result.cost <= budget
    assert result.loss == pytest.approx(_brute(losses, costs, budget), abs=1e-12)
    assert result.cost == sum(costs[i][j] for i, j in enumerate(result.choice))


def test_coarse_unit_never_exceeds_the_budget():
    rng = np.random.default_rng(1)
    costs = [sorted(rng.integers(1000, 100000, 4).tolist()) for _ in range(5)]
    losses = [sorted(rng.random(4).tolist(), reverse=True) for _ in range(5)]
    for budget in range(sum(min(r) for r in costs), sum(max(r) for r in costs), 37771):
        result = allocate(losses, costs, budget, unit=997)
        assert result.cost <= budget
        assert result.loss >= _brute(losses, costs, budget) - 1e-12


def test_default_unit_bounds_the_table():
    costs = [[0, 10_000_000]] * 2
    result = allocate([[1.0, 0.0]] * 2, costs, 10_000_000)
    assert result.unit == 10 and result.loss == 1.0


def test_budget_below_the_cheapest_options_fails():
    with pytest.raises(FewbitsValueError, match="below the 4 bytes of the cheapest options"):
        allocate([[1.0, 0.0], [1.0, 0.0]], [[2, 3], [2, 3]], 3)


@pytest.mark.parametrize("losses, costs, budget, match", [
    ([[1.0]], [[1], [1]], 5, "'losses'"),
    ([[1.0, 2.0]], [[1]], 5, r"'losses\[0\]'"),
    ([[1.0]], [[-1]], 5, r"'costs\[0\]'"),
    ([[float("nan")]], [[1]], 5, r"'losses\[0\]'"),
    ([[1.0]], [[1]], 2.5, "'budget'"),
    ([], [], 5, "'losses'"),
])
def test_malformed_tables(losses, costs, budget, match):
    with pytest.raises(FewbitsValueError, match=match):
        allocate(losses, costs, budget)


def test_layer_bytes():
    assert layer_bytes(100, 3) == 38 + 8 * 4  # ceil(300 / 8) code bytes + 8 float32 centroids
    assert layer_bytes(100, 2, 4, codebook_bytes=2, outliers=5) == 25 + 4 * 4 * 2 + 5 * (4 + 2)
