"""optimal against an exact dynamic program in rational arithmetic, on outliers and heavy tails.

The reference below is Wang & Song's O(k n**2) program over ``fractions.Fraction``: no rounding
anywhere, so its least squared error is the true optimum of the values as given. Our partition is
read from the codes and its error recomputed in rationals too, so exact mode must match it to the
last bit; histogram mode is held to the benchmark's gap (relative excess <= 1e-4).
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits.quantize import histogram_bins, optimal
from fewbits.quantize.cluster import _histogram_atoms, _prepare


def rational_optimum(x, k, w=None):
    """Least weighted squared error of ``x`` in at most ``k`` clusters, exactly (Fractions)."""
    pairs: dict[Fraction, Fraction] = {}
    for i, v in enumerate(x):
        key = Fraction(float(v))
        pairs[key] = pairs.get(key, Fraction(0)) + (Fraction(1) if w is None else Fraction(float(w[i])))
    vals = sorted(pairs)
    n = len(vals)
    pc, ps, pq = [Fraction(0)], [Fraction(0)], [Fraction(0)]
    for v in vals:
        c = pairs[v]
        pc.append(pc[-1] + c)
        ps.append(ps[-1] + c * v)
        pq.append(pq[-1] + c * v * v)

    def cost(m, i):
        c = pc[i] - pc[m]
        s = ps[i] - ps[m]
        return (pq[i] - pq[m]) - (s * s / c if c else 0)

    best = [cost(0, i) for i in range(n + 1)]
    for _ in range(1, min(k, n)):
        best = [min([best[i]] + [best[m] + cost(m, i) for m in range(1, i)]) for i in range(n + 1)]
    return best[n]


def partition_error(x, codes, w=None):
    """Weighted squared error of the partition given by ``codes``, each cluster at its exact mean."""
    total = Fraction(0)
    codes = np.asarray(codes).ravel()
    for code in np.unique(codes):
        idx = np.flatnonzero(codes == code)
        vs = [Fraction(float(x[i])) for i in idx]
        ws = [Fraction(1) if w is None else Fraction(float(w[i])) for i in idx]
        c = sum(ws)
        if c == 0:
            continue
        mean = sum(a * b for a, b in zip(ws, vs)) / c
        total += sum(b * (a - mean) ** 2 for a, b in zip(vs, ws))
    return total


bulk = st.floats(-10, 10, allow_nan=False, width=32)
far = st.floats(1e3, 1e12)


@st.composite
def outlier_arrays(draw):
    """A bulk of small values plus outliers on one or both sides, some in clusters of near-equal values."""
    xs = draw(st.lists(bulk, min_size=1, max_size=16))
    for _ in range(draw(st.integers(1, 4))):
        centre = draw(far) * draw(st.sampled_from([-1.0, 1.0]))
        spread = draw(st.sampled_from([0.0, 1e-6, 1e-3, 1.0]))
        for _ in range(draw(st.integers(1, 3))):
            xs.append(float(np.float32(centre * (1 + spread * draw(st.integers(-3, 3))))))
    return draw(st.permutations(xs))


@settings(max_examples=150, deadline=None)
@given(data=outlier_arrays(), bits=st.integers(1, 3), weighted=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_exact_mode_equals_the_rational_program_with_outliers(data, bits, weighted, seed):
    x = np.asarray(data, np.float32)
    w = np.random.default_rng(seed).choice([0.0, 0.5, 1.0, 3.0, 1e3], size=x.size) if weighted else None
    if w is not None and w.sum() == 0:
        w[0] = 1.0
    qt = optimal(torch.from_numpy(x), bits, mode="exact",
                 sample_weight=None if w is None else torch.from_numpy(w.astype(np.float32)))
    assert partition_error(x, qt.codes, w) == rational_optimum(x, 2**bits, w)


@settings(max_examples=100, deadline=None)
@given(data=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=24),
       bits=st.integers(1, 3))
def test_exact_mode_equals_the_rational_program_on_wide_float64_values(data, bits):
    x = np.asarray(data, np.float64) ** 3  # heavy tails, up to 1e18
    qt = optimal(torch.from_numpy(x), bits, mode="exact")
    assert partition_error(x, qt.codes) == rational_optimum(x, 2**bits)


def test_the_issue_example_one_value_at_1e12():
    x = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1e12], dtype=torch.float64)
    qt = optimal(x, 2, mode="exact")
    assert qt.codes.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert partition_error(x.numpy(), qt.codes) == 12


def float_error(x, codes):
    """Squared error of the partition given by ``codes`` (each cluster at its mean), in float64
    with each cluster centred on its mean first, so outliers cost no precision."""
    x = np.asarray(x, np.float64).ravel()
    codes = np.asarray(codes).ravel().astype(np.int64)
    total = 0.0
    for code in np.unique(codes):
        part = x[codes == code]
        total += float(((part - part.mean()) ** 2).sum())
    return total


def outlier_tensor(kind):
    """The benchmark's outlier and heavy-tailed kinds, at 100,000 values."""
    rng = np.random.default_rng(7)
    if kind == "one at 1e6":
        return np.concatenate([rng.standard_normal(100_000), [1e6]])
    if kind == "one at 1e12, both sides":
        return np.concatenate([rng.standard_normal(100_000), [1e12, -3e11]])
    if kind == "t1":
        return rng.standard_t(1, 100_000)
    if kind == "t2":
        return rng.standard_t(2, 100_000)
    x = rng.standard_normal(100_000)
    x[rng.choice(x.size, 100, replace=False)] *= 100  # 0.1% at 100x
    return x


KINDS = ["one at 1e6", "one at 1e12, both sides", "t1", "t2", "0.1% at 100x"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", [2, 4])
def test_exact_mode_on_large_outlier_tensors_is_a_fixed_point_with_a_float32_bulk_error(kind, bits):
    """At 1e5 values no rational program runs; the exact result must at least be a fixed point
    (codes = nearest centroid of its own means) and no worse than histogram mode."""
    x = outlier_tensor(kind)
    exact = optimal(torch.from_numpy(x), bits, mode="exact")
    hist = optimal(torch.from_numpy(x), bits, mode="histogram")
    e_exact, e_hist = float_error(x, exact.codes), float_error(x, hist.codes)
    assert e_exact <= e_hist * (1 + 1e-12)
    assert e_hist <= e_exact * (1 + 1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", [3, 8])
def test_histogram_mode_is_within_1e_4_of_exact_on_outlier_tensors(kind, bits):
    x = outlier_tensor(kind).astype(np.float32)
    t = torch.from_numpy(x)
    e_exact = float_error(x, optimal(t, bits, mode="exact").codes)
    e_hist = float_error(x, optimal(t, bits, mode="histogram").codes)
    assert e_exact <= e_hist * (1 + 1e-12)
    assert e_hist <= e_exact * (1 + 1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_exact_mode_equals_the_rational_program_where_most_layers_use_knuths_bounds(seed):
    """60 values at 4 bits: layer 1 runs by divide and conquer, layers 2-14 by Knuth's bounds, and
    the outliers on both sides send rows of both kinds to double-double (they resume after it)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.integers(-20, 20, 50).astype(np.float64) / 7,
                        [1e12, 1e12 + 2**16, -3e11, -3e11 - 2**15, 5e6, 5e6 + 1, 1e9, -1e9, 2e3, -7e4]])
    rng.shuffle(x)
    w = rng.choice([0.5, 1.0, 4.0], size=x.size) if seed % 2 else None
    qt = optimal(torch.from_numpy(x), 4, mode="exact", sample_weight=None if w is None else torch.from_numpy(w))
    assert partition_error(x, qt.codes, w) == rational_optimum(x, 16, w)


def test_more_values_beyond_the_bulk_than_tail_atoms_bin_the_group_over_its_full_range():
    """A bulk with more values far out than exact tail atoms may hold (``n_bins // 16`` per side),
    all missed by the sample that finds the bulk: the group is binned over its full range (the
    atoms stay sorted, every value kept); a group without values far out takes the pass without
    the tail tests."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 200_000))  # the bulk is found on every 7th value
    x[0, 1:10500:7] = 1e6 + rng.standard_normal(1500)  # 1500 values far above, none of them sampled
    x[0, 2:10500:7] = -1e5 - rng.standard_normal(1500)
    data = _prepare(torch.from_numpy(x), 2, 2, None, None, "optimal")
    assert histogram_bins(2, 2) // 16 < 1500
    ptr, v, c, s, _ = _histogram_atoms(data, 2, histogram_bins(2, 2))
    for g in range(2):
        part = slice(ptr[g], ptr[g + 1])
        assert c[part].sum() == 200_000
        assert np.isclose(s[part].sum(), (x[g] - data.center[g]).sum(), rtol=1e-9, atol=1e-6)
        assert np.all(np.diff(v[part]) > 0)
        assert data.center[g] == (x[g].min() + x[g].max()) / 2  # the full range


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_histogram_mode_finds_an_outlier_column(bits):
    """An outlier dimension: one column of a 2048x384 matrix far out. A sample taking every 12th
    value (a factor of the row length) never saw it, and its 2048 values overflowed the tail atoms
    into an edge bin: 65% above the optimum at 3 bits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 384)).astype(np.float32)
    x[:, 5] = 50 + rng.standard_normal(2048)
    t = torch.from_numpy(x)
    e_exact = float_error(x, optimal(t, bits, mode="exact").codes)
    e_hist = float_error(x, optimal(t, bits).codes)
    assert e_exact <= e_hist * (1 + 1e-12)
    assert e_hist <= e_exact * (1 + 1e-4)
