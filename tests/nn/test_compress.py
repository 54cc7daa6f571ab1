"""compress / decompress / param_groups on every layer type, tiny BERT and a tiny CNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, FewbitsValueError, TargetsNotFoundError
from fewbits.methods.codebook import codebook_modules, compress, decompress, param_groups
from fewbits.quantize import QuantizedTensor


def _hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D(6, 8)


LAYERS = {  # name -> (factory, input)
    "linear": (lambda: nn.Linear(8, 6), lambda: torch.randn(3, 8)),
    "embedding": (lambda: nn.Embedding(10, 8), lambda: torch.tensor([[1, 4, 4, 9]])),
    "conv1d": (lambda: nn.Conv1d(2, 4, 3), lambda: torch.randn(2, 2, 7)),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3), lambda: torch.randn(2, 2, 5, 5)),
    "hf_conv1d": (_hf_conv1d, lambda: torch.randn(3, 8)),
}


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_layer_type_uses_the_rebuilt_weight_and_trains_only_the_codebook(kind, quantizer):
    torch.manual_seed(0)
    factory, make_input = LAYERS[kind]
    model, x = Holder(factory()), make_input()
    weight = model.layer.weight.detach().clone()
    reference = copy.deepcopy(model)
    expected_qt = quantizer(weight, 2, group_size=weight.numel() // 2)
    with torch.no_grad():
        reference.layer.weight.copy_(expected_qt.dequantize())

    (report,) = compress(model, quantizer, 2, groups=2, targets=["layer"])
    assert torch.equal(model.layer.weight, expected_qt.dequantize())
    assert torch.equal(model(x), reference(x))
    assert (report.name, report.shape, report.bits, report.n_groups) == ("layer", tuple(weight.shape), 2, 2)
    assert report.squared_error == pytest.approx(float((weight - expected_qt.dequantize()).pow(2).sum()), rel=1e-6)
    assert report.relative_error == pytest.approx(report.squared_error / float(weight.pow(2).sum()), rel=1e-6)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "layer.parametrizations.weight.0.codebook" in trainable
    assert not any(n.endswith("original") for n in trainable)
    assert model.layer.parametrizations.weight.original.numel() == 0  # the FP32 copy is freed

    model(x).float().pow(2).sum().backward()
    assert model.layer.parametrizations.weight[0].codebook.grad is not None

    decompress(model)
    assert not parametrize.is_parametrized(model.layer)
    assert isinstance(model.layer.weight, nn.Parameter) and model.layer.weight.shape == weight.shape
    assert torch.equal(model.layer.weight, expected_qt.dequantize())
    assert type(model.layer) is type(factory())


def test_bert_compress_forward_train_and_decompress(bert, quantizer):
    x = torch.randint(0, 96, (2, 7))
    reports = compress(bert, quantizer, 3, groups=4)
    assert len(reports) == 16 and len(codebook_modules(bert)) == 16
    assert not parametrize.is_parametrized(bert.classifier)
    with torch.no_grad():
        out = bert(x).logits
        dequantized = {n: m.weight.clone() for n, (m, _) in codebook_modules(bert).items()}
    codes_before = {n: cb.codes.clone() for n, (_, cb) in codebook_modules(bert).items()}

    bert.train()
    opt = torch.optim.AdamW(param_groups(bert, lr=1e-3))
    for _ in range(2):
        opt.zero_grad()
        bert(x, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
    bert.eval()
    assert all(torch.equal(cb.codes, codes_before[n]) for n, (_, cb) in codebook_modules(bert).items())
    with torch.no_grad():
        trained = bert(x).logits
        assert not torch.equal(trained, out)
        rebuilt = {n: m.weight.clone() for n, (m, _) in codebook_modules(bert).items()}
    assert any(not torch.equal(rebuilt[n], dequantized[n]) for n in rebuilt)

    decompress(bert)
    assert codebook_modules(bert) == {}
    assert all(torch.equal(dict(bert.named_modules())[n].weight, w) for n, w in rebuilt.items())
    with torch.no_grad():
        assert torch.equal(bert(x).logits, trained)


def test_decompressing_a_deep_copy_leaves_the_original_working(bert, quantizer):
    x = torch.randint(0, 96, (2, 7))
    compress(bert, quantizer, 2)
    with torch.no_grad():
        out = bert(x).logits
    twin = decompress(copy.deepcopy(bert))
    assert codebook_modules(twin) == {} and len(codebook_modules(bert)) == 16
    with torch.no_grad():
        assert torch.equal(bert(x).logits, out) and torch.equal(twin(x).logits, out)


def test_cnn_default_compresses_the_hidden_linear_only(cnn, quantizer):
    reports = compress(cnn, quantizer, 2)
    assert [r.name for r in reports] == ["hidden"]
    reports = compress(copy.deepcopy(cnn), quantizer, 2, targets=["conv1d", "conv2d"])
    assert [r.name for r in reports] == ["conv2d", "conv1d"]


def test_scheme_names_use_the_quantizers_with_their_keywords(cnn, monkeypatch):
    import fewbits.quantize as q

    calls = []

    def fake(weight, bits, *, groups=None, group_size=None, sample_weight=None, max_iter=3, seed=0):
        calls.append((bits, group_size, sample_weight, max_iter, seed))
        return QuantizedTensor(torch.zeros(weight.shape, dtype=torch.uint8), torch.zeros(1, 1 << bits), bits, "fake")

    monkeypatch.setitem(q.SCHEMES, "fake", fake)
    sw = torch.rand(16, 64)
    compress(cnn, "fake", 3, sample_weights={"hidden": sw}, seed=7, max_iter=5)
    (bits, group_size, sample_weight, max_iter, seed), = calls
    assert (bits, group_size, max_iter, seed) == (3, 1024, 5, 7)
    assert torch.equal(sample_weight, sw.double())


@pytest.mark.parametrize("scheme", ["linear", "kmeans", "optimal", "uniform"])
def test_every_scheme_compresses_the_tiny_bert(bert, scheme):
    from fewbits.quantize import quantize

    weight = bert.bert.pooler.dense.weight.detach().clone()
    reports = compress(bert, scheme, 2, groups="channel")
    assert len(reports) == 16 and {r.scheme for r in reports} == {scheme}
    expected = quantize(weight, scheme, 2, groups="channel")
    assert torch.equal(bert.bert.pooler.dense.weight, expected.dequantize())
    assert all(r.n_groups == r.shape[0] for r in reports)


def test_scheme_keywords_are_checked_before_anything_changes(bert):
    with pytest.raises(FewbitsValueError, match="max_iter"):
        compress(bert, "linear", 2, max_iter=5)  # a kmeans keyword
    with pytest.raises(FewbitsValueError, match="sample_weights"):
        compress(bert, "linear", 2, sample_weights={"bert.pooler.dense": torch.ones(32, 32)})
    assert codebook_modules(bert) == {}
    compress(bert, "linear", 2, seed=3)  # the seed is simply not given to a scheme without randomness


def test_kmeans_seed_makes_compression_reproducible(cnn):
    twin = copy.deepcopy(cnn)
    a = compress(cnn, "kmeans", 2, seed=1)
    b = compress(twin, "kmeans", 2, seed=1)
    assert a == b and torch.equal(cnn.hidden.weight, twin.hidden.weight)


def test_tied_weights_share_one_codebook_and_are_retied_by_decompress(quantizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    decoder, embedding = model.cls.predictions.decoder, model.bert.embeddings.word_embeddings
    assert decoder.weight is embedding.weight
    reports = compress(model, quantizer, 2)
    word = next(r for r in reports if r.name == "bert.embeddings.word_embeddings")
    assert word.tied == ("cls.predictions.decoder",)
    found = codebook_modules(model)
    assert found["cls.predictions.decoder"][1] is found["bert.embeddings.word_embeddings"][1]
    assert len([g for g in param_groups(model, 1e-3) if g["name"] == "codebooks"][0]["params"]) == len(reports)
    decompress(model)
    assert decoder.weight is embedding.weight and isinstance(decoder.weight, nn.Parameter)


def test_refuses_to_untie_an_explicitly_excluded_partner(quantizer):
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16))
    before = _state(model)
    with pytest.raises(FewbitsValueError, match="tied"):
        compress(model, quantizer, 2, exclude=["decoder"])
    assert codebook_modules(model) == {} and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, error", [
    ({"targets": ["no_such_layer"]}, TargetsNotFoundError),
    ({"groups": 7}, FewbitsValueError),  # 7 divides no weight of the tiny BERT's word embeddings
    ({"bits": 0}, FewbitsValueError),
    ({"groups": 2, "group_size": 4}, FewbitsValueError),
    ({"sample_weights": {"bert.pooler.dense": torch.ones(3)}}, FewbitsValueError),
    ({"sample_weights": {"classifier": torch.ones(2, 32)}}, TargetsNotFoundError),
])
def test_invalid_requests_leave_the_model_untouched(bert, quantizer, kwargs, error):
    before = _state(bert)
    kwargs = {"bits": 2, **kwargs}
    with pytest.raises(error):
        compress(bert, quantizer, **kwargs)
    assert codebook_modules(bert) == {}
    assert all(torch.equal(v, before[k]) for k, v in bert.state_dict().items())


def test_a_failing_quantizer_midway_leaves_the_model_untouched(bert, quantizer):
    calls = []

    def flaky(weight, bits, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise FewbitsValueError("boom")
        return quantizer(weight, bits, **kw)

    with pytest.raises(FewbitsValueError, match="boom"):
        compress(bert, flaky, 2)
    assert codebook_modules(bert) == {}


@pytest.mark.parametrize("bad", [
    lambda w, b, **kw: "not a tensor",
    lambda w, b, **kw: QuantizedTensor(torch.zeros(3, dtype=torch.uint8), torch.zeros(1, 1 << b), b, "x"),
    lambda w, b, **kw: QuantizedTensor(torch.zeros(w.shape, dtype=torch.uint8), torch.full((1, 1 << b), float("nan")), b, "x"),
])
def test_unusable_quantizer_output_is_refused(cnn, bad):
    with pytest.raises((FewbitsValueError, FewbitsTypeError)):
        compress(cnn, bad, 2)
    assert codebook_modules(cnn) == {}


def test_compressing_twice_asks_for_decompress(cnn, quantizer):
    compress(cnn, quantizer, 2)
    with pytest.raises(FewbitsValueError, match="decompress"):
        compress(cnn, quantizer, 2)


def test_unknown_scheme_name(cnn):
    with pytest.raises(FewbitsValueError, match="scheme"):
        compress(cnn, "no-such-scheme", 2)


def test_param_groups_learning_rates_and_decay(bert, quantizer):
    compress(bert, quantizer, 2)
    groups = {g["name"]: g for g in param_groups(bert, lr=5e-5, weight_decay=0.01)}
    assert groups["codebooks"]["lr"] == pytest.approx(5e-4) and groups["codebooks"]["weight_decay"] == 0.0
    assert len(groups["codebooks"]["params"]) == 16
    assert groups["decay"]["lr"] == 5e-5 and groups["decay"]["weight_decay"] == 0.01
    assert [p.shape for p in groups["decay"]["params"]] == [bert.classifier.weight.shape]
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"]) and groups["no_decay"]["weight_decay"] == 0.0
    every = [p for g in groups.values() for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == sum(p.requires_grad for p in bert.parameters())

    for _, cb in codebook_modules(bert).values():
        cb.requires_grad_(False)  # e.g. a mask trained over a frozen quantized base
    assert "codebooks" not in {g["name"] for g in param_groups(bert, lr=1e-3)}


@pytest.mark.parametrize("kwargs", [{"lr": 0}, {"lr": float("nan")}, {"lr": 1e-3, "quantized_lr_scale": -1},
                                    {"lr": 1e-3, "weight_decay": -0.1}])
def test_param_groups_rejects_bad_values(cnn, kwargs):
    with pytest.raises(FewbitsValueError):
        param_groups(cnn, **kwargs)


def test_param_groups_with_nothing_trainable(cnn):
    cnn.requires_grad_(False)
    with pytest.raises(FewbitsValueError, match="no trainable"):
        param_groups(cnn, lr=1e-3)
