"""STE weight quantization: values on the grid, gradient straight through to the latent weight."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsValueError
from fewbits.nn.ste import STEQuantize, latent_weight, ste_modules
from fewbits.nn.targets import register_weight_parametrization


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("per_channel", [True, False])
def test_ste_gradient_equals_full_precision_gradient_at_the_quantized_point(bits, per_channel):
    torch.manual_seed(bits)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    reference = copy.deepcopy(net)  # plain FP32 copy; its weights will be set to Q(w)
    for layer in (net[0], net[3]):
        register_weight_parametrization(layer, STEQuantize(bits, per_channel=per_channel))
    with torch.no_grad():
        reference[0].weight.copy_(net[0].weight)
        reference[3].weight.copy_(net[3].weight)
    x, y = torch.randn(5, 2, 8), torch.tensor([0, 1, 2, 1, 0])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    for i in (0, 3):
        assert latent_weight(net[i]).grad is not None
        assert torch.equal(latent_weight(net[i]).grad, reference[i].weight.grad)
    assert not torch.equal(latent_weight(net[0]), net[0].weight)  # the forward did quantize


@pytest.mark.parametrize("bits", [2, 3])
def test_forward_takes_at_most_two_to_the_bits_values_per_channel(bits):
    torch.manual_seed(0)
    layer = nn.Linear(64, 5)
    register_weight_parametrization(layer, STEQuantize(bits))
    w = layer.weight.detach()
    for row in w:
        assert row.unique().numel() <= 2 ** bits
    per_tensor = nn.Linear(64, 5)
    register_weight_parametrization(per_tensor, STEQuantize(bits, per_channel=False))
    assert per_tensor.weight.detach().unique().numel() <= 2 ** bits


def test_scale_follows_the_latent_weight():
    layer = nn.Linear(8, 2)
    register_weight_parametrization(layer, STEQuantize(2))
    before = layer.weight.detach().clone()
    with torch.no_grad():
        latent_weight(layer).mul_(3.0)
    torch.testing.assert_close(layer.weight.detach(), 3.0 * before)


def test_one_bit_grid_is_plus_minus_mean_absolute_value():
    layer = nn.Linear(3, 2)
    register_weight_parametrization(layer, STEQuantize(1))
    with torch.no_grad():
        latent_weight(layer).copy_(torch.tensor([[0.5, -1.5, 0.0], [2.0, 2.0, -2.0]]))
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[2 / 3, -2 / 3, 2 / 3], [2.0, 2.0, -2.0]]))
    per_tensor = nn.Linear(3, 2)
    register_weight_parametrization(per_tensor, STEQuantize(1, per_channel=False))
    w = latent_weight(per_tensor).detach()
    torch.testing.assert_close(per_tensor.weight.detach(), torch.where(w >= 0, 1.0, -1.0) * w.abs().mean())


def test_ste_modules_lists_quantized_layers_only():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    register_weight_parametrization(net[1], STEQuantize(2))
    assert [name for name, _, _ in ste_modules(net)] == ["1"]


def test_bad_arguments_raise_named_errors():
    with pytest.raises(FewbitsValueError, match="'bits'"):
        STEQuantize(0)
    with pytest.raises(FewbitsValueError, match="'bits'"):
        STEQuantize(32)
    with pytest.raises(FewbitsValueError, match="module"):
        latent_weight(nn.Linear(2, 2))
