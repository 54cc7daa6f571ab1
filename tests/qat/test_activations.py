"""Activation fake-quantization: at most 2**A values, straight-through gradient, learned step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsValueError
from fewbits.nn.activations import (ActivationQuantizer, activation_quantizers, add_activation_quantizer,
                                    remove_activation_quantizers)


class _Recorder(nn.Module):
    """Identity that remembers its last input (to see what the layer after the hook receives)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_a_bit_activations_take_at_most_two_to_the_a_values(bits, signed):
    torch.manual_seed(bits)
    layer = _Recorder()
    add_activation_quantizer(layer, bits)
    for _ in range(3):  # first call calibrates, later ones use the learned step
        x = torch.randn(64, 8, 5) * 3
        layer(x if signed else x.relu())
        assert layer.seen.unique().numel() <= 2 ** bits
    assert bool(layer.input_quantizer.signed) is signed
    if not signed:
        assert float(layer.seen.detach().min()) >= 0  # unsigned grid starts at zero


def test_gradient_is_straight_through_inside_the_range_and_zero_outside():
    q = ActivationQuantizer(2)
    q.calibrate(torch.tensor([0.5, 1.0, 1.5]))  # unsigned, step s = 2 * 1.0 / sqrt(3)
    s = float(q.scale.detach())
    x = torch.tensor([0.1, 0.7, 1.9, 3 * s + 1.0], requires_grad=True)
    y = q(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert q.scale.grad is not None and float(q.scale.grad) != 0.0
    assert float(y[-1].detach()) == pytest.approx(3 * s)  # clipped to the top of the grid


def test_step_size_is_a_trainable_model_parameter():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    quantizer = add_activation_quantizer(model[2], 2)
    assert any(p is quantizer.scale for p in model.parameters())
    assert "2.input_quantizer.scale" in model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(16, 4)).pow(2).sum().backward()
    before = float(quantizer.scale.detach())
    opt.step()
    assert float(quantizer.scale.detach()) != before


def test_eval_before_calibration_raises_and_removal_restores_the_layer():
    layer = nn.Linear(3, 3)
    add_activation_quantizer(layer, 2)
    layer.eval()
    with pytest.raises(FewbitsValueError, match="training batch"):
        layer(torch.randn(2, 3))
    model = nn.Sequential(layer)
    assert list(activation_quantizers(model)) == ["0"]
    remove_activation_quantizers(model)
    assert activation_quantizers(model) == {} and not hasattr(layer, "input_quantizer")
    x = torch.randn(2, 3)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)


def test_embedding_and_double_registration_are_refused():
    with pytest.raises(FewbitsValueError, match="Embedding"):
        add_activation_quantizer(nn.Embedding(5, 2), 2)
    layer = nn.Linear(2, 2)
    add_activation_quantizer(layer, 2)
    with pytest.raises(FewbitsValueError, match="already"):
        add_activation_quantizer(layer, 4)
