"""Dense-and-sparse quantization: which weights are kept, that they are exact, and that they leave the fit."""

from __future__ import annotations

import pytest
import torch

from fewbits.errors import FewbitsValueError
from fewbits.quantize import kmeans, linear, optimal
from fewbits.quantize.outliers import DenseAndSparse, outlier_count, split_outliers


def _heavy(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 50, generator=g)
    w.view(-1)[torch.randperm(w.numel(), generator=g)[:8]] *= 40  # a few huge values
    return w


def test_magnitude_keeps_the_largest_weights_exactly():
    w = _heavy()
    ds = split_outliers(w, optimal, 2, 0.005)
    k = outlier_count(w.numel(), 0.005)
    assert k == 16 and ds.index.numel() == k
    assert torch.equal(ds.index, torch.sort(torch.topk(w.abs().reshape(-1), k).indices).values)
    rebuilt = ds.dequantize()
    assert torch.equal(rebuilt.reshape(-1)[ds.index], w.reshape(-1)[ds.index])
    assert torch.equal(ds.values, w.reshape(-1)[ds.index])


def test_the_codebook_is_fit_to_the_rest_only():
    w = _heavy()
    ds = split_outliers(w, optimal, 2, 0.005, mode="exact")
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[ds.index] = False
    rest = optimal(w.reshape(-1)[keep], 2, mode="exact")
    assert torch.allclose(ds.quantized.codebook, rest.codebook, atol=1e-6)


def test_outliers_lower_the_error_of_a_heavy_tailed_tensor():
    w = _heavy()
    assert split_outliers(w, optimal, 2, 0.005).squared_error(w) < optimal(w, 2).squared_error(w) / 3


def test_error_selection_keeps_the_worst_quantized_weights():
    w = _heavy(1)
    sw = torch.rand(w.shape, generator=torch.Generator().manual_seed(2))
    ds = split_outliers(w, optimal, 2, 0.01, selection="error", sample_weight=sw)
    first = optimal(w, 2, sample_weight=sw)
    err = ((w.double() - first.dequantize(torch.float64)) ** 2 * sw.double()).reshape(-1)
    assert set(ds.index.tolist()) == set(torch.topk(err, ds.index.numel()).indices.tolist())
    assert ds.squared_error(w, sw) <= first.squared_error(w, sw)


def test_ties_break_by_position_and_kmeans_works():
    w = torch.ones(10, 10)
    w.view(-1)[[3, 7, 50]] = 5.0
    ds = split_outliers(w, kmeans, 1, 0.02)  # 2 of the three equal largest: the first two
    assert ds.index.tolist() == [3, 7]
    assert ds.dequantize().reshape(-1)[50] == pytest.approx(1.0) or ds.dequantize().reshape(-1)[50] == 5.0


def test_zero_fraction_is_the_plain_quantizer():
    w = _heavy()
    ds = split_outliers(w, optimal, 3, 0.0001)  # 3200 * 0.0001 < 1: nothing kept
    assert ds.index.numel() == 0 and torch.equal(ds.quantized.codes, optimal(w, 3).codes)
    assert isinstance(DenseAndSparse.plain(optimal(w, 1)), DenseAndSparse)


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7, True, "0.1", float("nan")])
def test_fraction_outside_the_range_fails(fraction):
    with pytest.raises(FewbitsValueError, match=r"The 'outliers' parameter of split_outliers must be a fraction in \[0, 0.5\)"):
        split_outliers(_heavy(), optimal, 2, fraction)


def test_unknown_selection_and_a_scheme_that_cannot_weight_fail():
    with pytest.raises(FewbitsValueError, match="'outlier_selection'"):
        split_outliers(_heavy(), optimal, 2, 0.01, selection="largest")
    with pytest.raises(TypeError):
        split_outliers(_heavy(), linear, 2, 0.01)
