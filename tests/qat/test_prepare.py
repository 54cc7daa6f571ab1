"""prepare_qat: target selection, first/last layer rule, bits validation, spec round trip."""

from __future__ import annotations

import pytest
import torch

from fewbits.errors import FewbitsValueError, TargetsNotFoundError
from fewbits.models.cnn1d import CNN1d
from fewbits.models.resnet import ResNet18
from fewbits.nn.activations import activation_quantizers
from fewbits.nn.ste import ste_modules
from fewbits.methods.qat import QATConfig, prepare_qat
from fewbits.methods.qat import apply as apply_spec


def test_default_keeps_first_and_last_layer_full_precision():
    model = CNN1d(width=4)
    spec = prepare_qat(model, wbits=2, abits=2)
    assert spec.layers == ["features.1.0", "features.2.0"]
    assert [n for n, _, _ in ste_modules(model)] == spec.layers
    assert list(activation_quantizers(model)) == spec.layers
    out = model(torch.randn(3, 1, 40))
    assert out.shape == (3, 10)


def test_all_layers_and_full_precision_bits():
    model = ResNet18(width=4)
    spec = prepare_qat(model, wbits=32, abits=4, keep_first_last=False)
    assert spec.layers[0] == "conv1" and spec.layers[-1] == "fc"
    assert not list(ste_modules(model))  # 32-bit weights: no STE
    assert len(activation_quantizers(model)) == len(spec.layers)
    model2 = ResNet18(width=4)
    prepare_qat(model2, wbits=1, abits=32)
    assert "conv1" not in dict((n, m) for n, m, _ in ste_modules(model2)) and not activation_quantizers(model2)


def test_spec_round_trip_rebuilds_the_same_model():
    model = CNN1d(width=4)
    spec = prepare_qat(model, wbits=2, abits=4, exclude=["features.2.0"])
    model(torch.randn(4, 1, 40))  # calibrate the activation quantizers
    fresh = CNN1d(width=4)
    rebuilt = apply_spec(fresh, QATConfig.from_dict(spec.to_dict()))
    assert rebuilt == spec
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    x = torch.randn(2, 1, 40)
    torch.testing.assert_close(fresh(x), model(x))


def test_bad_arguments_raise_before_changing_the_model():
    model = CNN1d(width=4)
    with pytest.raises(FewbitsValueError, match="'wbits'"):
        prepare_qat(model, wbits=16)
    with pytest.raises(FewbitsValueError, match="'abits'"):
        prepare_qat(model, wbits=2, abits=0)
    with pytest.raises(TargetsNotFoundError):
        prepare_qat(model, wbits=2, targets=["nope"])
    with pytest.raises(FewbitsValueError, match="nothing left"):
        prepare_qat(model, wbits=2, targets=["fc"])
    assert not list(ste_modules(model)) and not activation_quantizers(model)
    prepare_qat(model, wbits=2)
    with pytest.raises(FewbitsValueError, match="already prepared"):
        prepare_qat(model, wbits=2)
    with pytest.raises(FewbitsValueError, match="unknown|Unknown"):
        QATConfig.from_dict({"wbits": 2, "colour": 1})
