"""fewbits.protocols.sensitivity and `fewbits quantize`'s sensitivity options on tiny-bert and a slice of VADER."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fewbits
from fewbits import cli
from fewbits.errors import FewbitsValueError
from fewbits.methods.codebook import codebook_modules
from fewbits.protocols.codebook import QuantizeFinetuneConfig, finetune_fp32
from fewbits.quantize.allocate import layer_bytes
from fewbits.protocols.sensitivity import compress_for_task, plot_allocation, task_importance, training_batches
from fewbits.train import TrainConfig

from test_pipeline import MAX_LENGTH, one_thread, task  # noqa: F401 (fixtures: one torch thread, a VADER slice)


@pytest.fixture(scope="module")
def fp32(task, tmp_path_factory):
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-3, max_length=MAX_LENGTH, progress=False)
    return finetune_fp32("tiny-bert", task, config, tmp_path_factory.mktemp("fp32"), keep_checkpoints=True)


def settings(**kw) -> QuantizeFinetuneConfig:
    base = {"scheme": "optimal", "bits": 2, "epochs": 0, "batch_size": 16, "max_length": MAX_LENGTH,
            "importance_batches": 2}
    return QuantizeFinetuneConfig(**{**base, **kw})


def test_training_batches_are_seeded_and_capped(task, fp32):
    first = training_batches(task, fp32.tokenizer, 3, 16, MAX_LENGTH, seed=1)
    again = training_batches(task, fp32.tokenizer, 3, 16, MAX_LENGTH, seed=1)
    assert len(first) == 3 and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert len(training_batches(task, fp32.tokenizer, 100, 32, MAX_LENGTH, seed=0)) == 8  # 256 examples


def test_fisher_and_adam_importances_cover_every_target(task, fp32):
    fisher = task_importance(fp32.model, task, settings(importance="fisher"), tokenizer=fp32.tokenizer)
    adam = task_importance(fp32.model, task, settings(importance="adam"), adam_from=fp32.directory / "train")
    assert set(fisher) == set(adam) and "bert.pooler.dense" in fisher and "classifier" not in fisher
    for name, f in fisher.items():
        assert f.shape == fp32.model.get_submodule(name).weight.shape and bool((f >= 0).all())
    assert task_importance(fp32.model, task, settings()) is None
    with pytest.raises(FewbitsValueError, match="needs the fine-tuning run's checkpoints"):
        task_importance(fp32.model, task, settings(importance="adam"))


@pytest.mark.parametrize("sensitivity", ["error", "trace"])
def test_mixed_bits_fit_the_budget_of_the_real_artifact(task, fp32, tmp_path, sensitivity):
    model = copy.deepcopy(fp32.model)
    reports, plan = compress_for_task(model, task, settings(bits=2.5, importance="fisher", outliers=0.01,
                                                            sensitivity=sensitivity, trace_probes=2),
                                      tokenizer=fp32.tokenizer)
    assert plan is not None and {r.name: r.bits for r in reports} == plan.bits
    assert plan.bytes <= plan.budget_bytes == int(2.5 * sum(plan.numel.values()) / 8)
    assert len(set(plan.bits.values())) > 1
    spent = sum(layer_bytes(r.shape[0] * r.shape[1], r.bits, r.n_groups, outliers=r.outliers) for r in reports)
    assert spent == plan.bytes
    fewbits.save(model, tmp_path / "a")
    summary = fewbits.describe(tmp_path / "a")
    stored = sum(layer.code_bytes + layer.codebook_bytes + layer.outlier_bytes for layer in summary.layers)
    assert stored == plan.bytes <= plan.budget_bytes
    loaded = fewbits.load(tmp_path / "a")
    for name, (module, cb) in codebook_modules(model).items():
        assert torch.equal(loaded.get_submodule(name).weight, module.weight)
    plot = plot_allocation(plan.bits, plan.numel, tmp_path / "bits.png", title="t")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importance_lowers_the_importance_weighted_error(task, fp32):
    fisher = task_importance(fp32.model, task, settings(importance="fisher"), tokenizer=fp32.tokenizer)

    def weighted_error(config: QuantizeFinetuneConfig) -> float:
        model = copy.deepcopy(fp32.model)
        compress_for_task(model, task, config, tokenizer=fp32.tokenizer)
        return sum(float(((model.get_submodule(n).weight - fp32.model.get_submodule(n).weight).double() ** 2
                          * f.double()).sum()) for n, f in fisher.items())

    assert weighted_error(settings(importance="fisher")) < weighted_error(settings())


@pytest.mark.parametrize("kw, words", [
    ({"bits": 0.5}, r"average number of bits in \[1, 8\]"), ({"bits": 8.5}, r"average number of bits in \[1, 8\]"),
    ({"outliers": 0.5}, r"\[0, 0.5\)"), ({"outliers": -0.1}, r"\[0, 0.5\)"),
    ({"scheme": "linear", "importance": "fisher"}, "'importance'"), ({"scheme": "uniform", "outliers": 0.01}, "'outliers'"),
    ({"importance": "hessian"}, "'importance'"), ({"sensitivity": "x"}, "'sensitivity'"),
    ({"importance_batches": 0}, "'importance_batches'"), ({"outlier_selection": "big"}, "'outlier_selection'"),
])
def test_bad_settings_are_one_line_errors(kw, words):
    with pytest.raises(FewbitsValueError, match=words):
        settings(**kw)


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(cli, "VERBS", {k: v for k, v in cli.VERBS.items() if k in ("quantize", "info")})
    return cli.main


TINY = ("--max-length", str(MAX_LENGTH), "--batch-size", "32", "--lr", "1e-3", "--no-progress", "--threads", "1")


def test_quantize_command_mixed_with_importance_and_outliers(main, capsys, tmp_path):
    out = tmp_path / "q"
    argv = ["quantize", "--model", "tiny-bert", "--task", "vader", "--scheme", "optimal", "--bits", "2.5",
            "--importance", "adam", "--outliers", "0.005", "--fp32-max-steps", "3", "--finetune-max-steps", "2",
            "--out", str(out), *TINY]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "mixed precision: layers per bits" in stdout and (out / "bits.png").is_file()
    record = json.loads((out / "result.json").read_text())
    assert record["config"]["bits"] == 2.5 and record["outliers"] > 0 and len(set(record["layer_bits"].values())) > 1
    assert main(["info", str(out / "artifact")]) == 0
    info = capsys.readouterr().out
    assert "outliers" in info and "mixed bits" in info


@pytest.mark.parametrize("extra, words", [
    (["--bits", "0.5"], "'bits'"), (["--bits", "2", "--outliers", "0.6"], "'outliers'"),
    (["--bits", "2", "--scheme", "linear", "--importance", "fisher"], "'importance'"),
    (["--bits", "2", "--scheme", "linear", "--outliers", "0.01"], "'outliers'"),
])
def test_cli_errors_are_one_line(main, capsys, tmp_path, extra, words):
    argv = ["quantize", "--task", "vader", "--scheme", "optimal", *extra, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("fewbits quantize: error:")


def test_a_mask_trains_over_a_mixed_base_with_outliers_and_reloads(task, fp32, tmp_path):
    from fewbits.protocols.mask import MaskConfig, load_base, load_mask, save_mask, train_mask

    model = copy.deepcopy(fp32.model)
    compress_for_task(model, task, settings(bits=2.5, importance="fisher", outliers=0.01), tokenizer=fp32.tokenizer)
    fewbits.save(model, tmp_path / "base", tokenizer=fp32.tokenizer)
    base = load_base(tmp_path / "base", task, seed=0)
    frozen = {name: (cb.codebook.detach().clone(), cb.outlier_values.detach().clone())
              for name, (_, cb) in codebook_modules(base.model).items() if cb.n_outliers}
    assert frozen
    config = TrainConfig(epochs=1, max_steps=2, batch_size=16, lr=1e-3, max_length=MAX_LENGTH, progress=False)
    result = train_mask(base.model, task, MaskConfig(score_lr=0.1), config, tokenizer=base.tokenizer)
    assert 0 < result.kept[-1] <= 1
    for name, (_, cb) in codebook_modules(base.model).items():
        if name in frozen:  # the base stays as it was: only scores and head train
            assert torch.equal(cb.codebook, frozen[name][0]) and torch.equal(cb.outlier_values, frozen[name][1])
    save_mask(base.model, tmp_path / "mask", base, task=task)
    again, _ = load_mask(tmp_path / "base", tmp_path / "mask")
    name = next(iter(frozen))
    assert torch.equal(again.get_submodule(name).weight, base.model.get_submodule(name).weight)
