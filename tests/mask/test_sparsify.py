"""The protocol base -> mask per task: training keeps the base frozen, the task artifact round-trips bit for bit,
a mask for another base is refused, and `fewbits mask` runs end to end (tiny BERT, a few steps)."""

import argparse
import dataclasses

import pytest
import torch

import fewbits
from fewbits.commands import mask as mask_command
from fewbits.data import load_task, make_collate
from fewbits.errors import ArtifactError, FewbitsValueError
from fewbits.commands.info import format_mask_summary
from fewbits.io import TENSORS_FILE as MASK_TENSORS_FILE
from fewbits.io import describe as describe_mask
from fewbits.io import read_artifact
from fewbits.methods.mask.serialize import decode_all
from fewbits.models import load_model, save_model
from fewbits.methods.codebook import codebook_modules
from fewbits.protocols.mask import MaskConfig, load_base, load_mask, save_mask, train_mask
from fewbits.train import TrainConfig

def read_mask_artifact(directory):
    """The artifact's manifest section, decoded masks and head (what the old read_mask_artifact returned)."""
    artifact = read_artifact(directory)
    masks, _, head = decode_all(artifact.stored())
    return dataclasses.make_dataclass("Read", ["masks", "head", "manifest"])(masks, head, artifact.data)


STEPS = TrainConfig(epochs=1, max_steps=6, batch_size=16, lr=1e-2, max_length=8, progress=False)


@pytest.fixture(scope="module")
def task():
    """vader cut to 200 training and 100 dev words, so that evaluation stays fast."""
    full = load_task("vader")
    return dataclasses.replace(full, splits={"train": list(full.splits["train"])[:200],
                                             "dev": list(full.splits["dev"])[:100]})


def _base_dir(tmp_path_factory, task, quantizer, seed: int, quantized: bool):
    torch.manual_seed(seed)
    model, tokenizer = load_model("tiny-bert", task)
    directory = tmp_path_factory.mktemp(f"base{seed}")
    if quantized:
        fewbits.compress(model, quantizer, bits=2)
        fewbits.save(model, directory / "base", tokenizer=tokenizer)
    else:
        save_model(model, directory / "base", tokenizer)
    return directory / "base"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, task, quantizer):
    """One mask trained on a quantized (fewbits.save) base and saved: base dir, base, artifact, result, codebooks."""
    base_dir = _base_dir(tmp_path_factory, task, quantizer, seed=0, quantized=True)
    base = load_base(base_dir, task, seed=1)
    codebooks = {n: cb.codebook.detach().clone() for n, (_, cb) in codebook_modules(base.model).items()}
    result = train_mask(base.model, task, MaskConfig(score_lr=0.3, margin=0.1), STEPS, tokenizer=base.tokenizer)
    out = save_mask(base.model, tmp_path_factory.mktemp("mask") / "vader", base, task=task)
    return base_dir, base, out, result, codebooks


def _logits(model, tokenizer, task):
    batch = make_collate(task, tokenizer, max_length=8)(list(task.splits["dev"])[:64])
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_training_changes_only_scores_and_head(trained):
    _, base, _, result, codebooks = trained
    assert result.kept[0] == 1.0 and len(result.kept) == 2 and result.kept[-1] < 1.0
    for name, (_, cb) in codebook_modules(base.model).items():
        assert torch.equal(cb.codebook, codebooks[name]) and not cb.codebook.requires_grad
    trainable = {n for n, p in base.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".scores") or n.startswith("classifier.") for n in trainable)


def test_load_mask_is_bit_identical_and_stores_only_mask_and_head(trained, task):
    base_dir, base, out, result, _ = trained
    model, tokenizer = load_mask(base_dir, out)
    assert torch.equal(_logits(model, tokenizer, task), _logits(base.model, base.tokenizer, task))
    artifact = read_mask_artifact(out)
    assert sorted(artifact.head) == ["classifier.bias", "classifier.weight"]
    assert artifact.manifest["info"]["task"] == {"name": "vader", "num_labels": 2, "label_names": task.label_names}
    summary = describe_mask(out)
    assert summary.weights == sum(m.numel() for m in artifact.masks.values())
    assert summary.sparsity == pytest.approx(1 - result.kept[-1])
    assert summary.mask_bits_per_weight == pytest.approx(8 * summary.mask_bytes / summary.weights)
    assert summary.mask_bytes <= sum(-(-m.numel() // 8) for m in artifact.masks.values())  # never above a bitmask
    assert "bits per weight" in format_mask_summary(summary)


def test_mask_for_another_base_is_refused(trained, task, tmp_path_factory, quantizer):
    _, _, out, _, _ = trained
    other = _base_dir(tmp_path_factory, task, quantizer, seed=5, quantized=True)
    with pytest.raises(ArtifactError, match="another base"):
        load_mask(other, out)


def test_altered_artifact_is_refused(trained, tmp_path):
    base_dir, _, out, _, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = bytearray((broken / MASK_TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (broken / MASK_TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_mask(base_dir, broken)
    with pytest.raises(ArtifactError, match="not a task mask"):
        load_mask(base_dir, base_dir)


def test_target_sparsity_on_a_plain_model_directory(task, tmp_path_factory):
    base_dir = _base_dir(tmp_path_factory, task, None, seed=2, quantized=False)
    base = load_base(base_dir, task, seed=0)
    train_mask(base.model, task, MaskConfig(sparsity=0.25, score_lr=0.05, margin=0.1), STEPS, tokenizer=base.tokenizer)
    out = save_mask(base.model, tmp_path_factory.mktemp("sparse") / "vader", base, task=task)
    for layer in describe_mask(out).layers:
        assert layer.kept == layer.numel - round(0.25 * layer.numel)
    model, tokenizer = load_mask(base_dir, out)
    assert torch.equal(_logits(model, tokenizer, task), _logits(base.model, base.tokenizer, task))


def _command(argv):
    parser = argparse.ArgumentParser()
    mask_command.add_arguments(parser)
    return mask_command.run(parser.parse_args(argv))


def test_command_trains_saves_and_reports(trained, tmp_path, capsys):
    base_dir = trained[0]
    out = tmp_path / "cmd"
    argv = ["--base", str(base_dir), "--task", "vader", "--out", str(out), "--max-steps", "3", "--batch-size", "16",
            "--max-length", "8", "--score-lr", "0.05", "--margin", "0.1"]
    assert _command(argv) == 0
    captured = capsys.readouterr()
    assert "kept fraction" in captured.out + captured.err and "bits per weight" in captured.out
    info = read_mask_artifact(out).manifest["info"]
    assert info["mask"]["score_lr"] == 0.05 and info["train"]["max_steps"] == 3 and len(info["kept"]) == 2
    with pytest.raises(FewbitsValueError, match="'sparsity'"):
        _command(argv + ["--sparsity", "1.5"])
