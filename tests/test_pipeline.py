"""The P1 pipeline (fewbits.protocols.codebook) and its commands `fewbits quantize` and `fewbits demo`, on tiny-bert and a
slice of VADER: quantize, centroid fine-tuning (codes frozen, only codebooks and unquantized parameters move), the
artifact reloading to identical outputs, the FP32 cache, and one-line CLI errors."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import fewbits
from fewbits import cli
from fewbits.data import load_task
from fewbits.errors import FewbitsValueError
from fewbits.models import forward_batch
from fewbits.methods.codebook import codebook_modules
from fewbits.nn import default_targets
from fewbits.analysis.plots import plot_scores
from fewbits.protocols.codebook import (QuantizeFinetuneConfig, QuantizeFinetuneResult, eval_sorted, finetune_fp32, quantization_error,
                              quantize_finetune)
from fewbits.train import TrainConfig, evaluate

MAX_LENGTH = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread avoids threads waiting on each other on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    """VADER cut to 256 training and 128 dev words, so that an epoch is a few tiny steps."""
    full = load_task("vader")
    return dataclasses.replace(full, splits={"train": full.splits["train"][:256], "dev": full.splits["dev"][:128]})


@pytest.fixture(scope="module")
def fp32(task, tmp_path_factory):
    """tiny-bert fine-tuned for one epoch, through finetune_fp32 (the cached FP32 start)."""
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-3, max_length=MAX_LENGTH, progress=False)
    return finetune_fp32("tiny-bert", task, config, tmp_path_factory.mktemp("fp32"))


def small_config(**kw) -> QuantizeFinetuneConfig:
    base = {"scheme": "kmeans", "bits": 2, "epochs": 1, "max_steps": 4, "batch_size": 16, "lr": 1e-3,
            "max_length": MAX_LENGTH}
    return QuantizeFinetuneConfig(**{**base, **kw})


def first_batch(task, tokenizer):
    from fewbits.data import make_collate

    return make_collate(task, tokenizer, max_length=MAX_LENGTH)(list(task.splits["dev"][:16]))


def test_pipeline_trains_codebooks_and_unquantized_params_with_codes_frozen(task, fp32, tmp_path):
    config = small_config()
    reference = copy.deepcopy(fp32.model)  # the same quantization, without the fine-tuning
    fewbits.compress(reference, "kmeans", 2, seed=config.seed, max_iter=config.max_iter)
    model = copy.deepcopy(fp32.model)
    result = quantize_finetune(model, task, config, tokenizer=fp32.tokenizer, artifact_dir=tmp_path / "art")

    assert result.steps == 4 and result.layers == len(codebook_modules(reference))
    assert set(codebook_modules(model)) == set(default_targets(fp32.model))
    ref, new = codebook_modules(reference), codebook_modules(model)
    for name in ref:
        assert torch.equal(ref[name][1].codes, new[name][1].codes), name  # codes frozen
    moved = [n for n in ref if not torch.equal(ref[n][1].codebook, new[n][1].codebook)]
    assert len(moved) == len(ref)  # every codebook was trained
    fp32_state, state = fp32.model.state_dict(), model.state_dict()
    for key in ("classifier.weight", "bert.encoder.layer.0.output.LayerNorm.weight"):  # unquantized: trained too
        assert not torch.equal(fp32_state[key], state[key]), key
    # before: the quantized model as compressed; after: the model as returned (and saved)
    assert result.before == evaluate(reference, task, tokenizer=fp32.tokenizer, max_length=MAX_LENGTH)
    assert result.metrics == evaluate(model, task, tokenizer=fp32.tokenizer, max_length=MAX_LENGTH)
    assert 0 < result.relative_error < 1


def test_artifact_reloads_with_identical_outputs_and_honest_sizes(task, fp32, tmp_path):
    model = copy.deepcopy(fp32.model)
    result = quantize_finetune(model, task, small_config(scheme="linear", bits=3), tokenizer=fp32.tokenizer,
                               artifact_dir=tmp_path / "art")
    loaded = fewbits.load(tmp_path / "art")
    batch = first_batch(task, fp32.tokenizer)
    with torch.no_grad():
        assert torch.equal(forward_batch(model, batch).logits, forward_batch(loaded, batch).logits)
    art = result.sizes
    on_disk = sum((tmp_path / "art" / f).stat().st_size for f in ("fewbits.json", "fewbits.safetensors", "config.json"))
    assert art["artifact_bytes"] == on_disk and art["theory_bytes"] < art["artifact_bytes"]
    assert art["ratio_to_fp32"] == pytest.approx(art["fp32_bytes"] / art["artifact_bytes"]) and art["ratio_to_fp32"] > 1
    assert evaluate(loaded, task, tokenizer=fewbits.load_tokenizer(tmp_path / "art"),
                    max_length=MAX_LENGTH) == result.metrics


def test_no_finetuning_scores_after_as_before(task, fp32):
    model = copy.deepcopy(fp32.model)
    result = quantize_finetune(model, task, small_config(scheme="optimal", bits=1, epochs=0), tokenizer=fp32.tokenizer)
    assert result.steps == 0 and result.metrics == result.before and result.sizes == {}
    reference = copy.deepcopy(fp32.model)
    fewbits.compress(reference, "optimal", 1)
    for name, (_, cb) in codebook_modules(reference).items():
        assert torch.equal(codebook_modules(model)[name][1].codebook, cb.codebook)


def test_result_round_trips_through_json(task, fp32):
    result = quantize_finetune(copy.deepcopy(fp32.model), task, small_config(epochs=0), tokenizer=fp32.tokenizer)
    again = QuantizeFinetuneResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and again.score_before == result.before["accuracy"]


def test_fp32_fine_tune_is_reused_only_with_the_same_settings(task, fp32):
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-3, max_length=MAX_LENGTH, progress=False)
    assert not fp32.reused
    again = finetune_fp32("tiny-bert", task, config, fp32.directory)
    assert again.reused and again.key == fp32.key and again.metrics == fp32.metrics
    for (name, a), b in zip(fp32.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not finetune_fp32("tiny-bert", task, config, fp32.directory, reuse=False).reused  # --fresh
    other = finetune_fp32("tiny-bert", task, dataclasses.replace(config, max_steps=2), fp32.directory)
    assert not other.reused and other.key != fp32.key
    assert json.loads((fp32.directory / "fp32.json").read_text())["steps"] == 2
    assert not (fp32.directory / "train" / "checkpoints").exists()  # checkpoints dropped once the model is saved


def test_eval_sorted_keeps_the_examples_and_the_metrics(task, fp32):
    ordered = eval_sorted(task, fp32.tokenizer, MAX_LENGTH)
    dev, sorted_dev = list(task.splits["dev"]), list(ordered.splits["dev"])
    assert sorted(dev, key=repr) == sorted(sorted_dev, key=repr)
    lengths = [len(fp32.tokenizer(ex["text_a"], truncation=True, max_length=MAX_LENGTH)["input_ids"])
               for ex in sorted_dev]
    assert lengths == sorted(lengths) and ordered.splits["train"] is task.splits["train"]
    kw = {"tokenizer": fp32.tokenizer, "max_length": MAX_LENGTH}
    assert evaluate(fp32.model, ordered, **kw) == evaluate(fp32.model, task, **kw)


def test_quantization_error_weighs_layers_by_their_energy():
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    weights = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    reports = fewbits.compress(model, "linear", 1)
    squared, relative = quantization_error(reports)
    rebuilt = [model[0].weight.detach(), model[1].weight.detach()]
    expected = sum(float((w.double() - r.double()).pow(2).sum()) for w, r in zip(weights, rebuilt))
    assert squared == pytest.approx(expected, rel=1e-6)
    assert relative == pytest.approx(expected / sum(float(w.double().pow(2).sum()) for w in weights), rel=1e-6)


@pytest.mark.parametrize("kw, name", [({"scheme": "bogus"}, "scheme"), ({"bits": 0}, "bits"),
                                      ({"epochs": -1}, "epochs"), ({"quantized_lr_scale": 0}, "quantized_lr_scale"),
                                      ({"groups": 0}, "groups"), ({"lr": -1.0}, "lr")])
def test_config_errors_name_the_parameter(kw, name):
    with pytest.raises(FewbitsValueError, match=f"'{name}'"):
        small_config(**kw)


def test_plot_scores_writes_a_png(task, fp32, tmp_path):
    result = quantize_finetune(copy.deepcopy(fp32.model), task, small_config(epochs=0), tokenizer=fp32.tokenizer)
    path = plot_scores([result], tmp_path / "p1.png", fp32_score=0.9, prior_score=0.5, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- commands --------------------------------------------------------------------------------------------------

@pytest.fixture
def main(monkeypatch):
    """cli.main with only the verbs tested here registered."""
    monkeypatch.setattr(cli, "VERBS", {k: v for k, v in cli.VERBS.items() if k in ("quantize", "demo")})
    return cli.main


TINY = ("--max-length", str(MAX_LENGTH), "--batch-size", "32", "--lr", "1e-3", "--no-progress")


def test_quantize_command_fine_tunes_first_then_reuses_the_fp32_model(main, capsys, tmp_path):
    out = tmp_path / "q"
    argv = ["quantize", "--model", "tiny-bert", "--task", "vader", "--scheme", "kmeans", "--bits", "2",
            "--fp32-max-steps", "3", "--finetune-max-steps", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "fine-tuned into" in stdout and "kmeans 2-bit" in stdout and "smaller than FP32" in stdout
    record = json.loads((out / "result.json").read_text())
    assert record["steps"] == 2 and record["config"]["bits"] == 2 and record["task"] == "vader"
    assert fewbits.load(out / "artifact") is not None

    assert main(argv) == 0
    assert "reused from" in capsys.readouterr().out

    # a fine-tuned directory is used as is
    assert main(["quantize", "--model", str(out / "fp32"), "--task", "vader", "--scheme", "linear", "--bits", "1",
                 "--finetune-epochs", "0", "--out", str(tmp_path / "q2"), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "fine-tuned into" not in stdout and "after 0 centroid fine-tuning steps" in stdout


def test_quantize_command_on_a_cnn_quantizes_its_convolutions(main, capsys, tmp_path):
    out = tmp_path / "cnn"
    assert main(["quantize", "--model", "cnn1d", "--task", "mnist1d", "--scheme", "optimal", "--bits", "2",
                 "--fp32-max-steps", "2", "--finetune-max-steps", "2", "--out", str(out), "--no-progress",
                 "--threads", "1"]) == 0
    assert "optimal 2-bit" in capsys.readouterr().out
    layers = {layer.name for layer in fewbits.describe(out / "artifact").layers}
    assert layers == {"features.0.0", "features.1.0", "features.2.0"}  # every convolution, not the head


@pytest.mark.parametrize("argv, words", [
    (["quantize", "--task", "vader", "--scheme", "bogus", "--bits", "2"], "'scheme'"),
    (["quantize", "--task", "vader", "--scheme", "kmeans", "--bits", "9"], "'bits'"),
    (["quantize", "--task", "nope", "--scheme", "kmeans", "--bits", "2"], "'name'"),
    (["demo", "--schemes", "linear", "bogus"], "--schemes"),
    (["demo", "--bits", "0"], "--bits"),
])
def test_cli_errors_are_one_line(main, capsys, tmp_path, argv, words):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith(f"fewbits {argv[0]}: error:")


def test_quantize_refuses_a_directory_without_a_model(main, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["quantize", "--model", str(tmp_path / "empty"), "--task", "vader", "--scheme", "kmeans",
                 "--bits", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model" in err


def test_demo_runs_end_to_end_and_resumes(main, capsys, tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--model", "tiny-bert", "--schemes", "linear", "kmeans", "--bits", "1", "2", "--fp32-epochs", "1",
            "--finetune-steps", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    assert [(r["config"]["scheme"], r["config"]["bits"]) for r in summary["results"]] == [
        ("linear", 1), ("linear", 2), ("kmeans", 1), ("kmeans", 2)]
    assert all(r["steps"] == 2 for r in summary["results"])
    assert "| kmeans | 2 |" in stdout and "linear < kmeans" in stdout
    assert (out / "p1.png").is_file() and (out / "results.md").read_text().strip() in stdout
    for scheme, bits in (("linear", 1), ("kmeans", 2)):
        assert fewbits.io.describe(out / f"{scheme}-{bits}bit").layers[0].bits == bits

    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert main(argv) == 0  # everything reused: no cell is recomputed
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    assert json.loads((out / "results.json").read_text())["results"] == summary["results"]


def test_demo_weights_only_prints_optimal_at_most_linear(main, capsys, tmp_path):
    assert main(["demo", "--model", "tiny-bert", "--weights-only", "--schemes", "linear", "optimal", "--bits", "1",
                 "2", "--out", str(tmp_path / "w"), "--no-progress"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("linear ", "optimal "))}
    linear, optimal = ([float(v) for v in rows[s][:2]] for s in ("linear", "optimal"))
    assert all(0 < o <= lin for o, lin in zip(optimal, linear))  # optimal: least squared error of any codebook
    assert not (tmp_path / "w").exists()  # nothing written
