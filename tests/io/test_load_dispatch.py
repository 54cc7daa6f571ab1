"""One load for every artifact kind: ``fewbits.load`` and the command-line loader (``fewbits.loading.load_any``,
and ``--model BASE --mask DIR`` for a mask) give outputs bit-identical to the model that was saved, for codebooks
at several bits and groupings, a QAT export with activation bits, a mask over a quantized base and tied weights;
and version 1 artifacts written by fewbits before the one container keep loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _io_helpers import bert_model

import fewbits
from fewbits.errors import ArtifactError, FewbitsValueError
from fewbits.io import MANIFEST_FILE, describe
from fewbits.loading import base_checksum, load_any, load_with_tokenizer
from fewbits.methods.mask import MaskConfig
from fewbits.methods.qat import prepare_qat
from fewbits.models import build_model
from fewbits.protocols.mask import load_base, save_mask
from fewbits.protocols.mask import prepare as prepare_mask

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
X = torch.linspace(-2, 2, 3 * 40).reshape(3, 40)  # the input the v1 fixtures' logits were computed on


def _cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn1d", num_classes=4, width=4).eval()


def _same_everywhere(directory: Path, expected: torch.Tensor) -> None:
    """fewbits.load and the commands' loader both reproduce ``expected`` exactly."""
    assert torch.equal(fewbits.load(directory)(X), expected)
    model, tokenizer = load_any(directory, num_labels=4, new_head=False)
    assert tokenizer is None and torch.equal(model(X), expected)


@pytest.mark.parametrize("scheme, bits, grouping", [
    ("kmeans", 1, {}), ("kmeans", 3, {"groups": "channel"}), ("linear", 4, {"group_size": 4}),
    ("optimal", 2, {"groups": 2}), ("uniform", 8, {}),
])
def test_codebook_artifacts(tmp_path, scheme, bits, grouping):
    model = _cnn()
    fewbits.compress(model, scheme, bits, targets=["features.1.0", "features.2.0", "fc"], **grouping)
    expected = model(X).detach()
    _same_everywhere(fewbits.save(model, tmp_path / "a"), expected)
    # the run folder of `fewbits quantize` (OUT/artifact) loads the same way
    (tmp_path / "run").mkdir()
    shutil.move(tmp_path / "a", tmp_path / "run" / "artifact")
    model, _ = load_any(tmp_path / "run", num_labels=4, new_head=False)
    assert torch.equal(model(X), expected)


def test_qat_export_keeps_the_activation_quantizers(tmp_path):
    model = _cnn(1)
    config = prepare_qat(model, 4, 4, keep_first_last=False)
    model.train()
    model(X)  # sets the activation steps
    model.eval()
    expected = model(X).detach()
    directory = fewbits.save(model, tmp_path / "qat", method="qat", config=config)
    assert json.loads((directory / MANIFEST_FILE).read_text())["method"] == "qat"
    _same_everywhere(directory, expected)
    plain = fewbits.load(directory)
    assert sum(1 for m in plain.modules() if type(m).__name__ == "ActivationQuantizer") == 4  # the three convolutions and fc


def test_mask_over_a_quantized_base(tmp_path):
    model = _cnn(2)
    fewbits.compress(model, "kmeans", 2, targets=["features.1.0", "fc"])
    base_dir = fewbits.save(model, tmp_path / "base")
    base = load_base(base_dir, num_labels=4, seed=0)
    prepare_mask(base.model, MaskConfig(init_sparsity=0.3))
    expected = base.model.eval()(X).detach()
    directory = save_mask(base.model, tmp_path / "mask", base)
    assert torch.equal(fewbits.load(directory, base=base_dir)(X), expected)
    model, tokenizer = load_with_tokenizer(directory, base=base_dir)  # what `fewbits eval --mask` loads
    assert tokenizer is None and torch.equal(model(X), expected)
    with pytest.raises(ArtifactError, match="needs the base"):
        fewbits.load(directory)
    with pytest.raises(FewbitsValueError, match="task mask"):
        load_any(directory)


def test_tied_weights(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    fewbits.compress(model, "kmeans", 3)
    tokens = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    expected = model(input_ids=tokens).logits.detach()
    directory = fewbits.save(model, tmp_path / "mlm")
    assert torch.equal(fewbits.load(directory)(input_ids=tokens).logits, expected)
    loaded, _ = load_any(directory, new_head=False)
    assert torch.equal(loaded(input_ids=tokens).logits, expected)


def test_text_model_with_its_tokenizer_through_the_command_loader(tmp_path):
    from fewbits.models import load_model

    model, tokenizer = load_model("tiny-bert", num_labels=2)
    fewbits.compress(model, "kmeans", 2)
    model.eval()
    batch = tokenizer(["good", "bad movie"], padding=True, return_tensors="pt")
    expected = model(**batch).logits.detach()
    directory = fewbits.save(model, tmp_path / "bert", tokenizer=tokenizer)
    loaded, loaded_tokenizer = load_any(directory, num_labels=2, new_head=False)
    assert torch.equal(loaded(**loaded_tokenizer(["good", "bad movie"], padding=True, return_tensors="pt")).logits,
                       expected)
    assert torch.equal(fewbits.load(directory)(**batch).logits, expected)


def test_bert_classifier_round_trip(tmp_path):
    model = bert_model()
    fewbits.compress(model, "kmeans", 3, groups=4)
    tokens = torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(0))
    directory = fewbits.save(model, tmp_path / "b")
    assert torch.equal(fewbits.load(directory)(input_ids=tokens).logits, model(input_ids=tokens).logits)


# ---------------------------------------------------------------------------------------------- version 1


@pytest.fixture(scope="module")
def v1_logits() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(V1 / "logits.safetensors"))


def test_v1_codebook_artifact_loads(v1_logits):
    _same_everywhere(V1 / "codebook", v1_logits["codebook"])
    assert describe(V1 / "codebook").format_version == 1


def test_v1_qat_export_loads_with_its_activation_quantizers(v1_logits):
    _same_everywhere(V1 / "qat", v1_logits["qat"])


def test_v1_mask_loads_over_its_v1_base(v1_logits, tmp_path):
    assert torch.equal(fewbits.load(V1 / "mask", base=V1 / "codebook")(X), v1_logits["mask"])
    assert describe(V1 / "mask").sparsity > 0
    other = fewbits.save(_cnn(7), tmp_path / "other")
    with pytest.raises(ArtifactError, match="another base"):
        fewbits.load(V1 / "mask", base=other)


def test_v1_and_v2_of_the_same_tensors_share_the_base_checksum(tmp_path):
    """A mask trained over a v1 base still finds that base after it is saved again in format 2."""
    model = fewbits.load(V1 / "codebook")
    resaved = fewbits.save(model, tmp_path / "v2")
    assert base_checksum(resaved) == base_checksum(V1 / "codebook")
    assert torch.equal(fewbits.load(V1 / "mask", base=resaved)(X), fewbits.load(V1 / "mask", base=V1 / "codebook")(X))
