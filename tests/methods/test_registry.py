"""The registry: one apply entry for every method's config, and a fourth method (tests/methods/sign_method.py,
registered here) that saves and loads through the container without touching fewbits' own files."""

from __future__ import annotations

import json

import pytest
import torch
from sign_method import METHOD, SignConfig, SignScale

import fewbits
from fewbits.errors import ArtifactError, FewbitsTypeError, FewbitsValueError
from fewbits.io import MANIFEST_FILE
from fewbits.loading import load_any
from fewbits.methods import registry
from fewbits.methods.codebook import CodebookConfig, codebook_modules
from fewbits.methods.mask import MaskConfig
from fewbits.methods.qat import QATConfig
from fewbits.models import build_model
from fewbits.nn.mask import mask_modules
from fewbits.nn.ste import ste_modules

X = torch.linspace(-1, 1, 2 * 40).reshape(2, 40)


def _cnn():
    torch.manual_seed(0)
    return build_model("cnn1d", num_classes=3, width=4).eval()


@pytest.fixture
def sign_registered():
    registry.register(METHOD)
    yield METHOD
    registry.unregister("sign")


def test_one_apply_for_every_builtin_config():
    model = _cnn()
    reports = fewbits.apply(model, CodebookConfig(scheme="linear", bits=2, targets=["fc"]))
    assert [r.name for r in reports] == ["fc"] and list(codebook_modules(model)) == ["fc"]
    model = _cnn()
    config = registry.apply(model, QATConfig(wbits=4, abits=4))
    assert config.layers == ["features.1.0", "features.2.0"] and len(list(ste_modules(model))) == 2
    model = _cnn()
    assert registry.apply(model, MaskConfig(targets=["features.1.0"])) == ["features.1.0"]
    assert list(mask_modules(model)) == ["features.1.0"]


def test_configs_validate_and_round_trip_through_json():
    config = CodebookConfig(scheme="optimal", bits=3, groups=4)
    assert CodebookConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["method"] == "codebook" and config.to_dict()["version"] == 1
    with pytest.raises(FewbitsValueError, match="'bits'"):
        CodebookConfig(bits=9)
    with pytest.raises(FewbitsValueError, match="'scheme'"):
        CodebookConfig(scheme="magic")
    with pytest.raises(FewbitsValueError, match="'abits'"):
        QATConfig(wbits=2, abits=0)
    with pytest.raises(FewbitsValueError, match="'margin'"):
        MaskConfig(margin=0)
    with pytest.raises(FewbitsValueError, match="newer"):
        CodebookConfig.from_dict({"version": 2})
    with pytest.raises(FewbitsValueError, match="another method"):
        CodebookConfig.from_dict(MaskConfig().to_dict())


def test_apply_refuses_what_is_not_a_config():
    with pytest.raises(FewbitsTypeError, match="config"):
        registry.apply(_cnn(), {"bits": 2})
    with pytest.raises(FewbitsTypeError, match="model"):
        registry.apply("model", CodebookConfig())


def test_a_fourth_method_saves_and_loads_through_the_container(tmp_path, sign_registered):
    model = _cnn()
    assert registry.apply(model, SignConfig(targets=["features.1.0", "fc"])) == ["features.1.0", "fc"]
    expected = model(X).detach()
    directory = fewbits.save(model, tmp_path / "sign", method="sign")
    assert json.loads((directory / MANIFEST_FILE).read_text())["method"] == "sign"
    loaded = fewbits.load(directory)
    assert isinstance(loaded.fc.parametrizations.weight[0], SignScale)
    assert torch.equal(loaded(X), expected)
    assert torch.equal(load_any(directory, num_labels=3, new_head=False)[0](X), expected)


def test_an_unregistered_method_is_refused_in_one_line(tmp_path, sign_registered):
    model = _cnn()
    registry.apply(model, SignConfig(targets=["fc"]))
    directory = fewbits.save(model, tmp_path / "sign", method="sign")
    registry.unregister("sign")
    with pytest.raises(ArtifactError, match="Unknown compression method 'sign'"):
        fewbits.load(directory)
    registry.register(METHOD)


def test_names_are_unique_and_builtins_stay(sign_registered):
    assert registry.names() == ["codebook", "mask", "qat", "sign"]
    with pytest.raises(FewbitsValueError, match="exists already"):
        registry.register(type(METHOD)("codebook", SignConfig, *[getattr(METHOD, f) for f in
                                                                 ("apply", "write", "check", "read")]))
    with pytest.raises(FewbitsValueError, match="built-in"):
        registry.unregister("qat")
