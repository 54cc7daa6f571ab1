"""Uniform grids, the straight-through fake-quantizer and its agreement with ``uniform``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits.quantize import fake_quantize, round_ste, uniform, uniform_scale

GROUPINGS = [{}, {"groups": "channel"}, {"groups": 2}, {"group_size": 3}, {"group_size": 12}]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), symmetric=st.booleans(), grouping=st.sampled_from(GROUPINGS),
       seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_uniform_equals_fake_quantize_and_codes_index_the_grid(bits, symmetric, grouping, seed, scale):
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed)) * scale
    qt = uniform(w, bits, symmetric=symmetric, **grouping)
    s, zp = uniform_scale(w, bits, symmetric=symmetric, **grouping)
    assert torch.equal(qt.dequantize(), fake_quantize(w, bits, s, zp, symmetric=symmetric))
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == w.shape
    assert int(qt.codes.max()) < 2**bits and qt.codebook.shape[1] == 2**bits
    # each group's values are at most 2**bits distinct points of an equally spaced grid
    rows = qt.dequantize().reshape(qt.n_groups, -1)
    for g in range(qt.n_groups):
        assert rows[g].unique().numel() <= 2**bits
        steps = qt.codebook[g].diff()
        torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-5, atol=1e-6 * scale)


def test_symmetric_grids_documented_levels():
    w = torch.tensor([-3.0, -1.0, 0.5, 2.2, 3.0])
    # 1 bit: +-mean|x|; 2 bits: {-1, -1/3, 1/3, 1} * max|x|
    assert uniform(w, 1).codebook[0].tolist() == pytest.approx([-1.94, 1.94])
    assert uniform(w, 2).codebook[0].tolist() == pytest.approx([-3.0, -1.0, 1.0, 3.0])
    assert uniform(w, 2).dequantize().tolist() == pytest.approx([-3.0, -1.0, 1.0, 3.0, 3.0])
    assert uniform(w, 3).codebook[0].tolist() == pytest.approx([(2 * k - 7) * 3 / 7 for k in range(8)])


def test_asymmetric_grid_holds_zero_and_spans_the_range():
    a = torch.tensor([[0.0, 0.2, 0.9, 1.5], [-0.4, 0.0, 0.1, 0.3]])
    qt = uniform(a, 4, symmetric=False, groups="channel")
    for g in range(2):
        assert 0.0 in qt.codebook[g].tolist()
        step = (a[g].max() - a[g].min()) / 15
        assert float((qt.dequantize()[g] - a[g]).abs().max()) <= step / 2 + 1e-6
    assert qt.dequantize()[0, 0] == 0.0 and qt.dequantize()[1, 1] == 0.0  # zeros stay exact


def test_fake_quantize_gradient_is_one_inside_the_clip_range_and_zero_outside():
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    y = fake_quantize(x, 2, scale)  # levels -0.75, -0.25, 0.25, 0.75; clip range [-1, 1]
    assert y.unique().numel() <= 4
    y.sum().backward()
    inside = (x.detach() / 0.5 - 0.5 >= -2) & (x.detach() / 0.5 - 0.5 <= 1)
    assert torch.equal(x.grad, inside.float())
    # LSQ: d y / d scale = q - x / scale inside, the clipped level outside
    q = y.detach() / 0.5
    expected = torch.where(inside, q - x.detach() / 0.5, q).sum()
    torch.testing.assert_close(scale.grad, expected)


def test_fake_quantize_per_channel_broadcast_and_asymmetric_zero_point_gradient():
    x = torch.randn(3, 5, requires_grad=True)
    scale, zp = uniform_scale(x, 3, symmetric=False, groups="channel")
    assert scale.shape == (3, 1) and zp.shape == (3, 1)
    scale.requires_grad_(True)
    y = fake_quantize(x, 3, scale, zp, symmetric=False)
    for c in range(3):
        assert y[c].unique().numel() <= 8
    y.sum().backward()
    assert scale.grad.shape == (3, 1)
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_uniform_scale_shapes_follow_the_groups():
    x = torch.randn(8, 6)
    assert uniform_scale(x, 2)[0].shape == (1, 1)
    assert uniform_scale(x, 2, groups=4)[0].shape == (8, 1)  # a group spans 2 rows: value repeated
    s = uniform_scale(x, 2, groups=4)[0]
    assert torch.equal(s[0::2], s[1::2])
    assert uniform_scale(x, 2, group_size=3)[0].shape == (8, 6)
    assert uniform_scale(torch.randn(4, 3, 2), 2, groups="channel")[0].shape == (4, 1, 1)


def test_round_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([0.4, 1.5, 2.5, -0.6], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -1.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4


def test_constant_and_zero_tensors_give_no_nan():
    for w in (torch.zeros(4, 4), torch.full((4, 4), -0.3)):
        for symmetric in (True, False):
            for bits in (1, 2, 8):
                out = uniform(w, bits, symmetric=symmetric).dequantize()
                assert torch.isfinite(out).all()
                torch.testing.assert_close(out, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, name", [
    (lambda: uniform(torch.randn(4), 0), "'bits'"),
    (lambda: uniform(torch.randn(4), 9), "'bits'"),
    (lambda: uniform(torch.arange(4), 2), "'weight'"),
    (lambda: uniform(torch.tensor([1.0, float("nan")]), 2), "'weight'"),
    (lambda: uniform(torch.randn(6), 2, groups=4), "'groups'"),
    (lambda: fake_quantize(torch.randn(4), 17, torch.tensor(1.0)), "'bits'"),
    (lambda: fake_quantize(torch.randn(4), 2, torch.tensor(1.0), symmetric=False), "'zero_point'"),
    (lambda: fake_quantize(torch.randn(4), 2, torch.tensor(1.0), torch.tensor(0.0)), "'zero_point'"),
    (lambda: uniform_scale(torch.arange(4), 2), "'x'"),
    (lambda: uniform_scale(torch.empty(0), 2), "'x'"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
