"""`fewbits qat` end to end: MNIST-1D with cnn1d (few steps), reuse of a phase-1 folder, resume, and
ResNet-18 on a CIFAR-10 fixture in the official archive format."""

from __future__ import annotations

import json

import pytest
import torch

from fewbits import cli
from fewbits.data import load_task
from fewbits.nn.activations import activation_quantizers
from fewbits.loading import load as load_qat
from fewbits.protocols.qat import read_run_manifest
from fewbits.train import evaluate

FEW = ["--max-steps", "3", "--batch-size", "32", "--no-progress"]


def main(argv: list[str]) -> int:
    """``fewbits`` with only the verbs used here (the parser imports every verb's module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "VERBS", {verb: cli.VERBS[verb] for verb in ("finetune", "qat")})
        return cli.main(argv)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["finetune", "--model", "cnn1d", "--task", "mnist1d", "--out", str(out), *FEW]) == 0
    return out


@pytest.fixture(scope="module")
def first_run(teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat")
    code = main(["qat", "--model", str(teacher_dir), "--task", "mnist1d", "--wbits", "2", "--abits", "2",
                 "--method", "kd", "--temperature", "2", "--out", str(out), *FEW])
    assert code == 0
    return out


def test_kd_run_writes_both_phases_and_a_loadable_artifact(first_run, capsys):
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["method"] == "kd" and summary["second_phase"]["steps"] == 3
    assert read_run_manifest(first_run / "ste-phase")["spec"]["layers"] == ["features.1.0", "features.2.0"]
    assert read_run_manifest(first_run / "ste-phase")["phase"] == "ste"
    assert read_run_manifest(first_run)["second_phase"]["temperature"] == 2.0
    model = load_qat(first_run / "model")
    assert list(activation_quantizers(model)) == ["features.1.0", "features.2.0"]
    metrics = evaluate(model, load_task("mnist1d"))
    assert metrics["accuracy"] == pytest.approx(summary["second_phase"]["metrics"]["accuracy"])


def test_second_run_reuses_the_ste_checkpoint(first_run, tmp_path):
    out = tmp_path / "fisher"
    code = main(["qat", "--model", "cnn1d", "--task", "mnist1d", "--wbits", "2", "--abits", "2", "--method", "fisher",
                 "--lam", "100", "--fisher-normalize", "--ste-checkpoint", str(first_run / "ste-phase"),
                 "--out", str(out), *FEW])
    assert code == 0
    assert not (out / "ste-phase").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "ste_phase" not in summary and summary["ste_checkpoint"] == str(first_run / "ste-phase")


def test_resume_skips_a_finished_ste_phase(teacher_dir, first_run):
    before = (first_run / "ste-phase" / "fisher.safetensors").read_bytes()
    steps = json.loads((first_run / "summary.json").read_text())["second_phase"]["steps"]
    code = main(["qat", "--model", str(teacher_dir), "--task", "mnist1d", "--wbits", "2", "--abits", "2",
                 "--method", "kd", "--temperature", "2", "--out", str(first_run), *FEW, "--resume"])
    assert code == 0
    assert (first_run / "ste-phase" / "fisher.safetensors").read_bytes() == before
    summary = json.loads((first_run / "summary.json").read_text())
    assert "ste_phase" not in summary and summary["second_phase"]["steps"] == steps


def test_resume_with_nothing_to_resume_says_so(teacher_dir, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="fewbits.commands.qat"):
        assert main(["qat", "--model", str(teacher_dir), "--task", "mnist1d", "--wbits", "2", "--abits", "2",
                     "--out", str(tmp_path / "new"), *FEW, "--resume"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "fewbits.commands.qat"] == [
        f"no checkpoint in {tmp_path / 'new'} to resume from: training starts from the beginning"]


def test_resume_of_a_started_run_does_not_warn(teacher_dir, first_run, caplog):
    with caplog.at_level("WARNING", logger="fewbits.commands.qat"):
        assert main(["qat", "--model", str(teacher_dir), "--task", "mnist1d", "--wbits", "2", "--abits", "2",
                     "--method", "kd", "--temperature", "2", "--out", str(first_run), *FEW, "--resume"]) == 0
    assert not [r for r in caplog.records if r.name == "fewbits.commands.qat"]


def test_user_errors_are_one_line(tmp_path, capsys, first_run):
    assert main(["qat", "--model", "cnn1d", "--task", "mnist1d", "--wbits", "3", "--out", str(tmp_path), "--method",
                 "kd"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["qat", "--model", "cnn1d", "--task", "mnist1d", "--wbits", "3", "--abits", "2", "--out",
                 str(tmp_path), "--ste-checkpoint", str(first_run / "ste-phase"), *FEW]) == 2
    assert "W2/A2" in capsys.readouterr().err
    assert main(["qat", "--model", "cnn1d", "--task", "mnist1d", "--wbits", "16", "--out", str(tmp_path)]) == 2
    assert "'wbits'" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet18_on_cifar10_runs_end_to_end(cifar10_dir, tmp_path):
    """ResNet-18 at W2/A4 on a 40-image fixture: both phases (one batch each), evaluation, artifact."""
    out = tmp_path / "resnet"
    code = main(["qat", "--model", "resnet18", "--task", "cifar10", "--data-dir", str(cifar10_dir), "--wbits", "2",
                 "--abits", "4", "--method", "msqe", "--ste-epochs", "1", "--epochs", "1",
                 "--batch-size", "4", "--max-steps", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ste_phase"]["steps"] == 1 and summary["second_phase"]["steps"] == 1
    model = load_qat(out / "model")
    assert "conv1" not in activation_quantizers(model) and "layer1.0.conv1" in activation_quantizers(model)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_eval_command_scores_the_exported_model(first_run, capsys):
    summary = json.loads((first_run / "summary.json").read_text())
    capsys.readouterr()
    for model in (first_run / "model", first_run):  # the exported model, or the run folder that holds it
        assert cli.main(["eval", "--model", str(model), "--task", "mnist1d", "--json"]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert scored["metrics"]["accuracy"] == pytest.approx(summary["second_phase"]["metrics"]["accuracy"])
