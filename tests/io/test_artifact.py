"""save/load round trips: bit-identical outputs, every base-model kind, tied weights, tokenizer, atomicity."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _io_helpers import PlainNet, bert_model, bin_quantizer, nudge_codebooks
from torch import nn
from torch.nn.utils import parametrize

import fewbits
from fewbits.errors import ArtifactError, FewbitsValueError
from fewbits.io import MANIFEST_FILE, TENSORS_FILE
from fewbits.loading import load_tokenizer
from fewbits.methods.codebook import codebook_modules


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_round_trip_is_bit_identical(compressed_bert, artifact, tokens):
    loaded = fewbits.load(artifact, trainable=True)
    assert not loaded.training
    assert torch.equal(_logits(loaded, tokens), _logits(compressed_bert, tokens))
    before, after = codebook_modules(compressed_bert), codebook_modules(loaded)
    assert sorted(before) == sorted(after)
    for name, (_, cb) in before.items():
        twin = after[name][1]
        assert torch.equal(twin.codes, cb.codes) and torch.equal(twin.codebook, cb.codebook)
        assert (twin.bits, twin.scheme, twin.n_groups) == (cb.bits, cb.scheme, cb.n_groups)
        assert twin.codebook.requires_grad  # ready for more centroid fine-tuning
    assert sorted(os.listdir(artifact)) == ["config.json", MANIFEST_FILE, TENSORS_FILE]  # JSON + safetensors only


def test_default_load_holds_the_packed_artifact_bytes(compressed_bert, artifact, tokens):
    """Held tensor bytes = the artifact's tensor data (packed codes, codebooks, other tensors) + the buffers
    the model makes itself (position ids): no unpacked codes, no index, no FP32 copy, after a forward too."""
    from fewbits.io.container import read_artifact
    from fewbits.runtime import PackedLayer, tensor_bytes

    loaded = fewbits.load(artifact)
    assert torch.equal(_logits(loaded, tokens), _logits(compressed_bert, tokens))
    packed = {n for n, m in loaded.named_modules() if isinstance(m, PackedLayer)}
    assert packed == set(codebook_modules(compressed_bert)) and not codebook_modules(loaded)
    stored = read_artifact(artifact)
    data = sum(e.nbytes for e in stored.entries.values())
    made = {k for k, _ in loaded.named_buffers()} - set(loaded.state_dict())
    own = sum(b.nbytes for k, b in loaded.named_buffers() if k in made)
    assert tensor_bytes(loaded) == data + own


def test_global_rng_is_untouched_by_load(artifact):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    fewbits.load(artifact)
    assert torch.equal(torch.rand(3), expected)


def test_float16_codebooks_are_the_rounded_values(compressed_bert, tmp_path, tokens):
    fewbits.save(compressed_bert, tmp_path / "half", codebook_dtype="float16")
    loaded = fewbits.load(tmp_path / "half", trainable=True)
    with torch.no_grad():
        for _, cb in codebook_modules(compressed_bert).values():
            cb.codebook.copy_(cb.codebook.half().float())
    assert torch.equal(_logits(loaded, tokens), _logits(compressed_bert, tokens))
    assert codebook_modules(loaded)["bert.pooler.dense"][1].codebook.dtype == torch.float32


def test_uncompressed_model_round_trips(tmp_path, tokens):
    model = bert_model()
    fewbits.save(model, tmp_path / "plain")
    assert torch.equal(_logits(fewbits.load(tmp_path / "plain"), tokens), _logits(model, tokens))


def test_builtin_model_round_trip(tmp_path):
    from fewbits.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn1d", num_classes=4, width=8).eval()
    fewbits.compress(model, bin_quantizer, 2, targets=r".*")
    fewbits.save(model, tmp_path / "cnn")
    manifest = json.loads((tmp_path / "cnn" / MANIFEST_FILE).read_text())
    assert manifest["base"] == {"kind": "builtin", "name": "cnn1d", "args": {"num_classes": 4, "width": 8}}
    x = torch.randn(5, 40)
    with torch.no_grad():
        assert torch.equal(fewbits.load(tmp_path / "cnn")(x), model(x))


def test_plain_module_needs_a_fresh_instance(tmp_path):
    torch.manual_seed(0)
    model = PlainNet().eval()
    fewbits.compress(model, bin_quantizer, 2, targets=["body", "fc"])
    fewbits.save(model, tmp_path / "plain")
    with pytest.raises(ArtifactError, match="model=PlainNet"):
        fewbits.load(tmp_path / "plain")
    loaded = fewbits.load(tmp_path / "plain", model=PlainNet())
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ArtifactError, match="PlainNet"):
        fewbits.load(tmp_path / "plain", model=nn.Sequential(nn.Linear(8, 16)))
    with pytest.raises(FewbitsValueError):
        fewbits.load(tmp_path / "plain", model=loaded)  # already compressed


def test_tied_weights_stay_tied(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    fewbits.compress(model, bin_quantizer, 2)
    nudge_codebooks(model)
    fewbits.save(model, tmp_path / "mlm")
    manifest = json.loads((tmp_path / "mlm" / MANIFEST_FILE).read_text())
    assert manifest["data"]["layers"]["bert.embeddings.word_embeddings"]["tied"] == ["cls.predictions.decoder"]
    loaded = fewbits.load(tmp_path / "mlm", trainable=True)
    found = codebook_modules(loaded)
    assert found["cls.predictions.decoder"][1] is found["bert.embeddings.word_embeddings"][1]
    tokens = torch.randint(0, 64, (2, 5))
    assert torch.equal(_logits(loaded, tokens), _logits(model, tokens))


def test_shared_uncompressed_tensors_are_stored_once(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    fewbits.compress(model, bin_quantizer, 2, exclude=r".*word_embeddings|.*decoder")
    fewbits.save(model, tmp_path / "mlm")
    manifest = json.loads((tmp_path / "mlm" / MANIFEST_FILE).read_text())
    assert manifest["data"]["aliases"] == {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                                   "cls.predictions.decoder.bias": "cls.predictions.bias"}
    loaded = fewbits.load(tmp_path / "mlm")
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    tokens = torch.randint(0, 64, (2, 5))
    assert torch.equal(_logits(loaded, tokens), _logits(model, tokens))


def test_tokenizer_round_trip(tmp_path, compressed_bert):
    from fewbits.models.hf import tiny_bert

    _, tokenizer = tiny_bert()
    fewbits.save(compressed_bert, tmp_path / "tok", tokenizer=tokenizer)
    manifest = json.loads((tmp_path / "tok" / MANIFEST_FILE).read_text())
    assert manifest["tokenizer_files"] and "config.json" not in manifest["tokenizer_files"]
    again = load_tokenizer(tmp_path / "tok")
    assert again("good movie")["input_ids"] == tokenizer("good movie")["input_ids"]
    os.remove(tmp_path / "tok" / manifest["tokenizer_files"][0])
    with pytest.raises(ArtifactError, match=manifest["tokenizer_files"][0]):
        load_tokenizer(tmp_path / "tok")


def test_load_tokenizer_without_one(artifact):
    with pytest.raises(ArtifactError, match="without a tokenizer"):
        load_tokenizer(artifact)


def test_overwrites_an_artifact_but_not_a_foreign_directory(tmp_path, compressed_bert, artifact):
    fewbits.save(bert_model(seed=5), artifact)  # replaces the artifact
    assert json.loads((artifact / MANIFEST_FILE).read_text())["data"]["layers"] == {}
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FewbitsValueError, match="not a fewbits artifact"):
        fewbits.save(compressed_bert, foreign)
    assert os.listdir(foreign) == ["keep.txt"]


def test_a_failed_save_leaves_the_old_artifact_and_no_temporary_files(tmp_path, compressed_bert, artifact, tokens):
    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    before = (artifact / TENSORS_FILE).read_bytes()
    with pytest.raises(OSError, match="disk full"):
        fewbits.save(bert_model(seed=9), artifact, tokenizer=BrokenTokenizer())
    assert (artifact / TENSORS_FILE).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["artifact"]
    assert torch.equal(_logits(fewbits.load(artifact), tokens), _logits(compressed_bert, tokens))


def test_refuses_parametrizations_it_cannot_store(tmp_path):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    model = bert_model()
    fewbits.compress(model, bin_quantizer, 2)
    parametrize.register_parametrization(model.bert.pooler.dense, "weight", Double())
    with pytest.raises(FewbitsValueError, match="Double"):
        fewbits.save(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("dtype", ["float64", "int8"])
def test_bad_codebook_dtype(tmp_path, compressed_bert, dtype):
    with pytest.raises(FewbitsValueError, match="codebook_dtype"):
        fewbits.save(compressed_bert, tmp_path / "x", codebook_dtype=dtype)
