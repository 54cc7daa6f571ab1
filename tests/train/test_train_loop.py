"""The training loop on tiny tasks: it learns, its hooks work, it is deterministic, it checkpoints and resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_toy import make_model, signal_task, text_task

from fewbits.errors import FewbitsValueError
from fewbits.models import load_model
from fewbits.train import TrainConfig, evaluate, latest_checkpoint, load_trainer_state, load_weights, task_loss, train
from fewbits.train.checkpoint import MetricsLog
from fewbits.train.loop import build_param_groups, epoch_order, linear_schedule

FAST = dict(epochs=2, batch_size=16, lr=1e-2, seed=1, log_every=3, progress=False)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_improves_accuracy_on_a_toy_task():
    task = signal_task()
    model = make_model()
    before = evaluate(model, task)["accuracy"]
    result = train(model, task, TrainConfig(**{**FAST, "epochs": 4}))
    assert result.metrics["accuracy"] >= 0.9 > before + 0.2
    assert result.metrics == evaluate(model, task)
    assert result.step == 4 * (192 // 16)
    assert [r["step"] for r in result.history] == [12, 24, 36, 48]  # one evaluation per epoch
    assert result.best_metric == max(r["metrics"]["accuracy"] for r in result.history)


def test_tiny_bert_trains_on_text_through_make_collate():
    task = text_task()
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-bert", task)
    result = train(model, task, TrainConfig(epochs=3, batch_size=8, lr=1e-2, max_length=8, progress=False),
                   tokenizer=tokenizer)
    assert result.metrics["accuracy"] >= 0.9


def test_regression_uses_mean_squared_error():
    logits, labels = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert task_loss(logits, labels, regression=True).item() == pytest.approx((1 + 4) / 2)
    logits2 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert task_loss(logits2, torch.tensor([0, 1]), regression=False).item() == pytest.approx(expected)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(total_steps=10, warmup_steps=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [factor(s) for s in (4, 7, 9, 10)] == [1.0, 0.5, 1 / 6, 0.0]
    assert linear_schedule(5, 0)(0) == 1.0


def test_data_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, seed=3, epoch=1)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, epoch_order(50, seed=3, epoch=1))
    assert not torch.equal(a, epoch_order(50, seed=3, epoch=2))
    assert not torch.equal(a, epoch_order(50, seed=4, epoch=1))


def test_same_seed_gives_identical_parameters_and_another_seed_does_not():
    runs = []
    for seed in (1, 1, 2):
        model = make_model(dropout=0.2)
        train(model, signal_task(), TrainConfig(**{**FAST, "seed": seed}))
        runs.append(params(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_loss_terms_are_added_to_the_task_loss():
    calls = []

    def pull_bias_up(model, batch, outputs):
        calls.append((batch["x"].shape[0], outputs.shape))
        return -10.0 * model.fc2.bias.sum()

    plain, pulled = make_model(), make_model()
    train(plain, signal_task(), TrainConfig(**FAST))
    train(pulled, signal_task(), TrainConfig(**FAST), loss_terms=[pull_bias_up])
    assert len(calls) == 24 and calls[0] == (16, torch.Size([16, 3]))
    # Adam turns the term's constant gradient into a step of about lr per step: every bias ends higher
    assert (pulled.fc2.bias - plain.fc2.bias).min() > 0.05


def test_after_step_runs_after_every_optimizer_step(tmp_path):
    seen = []

    def record(model, optimizer, step):
        assert isinstance(optimizer, torch.optim.AdamW)
        seen.append((step, float(optimizer.state[model.fc1.weight]["step"])))

    train(make_model(), signal_task(), TrainConfig(**FAST), after_step=[record])
    assert seen == [(s, float(s)) for s in range(1, 25)]  # hook sees the optimizer state of its own step


def test_every_step_bumps_the_parameters_version_counters():
    # caches keyed on tensor._version (codebook weights, masks) must notice each update
    versions = []
    train(make_model(), signal_task(), TrainConfig(**FAST),
          after_step=[lambda model, optimizer, step: versions.append(model.fc2.bias._version)])
    assert all(later > earlier for earlier, later in zip(versions, versions[1:]))


def test_param_groups_keep_their_own_learning_rates():
    model = make_model()
    frozen_before = model.fc1.weight.detach().clone()
    lrs = []
    groups = lambda m: [{"params": [m.fc1.weight], "lr": 0.0}, {"params": [m.fc2.weight], "lr": 0.1}]  # noqa: E731
    train(model, signal_task(), TrainConfig(**FAST), param_groups=groups,
          after_step=[lambda m, opt, step: lrs.append([g["lr"] for g in opt.param_groups])])
    assert torch.equal(model.fc1.weight, frozen_before)  # lr 0 for the whole run
    for group_lrs in lrs[1:-1]:  # the schedule scales every group by the same factor
        assert group_lrs[0] == 0.0 and group_lrs[1] == pytest.approx(10 * group_lrs[2])


def test_default_groups_decay_matrices_only_and_skip_frozen_parameters():
    model = make_model()
    model.fc1.bias.requires_grad_(False)
    groups = build_param_groups(model, TrainConfig(weight_decay=0.1), None)
    assert [[p.shape for p in g["params"]] for g in groups] == [[(32, 16), (3, 32)], [(3,)]]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    with pytest.raises(FewbitsValueError, match="param_groups"):
        build_param_groups(model, TrainConfig(), [{"params": [model.fc1.weight]}, {"params": [model.fc1.weight]}])


def test_checkpoints_logs_and_states_are_plain_files(tmp_path):
    from safetensors.torch import load_file

    model = make_model()
    result = train(model, signal_task(), TrainConfig(**FAST, out_dir=tmp_path, save_every=5))
    pointer = json.loads((tmp_path / "checkpoints" / "checkpoints.json").read_text())
    assert pointer["last"] == "step-00000024" and result.last_checkpoint == latest_checkpoint(tmp_path)
    assert result.best_checkpoint == latest_checkpoint(tmp_path, "best")
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == sorted({pointer["last"], pointer["best"]})  # older checkpoints are deleted
    state = load_trainer_state(result.last_checkpoint)  # weights_only=True
    assert state["step"] == 24 and len(state["rng"]) == 1
    weights = load_file(result.last_checkpoint / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    records = MetricsLog(tmp_path).records()
    assert [r["step"] for r in records if r["event"] == "eval"] == [12, 24]
    assert [r["step"] for r in records if r["event"] == "train"] == [3, 6, 9, 12, 15, 18, 21, 24]
    best = make_model(seed=5)
    load_weights(best, result.best_checkpoint)
    assert evaluate(best, signal_task())["accuracy"] == result.best_metric


class Crash(Exception):
    pass


def test_resume_after_a_crash_reaches_the_uninterrupted_parameters(tmp_path):
    reference = make_model(dropout=0.3)
    train(reference, signal_task(), TrainConfig(**FAST))

    def crash_at_19(model, optimizer, step):
        if step == 19:
            raise Crash

    crashed = make_model(dropout=0.3)
    with pytest.raises(Crash):
        train(crashed, signal_task(), TrainConfig(**FAST, out_dir=tmp_path, save_every=5), after_step=[crash_at_19])
    assert load_trainer_state(latest_checkpoint(tmp_path))["step"] == 15  # mid-epoch checkpoint
    resumed = make_model(seed=9, dropout=0.3)  # other initial weights: everything must come from the checkpoint
    result = train(resumed, signal_task(), TrainConfig(**FAST, out_dir=tmp_path, save_every=5, resume=True))
    assert result.step == 24
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in resumed.state_dict().items())
    records = [(r["event"], r["step"]) for r in MetricsLog(tmp_path).records()]
    # step 18 was logged before the crash, then dropped on resume and logged again by the resumed run
    assert records == [("train", 3), ("train", 6), ("train", 9), ("train", 12), ("eval", 12), ("train", 15),
                       ("train", 18), ("train", 21), ("train", 24), ("eval", 24)]
    # totals cover the whole run: the 15 steps before the checkpoint and the 9 after, two evaluations of 96
    totals = load_trainer_state(latest_checkpoint(tmp_path))["totals"]
    assert totals["trained"] == 24 * 16 and totals["evaluated"] == 2 * 96
    assert result.train_examples_per_s == pytest.approx(totals["trained"] / totals["train_s"])
    assert result.seconds >= totals["seconds"] >= totals["train_s"] + totals["eval_s"]


def test_resume_refuses_other_settings_and_starts_fresh_without_checkpoint(tmp_path, caplog):
    with caplog.at_level("INFO", logger="fewbits.train.loop"):
        result = train(make_model(), signal_task(), TrainConfig(**FAST, out_dir=tmp_path / "new", resume=True))
    assert result.step == 24  # nothing to resume: a fresh run, and it says so (at info: resume=True means "if any")
    assert f"no checkpoint in {tmp_path / 'new'} to resume from: training starts from the beginning" in [
        r.getMessage() for r in caplog.records]
    train(make_model(), signal_task(), TrainConfig(**FAST, out_dir=tmp_path, max_steps=6))
    with pytest.raises(FewbitsValueError, match="lr=0.01, now 0.02"):
        train(make_model(), signal_task(), TrainConfig(**{**FAST, "lr": 2e-2}, out_dir=tmp_path, resume=True,
                                                       max_steps=6))


def test_bad_settings_name_the_parameter():
    with pytest.raises(FewbitsValueError, match="'epochs' parameter of TrainConfig"):
        TrainConfig(epochs=0)
    with pytest.raises(FewbitsValueError, match="'warmup_ratio'"):
        TrainConfig(warmup_ratio=1.0)
    with pytest.raises(FewbitsValueError, match="'out_dir'"):
        TrainConfig(resume=True)
    with pytest.raises(FewbitsValueError, match="at most the 192 training examples"):
        train(make_model(), signal_task(), TrainConfig(batch_size=500, progress=False))


def test_evaluate_refuses_unlabeled_and_unknown_splits():
    task = signal_task(unlabeled_test=True)
    with pytest.raises(FewbitsValueError, match="no labels"):
        evaluate(make_model(), task, "test")
    with pytest.raises(FewbitsValueError, match="'split' parameter of evaluate"):
        evaluate(make_model(), task, "validation")
