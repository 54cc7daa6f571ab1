"""The two-phase protocol on a small MNIST-1D subset, the artifact round trip, KD with a compressed student and
with a Hugging Face model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

import fewbits
from fewbits.data import load_task, make_collate
from fewbits.models import build_model, forward_batch, load_model
from fewbits.nn.activations import activation_quantizers
from fewbits.methods.codebook import codebook_modules
from fewbits.loading import load as load_qat
from fewbits.protocols.qat import (FISHER_FILE, export_qat, load_ste_checkpoint, read_run_manifest, run_second_phase,
                                   run_ste_phase)
from fewbits.methods.qat import RegularizerConfig, prepare_qat
from fewbits.quantize.uniform import uniform
from fewbits.runtime import PackedLayer
from fewbits.train import TrainConfig, evaluate, latest_checkpoint, load_trainer_state, train
from fewbits.methods.qat.training import Distillation


def _config(out, epochs=1, **kw):
    return TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, weight_decay=0.0, warmup_ratio=0.0, out_dir=out,
                       progress=False, **kw)


@pytest.fixture(scope="module")
def ste_run(small_mnist1d, tmp_path_factory):
    """A trained FP32 teacher and a finished W2/A2 STE phase."""
    torch.manual_seed(0)
    teacher = build_model("cnn1d", width=8)
    train(teacher, small_mnist1d, _config(None))
    student = copy.deepcopy(teacher)
    spec = prepare_qat(student, wbits=2, abits=2)
    out = tmp_path_factory.mktemp("ste")
    result = run_ste_phase(student, small_mnist1d, _config(out), spec)
    return teacher, spec, out, result, student


def test_ste_phase_writes_spec_and_the_adam_fisher(ste_run):
    teacher, spec, out, result, student = ste_run
    assert read_run_manifest(out)["spec"] == spec.to_dict()
    fisher = load_file(str(out / FISHER_FILE))
    assert sorted(fisher) == sorted(spec.layers)
    # equal to Adam's bias-corrected second moment in the last checkpoint
    state = load_trainer_state(latest_checkpoint(out))["optimizer"]
    steps = result.step
    v = [s["exp_avg_sq"] for s in state["state"].values() if s["exp_avg_sq"].shape == fisher[spec.layers[0]].shape]
    assert any(torch.allclose(fisher[spec.layers[0]], x / (1 - 0.999 ** steps)) for x in v)


@pytest.mark.parametrize("method", ["ste", "msqe", "fisher", "kd"])
def test_every_method_starts_from_the_same_checkpoint(ste_run, small_mnist1d, tmp_path, method):
    teacher, _, out, _, trained = ste_run
    model = build_model("cnn1d", width=8)
    spec, fisher = load_ste_checkpoint(model, out)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in trained.state_dict().items():
        assert torch.equal(start[key], value), key
    phase = RegularizerConfig(method=method, lam=0.5, temperature=2.0)
    result = run_second_phase(model, small_mnist1d, _config(tmp_path, max_steps=3), spec, phase, fisher=fisher,
                              teacher=copy.deepcopy(teacher))
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert read_run_manifest(tmp_path)["second_phase"]["method"] == method
    moved = [k for k in start if k.endswith("original") and not torch.equal(start[k], model.state_dict()[k])]
    assert moved  # the latent weights trained


def test_true_fisher_option_and_missing_inputs(ste_run, small_mnist1d, tmp_path):
    _, _, out, _, _ = ste_run
    model = build_model("cnn1d", width=8)
    spec, _ = load_ste_checkpoint(model, out)
    phase = RegularizerConfig(method="fisher", fisher="true", true_fisher_examples=16, lam=1.0, fisher_normalize=True)
    result = run_second_phase(model, small_mnist1d, _config(tmp_path, max_steps=1), spec, phase)
    assert result.step == 1
    with pytest.raises(fewbits.FewbitsError, match="fisher"):
        run_second_phase(model, small_mnist1d, _config(tmp_path), spec, RegularizerConfig(method="fisher"))
    with pytest.raises(fewbits.FewbitsError, match="teacher"):
        run_second_phase(model, small_mnist1d, _config(tmp_path), spec, RegularizerConfig(method="kd"))
    with pytest.raises(fewbits.FewbitsError, match="method"):
        RegularizerConfig(method="dropout")


def test_artifact_round_trip_gives_the_same_outputs(ste_run, small_mnist1d, tmp_path):
    _, spec, _, _, student = ste_run
    student.eval()
    artifact = export_qat(student, tmp_path / "model", spec)
    loaded = load_qat(artifact)
    x = torch.randn(16, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x), rtol=0, atol=1e-6)
    assert list(activation_quantizers(loaded)) == spec.layers
    assert sorted(n for n, m in loaded.named_modules() if isinstance(m, PackedLayer)) == spec.layers
    for layer in fewbits.io.describe(artifact).layers:
        assert layer.bits == 2
    assert evaluate(loaded, small_mnist1d) == evaluate(student, small_mnist1d)


def test_kd_trains_a_compressed_student_from_its_own_teacher(ste_run, small_mnist1d):
    """P1's centroid fine-tuning with P2's distillation: only codebooks (and plain parameters) train."""
    teacher = ste_run[0]
    student = copy.deepcopy(teacher)
    fewbits.compress(student, uniform, bits=2, groups="channel", targets=["features.1.0", "features.2.0"], seed=None)
    before = {n: cb.codebook.detach().clone() for n, (_, cb) in codebook_modules(student).items()}
    term = Distillation(copy.deepcopy(teacher), forward_batch, lam=1.0, temperature=4.0)
    train(student, small_mnist1d, _config(None, max_steps=2), loss_terms=[term])
    after = {n: cb.codebook.detach() for n, (_, cb) in codebook_modules(student).items()}
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("regression", [False, True])
def test_qat_and_kd_on_a_hugging_face_model(tmp_path, regression):
    """A tiny BERT: STE weights (embeddings included), A4 inputs, KD from its FP32 copy; artifact round trip."""
    full = load_task("vader-regression" if regression else "vader")
    task = dataclasses.replace(full, splits={"train": full.splits["train"][:64], "dev": full.splits["dev"][:32]})
    torch.manual_seed(0)
    teacher, tokenizer = load_model("tiny-bert", task)
    student = copy.deepcopy(teacher)
    spec = prepare_qat(student, wbits=2, abits=4)
    assert "bert.embeddings.position_embeddings" in spec.layers and "classifier" not in spec.layers
    assert "bert.embeddings.position_embeddings" not in activation_quantizers(student)
    phase = RegularizerConfig(method="kd", lam=1.0, temperature=2.0)
    result = run_second_phase(student, task, _config(tmp_path, max_steps=2), spec, phase, teacher=teacher,
                              tokenizer=tokenizer)
    assert result.step == 2 and task.main_metric in result.metrics
    loaded = load_qat(export_qat(student, tmp_path / "model", spec, tokenizer=tokenizer))
    batch = make_collate(task, tokenizer)(list(task.splits["dev"][:4]))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward_batch(loaded, batch).logits, forward_batch(student, batch).logits,
                                   rtol=0, atol=1e-5)
