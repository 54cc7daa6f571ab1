"""Built-in models, tiny Hugging Face models, and the save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fewbits.data.base import Task
from fewbits.errors import FewbitsTypeError, FewbitsValueError
from fewbits.models import (BUILTIN_MODELS, CNN1d, ResNet8, ResNet18, build_model, forward_batch, load_model,
                            logits_of, save_model)


def test_resnet18_has_the_cifar_stem_and_keeps_resolution_until_the_blocks():
    model = ResNet18(num_classes=7, width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    shapes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    model(x)
    assert shapes == {"layer1": (8, 32, 32), "layer2": (16, 16, 16), "layer3": (32, 8, 8), "layer4": (64, 4, 4)}
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8  # [2, 2, 2, 2]


def test_resnet18_full_width_has_the_usual_parameter_count():
    # 11.17M for 10 classes: the CIFAR ResNet-18 (ImageNet's has 11.69M with its 1000-way head and 7x7 stem)
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_173_962


def test_resnet8_is_three_basic_blocks_on_28x28_grey_images():
    model = ResNet8().eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    model(torch.randn(1, 1, 28, 28))
    assert shapes == {"layer1": (16, 28, 28), "layer2": (32, 14, 14), "layer3": (64, 7, 7)}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 8  # 7 3x3 convolutions and the linear head: ResNet-8
    assert sum(p.numel() for p in model.parameters()) == 77_754
    with pytest.raises(FewbitsValueError, match="'width' parameter of ResNet8"):
        ResNet8(width=0)


def test_cnn1d_takes_flat_or_channel_signals():
    model = CNN1d(num_classes=10).eval()
    x = torch.randn(4, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))
    assert model(torch.randn(3, 1, 17)).shape == (3, 10)


def test_build_model_checks_name_and_arguments():
    assert set(BUILTIN_MODELS) == {"resnet18", "resnet8", "cnn1d"}
    with pytest.raises(FewbitsValueError, match="'name' parameter of build_model"):
        build_model("resnet50")
    with pytest.raises(FewbitsValueError, match="depth"):
        build_model("cnn1d", depth=3)
    with pytest.raises(FewbitsValueError, match="'num_classes' parameter of CNN1d"):
        build_model("cnn1d", num_classes=0)


@pytest.mark.parametrize("name,x", [("cnn1d", torch.randn(3, 1, 40)), ("resnet18", torch.randn(2, 3, 32, 32)),
                                    ("resnet8", torch.randn(2, 1, 28, 28))])
def test_builtin_save_load_round_trip_gives_identical_outputs(tmp_path, name, x):
    model, tokenizer = load_model(name, num_labels=5, **({"width": 4} if name.startswith("resnet") else {}))
    assert tokenizer is None
    model.train()
    model(x)  # move the batch-norm running statistics away from their initial values
    model.eval()
    save_model(model, tmp_path)
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["fewbits_model"] == name and spec["args"]["num_classes"] == 5
    loaded, _ = load_model(tmp_path, num_labels=5, new_head=False)
    loaded.eval()
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(FewbitsValueError, match="has 5 classes but the task has 3"):
        load_model(tmp_path, num_labels=3)


def test_tiny_bert_save_load_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-bert", num_labels=3)
    batch = dict(tokenizer(["great film", "awful"], ["yes", "no"], padding=True, return_tensors="pt"))
    model.eval()
    save_model(model, tmp_path, tokenizer)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded, loaded_tokenizer = load_model(tmp_path, num_labels=3, new_head=False)
    loaded.eval()
    assert loaded_tokenizer("great film")["input_ids"] == tokenizer("great film")["input_ids"]
    assert torch.equal(logits_of(forward_batch(model, batch)), logits_of(forward_batch(loaded, batch)))
    assert loaded.config.problem_type == "single_label_classification"


def test_heads_of_another_size_are_refused_for_evaluation_and_replaced_for_fine_tuning(tmp_path):
    model, tokenizer = load_model("tiny-bert", num_labels=3)
    save_model(model, tmp_path, tokenizer)
    with pytest.raises(FewbitsValueError, match="no trained 1-label classification head"):
        load_model(tmp_path, num_labels=1, new_head=False)
    regression, _ = load_model(tmp_path, num_labels=1)
    assert regression.config.problem_type == "regression" and regression.classifier.out_features == 1


def test_logits_of_reads_tensors_and_model_outputs():
    t = torch.ones(2, 3)
    assert logits_of(t) is t
    model, tokenizer = load_model("tiny-bert", num_labels=2)
    outputs = model(**tokenizer(["a"], return_tensors="pt"))
    assert logits_of(outputs) is outputs.logits


def test_unloadable_models_give_one_clear_error(tmp_path):
    with pytest.raises(FewbitsValueError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(FewbitsValueError, match="holds no model"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(FewbitsValueError, match="is a file"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FewbitsValueError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(FewbitsValueError, match="Could not load a sequence-classification model"):
        load_model(tmp_path)


def test_truncated_builtin_weights_are_reported(tmp_path):
    model = build_model("cnn1d")
    save_model(model, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FewbitsValueError, match="Could not read the weights"):
        load_model(tmp_path)


def test_save_model_refuses_unknown_modules(tmp_path):
    with pytest.raises(FewbitsTypeError, match="'model' parameter of save_model"):
        save_model(nn.Linear(2, 2), tmp_path)


def stub_task(kind: str, num_labels: int) -> Task:
    return Task(name=f"stub-{kind}", kind=kind, num_labels=num_labels, splits={}, metric_fn=dict, main_metric="")


def test_models_must_fit_the_task_inputs():
    with pytest.raises(FewbitsValueError, match="whose inputs are texts"):
        load_model("cnn1d", stub_task("text", 2))
    with pytest.raises(FewbitsValueError, match="whose inputs are signals"):
        load_model("tiny-bert", stub_task("signal", 2))
    assert load_model("cnn1d", stub_task("signal", 4))[0].fc.out_features == 4
    assert load_model("tiny-bert", stub_task("text", 1))[0].config.problem_type == "regression"


def test_load_model_rejects_arguments_it_would_ignore():
    with pytest.raises(FewbitsValueError, match="'kw' parameter of load_model"):
        load_model("minilm", hidden_size=8)


@pytest.mark.slow
def test_minilm_loads_offline_with_a_new_head():
    model, tokenizer = load_model("minilm", num_labels=2)
    batch = tokenizer(["good", "bad"], padding=True, return_tensors="pt")
    assert logits_of(model(**batch)).shape == (2, 2)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    with pytest.raises(FewbitsValueError, match="no trained 2-label classification head"):
        load_model("minilm", num_labels=2, new_head=False)


def test_meta_init_skipped_leaves_real_tensors_initialised_and_restores() -> None:
    from transformers import initialization

    from fewbits.models.hf import meta_init_skipped

    before = dict(initialization.TORCH_INIT_FUNCTIONS)
    real, meta = torch.zeros(50), torch.empty(50, device="meta")
    with meta_init_skipped():
        assert initialization.normal_(meta) is meta
        initialization.normal_(real)
    assert real.std() > 0.5  # initialised as before
    assert initialization.TORCH_INIT_FUNCTIONS == before
