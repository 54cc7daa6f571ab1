"""linear, kmeans and optimal: properties, exact optima, hand-worked examples, sample_weight, bad input."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits.errors import FewbitsError
from fewbits.quantize import SCHEMES, histogram_bins, kmeans, linear, optimal, quantize
from fewbits.quantize.cluster import coarse_bins

CLUSTER = [linear, kmeans, optimal]
GROUPINGS = [{}, {"groups": "channel"}, {"groups": 2}, {"group_size": 4}]
values = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=40)


def lookup(qt):
    """The codebook lookup written out: codebook[group of each weight, its code]."""
    codes = qt.codes.reshape(-1).long()
    group = torch.arange(codes.numel()) // qt.group_size
    return qt.codebook[group, codes].reshape(qt.shape)


def brute_force(x, k, w=None):
    """Least weighted squared error over every partition of the sorted values into <= k runs."""
    order = np.argsort(x, kind="stable")
    x = np.asarray(x, np.float64)[order]
    w = np.ones_like(x) if w is None else np.asarray(w, np.float64)[order]
    n, best = len(x), np.inf
    for cuts in itertools.combinations(range(1, n), min(k, n) - 1):
        err = 0.0
        for a, b in zip((0, *cuts), (*cuts, n)):
            ws = w[a:b].sum()
            mean = (w[a:b] * x[a:b]).sum() / ws if ws > 0 else 0.0
            err += (w[a:b] * (x[a:b] - mean) ** 2).sum()
        best = min(best, err)
    return best


@settings(max_examples=40, deadline=None)
@given(data=values, bits=st.integers(1, 8), scheme=st.sampled_from(CLUSTER))
def test_codes_in_range_shape_kept_and_dequantize_is_the_lookup(data, bits, scheme):
    w = torch.tensor(data)
    qt = scheme(w, bits)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == w.shape
    assert qt.codebook.dtype == torch.float32 and qt.codebook.shape == (1, 2**bits)
    assert int(qt.codes.max()) < 2**bits
    assert torch.equal(qt.dequantize(), lookup(qt))
    assert torch.isfinite(qt.codebook).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 4), grouping=st.sampled_from(GROUPINGS))
def test_optimal_never_worse_than_linear_or_kmeans(seed, bits, grouping):
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed)).double() ** 3
    e_opt = optimal(w, bits, **grouping).squared_error(w)
    assert e_opt <= linear(w, bits, **grouping).squared_error(w) * (1 + 1e-9) + 1e-12
    assert e_opt <= kmeans(w, bits, max_iter=None, seed=seed, **grouping).squared_error(w) * (1 + 1e-9) + 1e-12


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=9), bits=st.integers(1, 2),
       weighted=st.booleans(), seed=st.integers(0, 1000))
def test_optimal_equals_brute_force_on_tiny_inputs(data, bits, weighted, seed):
    x = torch.tensor(data, dtype=torch.float64)
    sw = torch.rand(len(data), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    sw = sw if weighted else None
    expected = brute_force(x.numpy(), 2**bits, None if sw is None else sw.numpy())
    for mode in ("exact", "auto"):
        got = optimal(x, bits, sample_weight=sw, mode=mode).squared_error(x, sw)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_optimal_histogram_mode_is_close_to_exact_and_not_worse_than_linear():
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((300, 300))
    w = w + 1e-3 * torch.randn(300, 300, generator=g)
    for bits in (1, 3):
        exact = optimal(w, bits, mode="exact").squared_error(w)
        hist = optimal(w, bits, mode="histogram").squared_error(w)
        assert exact <= hist * (1 + 1e-12)
        assert hist <= exact * (1 + 1e-4)
        assert hist <= linear(w, bits).squared_error(w)
    sw = torch.rand(300, 300, generator=g, dtype=torch.float64) * (torch.rand(300, 300, generator=g) > 0.2)
    for groups in (None, 4):
        exact = optimal(w, 3, groups=groups, sample_weight=sw, mode="exact").squared_error(w, sw)
        hist = optimal(w, 3, groups=groups, sample_weight=sw, mode="histogram").squared_error(w, sw)
        assert exact <= hist * (1 + 1e-12) and hist <= exact * (1 + 1e-4)
    big = torch.randn(20000)  # more values than histogram_bins(2): auto uses the histogram
    assert torch.equal(optimal(big, 2).codebook, optimal(big, 2, mode="histogram").codebook)
    assert torch.equal(optimal(w, 2, groups=100).codebook, optimal(w, 2, groups=100, mode="exact").codebook)


def test_histogram_has_linear_bins_as_coarse_bins_and_at_least_256_bins_per_cluster():
    for bits in range(1, 9):
        assert coarse_bins(bits) % 2**bits == 0
        assert histogram_bins(bits) >= max(256 * 2**bits, 2**14)
        for n_groups in (2, 128, 30522):
            assert 256 * 2**bits <= histogram_bins(bits, n_groups) <= histogram_bins(bits)
    assert histogram_bins(3, 128) < histogram_bins(3, 1)


def test_histogram_mode_resolves_the_bulk_of_a_heavy_tailed_tensor():
    # Student-t (2 degrees of freedom): 100,000 values, a few hundred times the typical one. Equal-width
    # bins over [min, max] left 1.4e-5 above the exact optimum here at 8 bits (1.2e-4 on MiniLM's
    # output.dense); bins placed by the density's cube root leave about 1e-6.
    w = torch.from_numpy(np.random.default_rng(0).standard_t(2.0, size=(400, 250)).astype(np.float32))
    exact = optimal(w, 8, mode="exact").squared_error(w)
    hist = optimal(w, 8, mode="histogram").squared_error(w)
    assert exact <= hist * (1 + 1e-12) and hist <= exact * (1 + 1e-5)
    assert hist <= linear(w, 8).squared_error(w)


def test_linear_matches_hand_computed_example_of_p1_formula():
    # min 0, max 8, 2 bits: width 2; bins [0,2) [2,4) [4,6) [6,8]; 8 clamps to bin 3; bin 2 empty
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.5, 7.0, 8.0])
    qt = linear(w, 2)
    assert qt.codes.tolist() == [0, 0, 1, 1, 1, 3, 3]
    # bin values: means of members (not centres), empty bin -> its centre 5.0
    assert qt.codebook[0].tolist() == pytest.approx([0.5, 17 / 6, 5.0, 7.5])
    assert qt.dequantize().tolist() == pytest.approx([0.5, 0.5, 17 / 6, 17 / 6, 17 / 6, 7.5, 7.5])


def test_linear_groupwise_is_each_group_alone():
    w = torch.randn(8, 12)
    for grouping, chunks in (({"groups": 4}, w.reshape(4, -1)), ({"groups": "channel"}, w),
                             ({"group_size": 6}, w.reshape(16, 6))):
        for scheme in CLUSTER:
            qt = scheme(w, 2, **grouping)
            assert qt.n_groups == chunks.shape[0]
            for g, chunk in enumerate(chunks):
                alone = scheme(chunk, 2)
                assert torch.equal(qt.codebook[g], alone.codebook[0])
                assert torch.equal(qt.codes.reshape(chunks.shape)[g], alone.codes)


def test_kmeans_well_separated_clusters_match_scikit_learn():
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([-5.0, -1.0, 2.0, 9.0])
    w = (centres.repeat_interleave(50) + 0.1 * torch.randn(200, generator=g)).double()
    ours = kmeans(w, 2, max_iter=None).codebook[0].sort().values.numpy()
    theirs = np.sort(KMeans(4, n_init=10, random_state=0).fit(w.numpy()[:, None]).cluster_centers_[:, 0])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(optimal(w, 2).codebook[0].numpy(), theirs, rtol=1e-6)


def test_kmeans_is_deterministic_under_a_seed_and_iterations_help():
    w = torch.distributions.Laplace(0.0, 1.0).sample((5000,))
    a, b = kmeans(w, 3, seed=7), kmeans(w, 3, seed=7)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codebook, b.codebook)
    seeds = {tuple(kmeans(w, 3, seed=s, max_iter=0).codebook[0].tolist()) for s in range(4)}
    assert len(seeds) > 1  # the seed drives k-means++
    errors = [kmeans(w, 3, seed=3, max_iter=it).squared_error(w) for it in (0, 1, 3, None)]
    assert errors == sorted(errors, reverse=True)  # Lloyd never increases the error


def test_kmeans_codes_are_the_nearest_centroid():
    w = torch.randn(3000)
    qt = kmeans(w, 3)
    nearest = (w[:, None] - qt.codebook[0][None, :]).abs().argmin(dim=1)
    assert torch.equal((w - qt.dequantize()).abs(), (w - qt.codebook[0][nearest]).abs())


@pytest.mark.parametrize("scheme", CLUSTER)
def test_constant_and_few_distinct_values_give_zero_error(scheme):
    for w in (torch.full((5, 4), 0.1), torch.zeros(7), torch.tensor([3.0])):
        qt = scheme(w, 3)
        assert qt.squared_error(w) == 0.0 and torch.isfinite(qt.codebook).all()
    if scheme is not linear:  # linear's fixed bins may merge two values
        w = torch.tensor([0.0, 0.1, 0.1, 5.0, -2.5, 0.0])
        assert scheme(w, 2).squared_error(w) == 0.0
        assert scheme(w, 8).squared_error(w) == 0.0


@pytest.mark.parametrize("scheme", [kmeans, optimal])
def test_sample_weight_weights_the_error_and_zero_weight_points_do_not_move_centroids(scheme):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(400, generator=g, dtype=torch.float64)
    sw = torch.rand(400, generator=g, dtype=torch.float64)
    # heavy weights pull a centroid onto their point
    heavy = sw.clone()
    heavy[0] = 1e6
    qt = scheme(w, 2, sample_weight=heavy)
    assert abs(float(qt.dequantize()[0] - w[0])) < 1e-3
    # a far point with zero weight changes nothing for the others
    w2, sw2 = torch.cat([w, torch.tensor([50.0], dtype=torch.float64)]), torch.cat([sw, torch.zeros(1, dtype=torch.float64)])
    kw = {"mode": "exact"} if scheme is optimal else {}
    a = scheme(w, 2, sample_weight=sw, **kw).dequantize()
    b = scheme(w2, 2, sample_weight=sw2, **kw).dequantize()[:400]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_optimal_with_sample_weight_beats_unweighted_on_weighted_error():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2000, generator=g)
    sw = torch.rand(2000, generator=g) ** 4
    weighted = optimal(w, 2, sample_weight=sw).squared_error(w, sw)
    assert weighted <= optimal(w, 2).squared_error(w, sw)
    assert weighted <= kmeans(w, 2, sample_weight=sw, max_iter=None).squared_error(w, sw) * (1 + 1e-12)


@pytest.mark.parametrize("scheme", [kmeans, optimal])
def test_all_zero_sample_weight_warns_and_is_unweighted(scheme):
    w = torch.randn(100)
    with pytest.warns(UserWarning, match="sample_weight"):
        qt = scheme(w, 2, sample_weight=torch.zeros(100))
    assert torch.equal(qt.codebook, scheme(w, 2).codebook)


def test_a_group_with_all_zero_sample_weight_warns_and_uses_uniform_weights():
    w = torch.randn(2, 50)
    sw = torch.rand(2, 50)
    sw[1] = 0.0
    with pytest.warns(UserWarning, match="1 of 2 groups"):
        qt = optimal(w, 2, groups="channel", sample_weight=sw)
    assert torch.equal(qt.codebook[1], optimal(w[1], 2).codebook[0])


def test_exact_mode_refuses_a_table_beyond_memory():
    w = torch.zeros(2**24 + 1)  # 64 MiB of input; its exact table would take 16 GiB
    with pytest.raises(ValueError, match="'mode'.*GiB"):
        optimal(w, 8, mode="exact")


@pytest.mark.parametrize("bad, what", [(float("nan"), "NaN"), (-1.0, "negative"), (float("inf"), "NaN/inf")])
@pytest.mark.parametrize("scheme", [kmeans, optimal])
def test_bad_sample_weight_is_rejected(scheme, bad, what):
    sw = torch.ones(10)
    sw[3] = bad
    with pytest.raises(ValueError, match="'sample_weight'.*" + what.split("/")[0]):
        scheme(torch.randn(10), 2, sample_weight=sw)


@pytest.mark.parametrize("scheme", CLUSTER)
@pytest.mark.parametrize("kwargs, name, value", [
    ({"bits": 0}, "'bits'", "0"),
    ({"bits": 9}, "'bits'", "9"),
    ({"bits": 2.0}, "'bits'", "2.0"),
    ({"weight": torch.arange(6)}, "'weight'", "int64"),
    ({"weight": torch.tensor([1.0, float("nan")])}, "'weight'", "NaN"),
    ({"weight": torch.tensor([1.0, float("inf")])}, "'weight'", "inf"),
    ({"weight": torch.empty(0, 3)}, "'weight'", r"\(0, 3\)"),
    ({"groups": 4}, "'groups'", "4"),
    ({"group_size": 5}, "'group_size'", "5"),
    ({"groups": "rows"}, "'groups'", "rows"),
])
def test_bad_inputs_raise_naming_argument_and_value(scheme, kwargs, name, value):
    args = {"weight": torch.randn(6), "bits": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=f"{name}.*{value}") as info:
        scheme(args.pop("weight"), args.pop("bits"), **args)
    assert isinstance(info.value, FewbitsError)


@pytest.mark.parametrize("kwargs, name", [({"max_iter": -1}, "'max_iter'"), ({"tol": -1.0}, "'tol'"),
                                          ({"seed": -3}, "'seed'"), ({"max_iter": 2.5}, "'max_iter'")])
def test_kmeans_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kmeans(torch.randn(10), 2, **kwargs)


def test_optimal_bad_mode_and_quantize_dispatch():
    with pytest.raises(ValueError, match="'mode'.*'fast'"):
        optimal(torch.randn(10), 2, mode="fast")
    with pytest.raises(ValueError, match="'scheme'.*'median'"):
        quantize(torch.randn(10), "median", 2)
    w = torch.randn(32)
    for name, fn in SCHEMES.items():
        assert torch.equal(quantize(w, name, 3).codebook, fn(w, 3).codebook)
    assert quantize(w, "kmeans", 2, groups=2, seed=1).n_groups == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_work(dtype):
    w = torch.randn(64).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scheme in CLUSTER:
            qt = scheme(w, 2)
            assert qt.codebook.dtype == torch.float32 and qt.squared_error(w.float()) < float((w.float() ** 2).sum())


def test_input_tensor_is_not_modified_and_grad_is_ignored():
    w = torch.randn(5, 5, requires_grad=True)
    before = w.detach().clone()
    for scheme in CLUSTER:
        scheme(w, 2, groups="channel")
    assert torch.equal(w.detach(), before)


def test_kmeanspp_seeding_draws_pairs_with_the_exact_d2_probabilities():
    """Plain k-means++ (one candidate, no Lloyd step) on sorted atoms: the first centre uniform over the weights,
    the second with probability proportional to its squared distance from the first."""
    from fewbits.quantize import _kernels
    from fewbits.quantize import cluster

    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 4.5, 1.0])  # a repeated value counts twice
    data = cluster._prepare(x, 1, None, None, None, "kmeans")
    atoms = cluster._sorted_atoms(data)
    n, drawn = 4000, {}
    for seed in range(n):
        centroids, iters = np.empty((1, 2)), np.zeros(1, np.int64)
        _kernels.kmeans_centroids(*atoms, 2, 1, 1, np.random.default_rng(seed).random((1, 2)), 0, 1e-6,
                                  centroids, iters)
        pair = tuple(np.round(np.sort(centroids[0] + data.center[0]), 6))
        drawn[pair] = drawn.get(pair, 0) + 1
    values = x.double().numpy()
    exact: dict[tuple, float] = {}
    for first in values:
        d2 = (values - first) ** 2
        for second, p in zip(values, d2 / d2.sum()):
            pair = tuple(np.round(np.sort([first, second]), 6))
            exact[pair] = exact.get(pair, 0.0) + p / len(values)
    assert set(drawn) <= {p for p, q in exact.items() if q > 0}
    for pair, p in exact.items():
        assert abs(drawn.get(pair, 0) / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, pair
