"""Target selection: P1 defaults, heads, PEFT-style patterns, errors that list the names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsTypeError, FewbitsValueError, TargetsNotFoundError
from fewbits.nn import candidate_names, default_targets, head_names, select_targets


def test_bert_defaults_are_embeddings_and_linears_without_the_classifier(bert):
    targets = default_targets(bert)
    assert head_names(bert) == ["classifier"]
    assert "classifier" not in targets
    assert "bert.embeddings.word_embeddings" in targets and "bert.pooler.dense" in targets
    assert len(targets) == 3 + 2 * 6 + 1  # 3 embeddings, 6 Linear per layer, the pooler
    assert not any("LayerNorm" in t for t in targets)
    assert set(candidate_names(bert)) == set(targets) | {"classifier"}


def test_bare_hf_base_model_has_no_head(bert):
    assert head_names(bert.bert) == []
    assert "pooler.dense" in default_targets(bert.bert)


def test_hf_head_outside_base_model_includes_every_head_layer():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40)
    model = RobertaForSequenceClassification(config)
    assert head_names(model) == ["classifier.dense", "classifier.out_proj"]


def test_hf_conv1d_counts_as_fully_connected():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    targets = default_targets(model)
    assert "transformer.h.0.attn.c_attn" in targets and "transformer.h.0.mlp.c_proj" in targets
    assert head_names(model) == ["lm_head"] and "lm_head" not in targets


def test_plain_net_defaults_skip_convs_and_the_last_linear(cnn):
    assert default_targets(cnn) == ["hidden"]
    assert head_names(cnn) == ["fc"]
    assert candidate_names(cnn) == ["conv2d", "conv1d", "hidden", "fc"]


def test_cnns_without_fully_connected_layers_default_to_their_convolutions():
    from fewbits.models import build_model

    model = build_model("cnn1d")
    assert default_targets(model) == [n for n in candidate_names(model) if n != "fc"] and head_names(model) == ["fc"]
    resnet = build_model("resnet18", num_classes=10)
    targets = default_targets(resnet)
    assert "fc" not in targets and len(targets) == 20  # 17 3x3 convolutions (stem included) + 3 shortcut 1x1s
    assert all(isinstance(resnet.get_submodule(n), torch.nn.Conv2d) for n in targets)


def test_regex_is_a_full_match(bert):
    got = select_targets(bert, r".*layer\.1\..*(query|key)")
    assert got == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.key"]
    with pytest.raises(TargetsNotFoundError):
        select_targets(bert, "query")  # a full match, not a search


def test_list_matches_exact_names_and_suffixes(bert):
    got = select_targets(bert, ["query", "classifier", "bert.embeddings.word_embeddings"])
    assert got == ["bert.embeddings.word_embeddings", "bert.encoder.layer.0.attention.self.query",
                   "bert.encoder.layer.1.attention.self.query", "classifier"]
    with pytest.raises(TargetsNotFoundError):
        select_targets(bert, ["ery"])  # a suffix is a whole dotted component


def test_exclude_applies_first_and_explicit_targets_may_take_convs(cnn, bert):
    assert select_targets(cnn, r".*", exclude=["fc"]) == ["conv2d", "conv1d", "hidden"]
    got = select_targets(bert, exclude=r".*embeddings.*|.*pooler.*")
    assert got and all("embeddings" not in n and "pooler" not in n for n in got)


def test_pattern_matching_nothing_lists_the_available_names(bert):
    with pytest.raises(TargetsNotFoundError) as info:
        select_targets(bert, ["querry"])
    assert "'querry'" in str(info.value) and "bert.encoder.layer.0.attention.self.query" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(TargetsNotFoundError, match="exclude"):
        select_targets(bert, exclude=["nothing_like_this"])


def test_selecting_nothing_is_an_error(cnn):
    with pytest.raises(TargetsNotFoundError, match="no layer left"):
        select_targets(cnn, ["hidden"], exclude=["hidden"])


@pytest.mark.parametrize("patterns, error", [
    (5, FewbitsTypeError), ([], FewbitsValueError), (["ok", 3], FewbitsValueError), ("(unclosed", FewbitsValueError),
])
def test_malformed_patterns(cnn, patterns, error):
    with pytest.raises(error):
        select_targets(cnn, patterns)


def test_norm_weights_are_never_candidates():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert candidate_names(model) == ["0", "3"]
    with pytest.raises(TargetsNotFoundError):
        select_targets(model, ["1"])
