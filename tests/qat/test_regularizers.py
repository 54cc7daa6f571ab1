"""MSQE, decoupled Fisher (Adam's v and the true Fisher) and distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsValueError
from fewbits.nn.ste import STEQuantize, latent_weight
from fewbits.nn.targets import register_weight_parametrization
from fewbits.methods.qat.training import (MSQE, Distillation, FisherPenalty, adam_fisher, kd_loss,
                                        ste_squared_error, true_fisher)


def _mlp(seed: int = 0, bits: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    for layer in (model[0], model[2]):
        register_weight_parametrization(layer, STEQuantize(bits))
    return model


def _forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["x"])


# ---------------------------------------------------------------------------------------------- KD


def test_kd_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(5, 4)
    for t in (1.0, 4.0):
        assert float(kd_loss(logits, logits.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, logits.clone(), regression=True)) == 0.0
    other = torch.randn(5, 4)
    assert float(kd_loss(other, logits, 2.0)) > 1e-3


def test_kd_loss_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    teacher = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    for t2 in (True, False):
        assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 3.0, t2_scaling=t2), (student,))
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, regression=True), (student,))


def test_kd_t2_scaling_multiplies_by_t_squared():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    on = kd_loss(s, t, 4.0, t2_scaling=True)
    off = kd_loss(s, t, 4.0, t2_scaling=False)
    assert float(on) == pytest.approx(16 * float(off), rel=1e-5)


def test_kd_loss_is_the_kl_divergence():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    expected = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1),
                                          log_target=True, reduction="batchmean")
    assert float(kd_loss(s, t, 2.0, t2_scaling=False)) == pytest.approx(float(expected), rel=1e-5)


def test_kd_rejects_bad_inputs():
    with pytest.raises(FewbitsValueError, match="temperature"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(FewbitsValueError, match="differ"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_distillation_term_uses_a_frozen_teacher():
    teacher = _mlp(1)
    student = copy.deepcopy(teacher)
    batch = {"x": torch.randn(7, 6)}
    term = Distillation(teacher, _forward, lam=2.0, temperature=4.0)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert float(term(student, batch, student(batch["x"])).detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        latent_weight(student[2]).add_(0.3)
    value = term(student, batch, student(batch["x"]))
    value.backward()
    assert float(value.detach()) > 0 and latent_weight(student[2]).grad is not None
    assert all(p.grad is None for p in teacher.parameters())


# -------------------------------------------------------------------------------------------- MSQE


def test_msqe_value_and_gradient():
    model = _mlp()
    expected = 0.0
    for layer in (model[0], model[2]):
        w = latent_weight(layer).detach()
        expected += float((w - layer.weight.detach()).pow(2).sum())
    value = MSQE(lam=3.0)(model, None, None)
    assert float(value.detach()) == pytest.approx(1.5 * expected, rel=1e-5)
    value.backward()
    w = latent_weight(model[0])
    torch.testing.assert_close(w.grad, 3.0 * (w.detach() - model[0].weight.detach()))


def test_quantization_error_needs_ste_weights():
    with pytest.raises(FewbitsValueError, match="no STE-quantized weight"):
        ste_squared_error(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ Fisher


def _grads(model: nn.Module, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen) for p in model.parameters()]


def _run(model: nn.Module, steps: int, after_step=None) -> torch.optim.Adam:
    """Adam steps with FIXED gradients (the same sequence whatever the weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        for p, g in zip(model.parameters(), _grads(model, step)):
            p.grad = g.clone()
        opt.step()
        if after_step is not None:
            after_step(model, opt, step)
    return opt


def test_fisher_update_never_enters_adam_state():
    plain, regularized = _mlp(), _mlp()
    fisher = {name: torch.rand_like(latent_weight(m)) for name, m in (("0", plain[0]), ("2", plain[2]))}
    opt_plain = _run(plain, 5)
    opt_reg = _run(regularized, 5, FisherPenalty(fisher, lam=20.0))
    for p, q in zip(plain.parameters(), regularized.parameters()):
        a, b = opt_plain.state[p], opt_reg.state[q]
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert not torch.equal(latent_weight(plain[0]), latent_weight(regularized[0]))  # the penalty did act


def test_msqe_as_a_loss_term_does_enter_adam_state():
    """Contrast with the decoupled update: a penalty through the loss changes Adam's moments."""
    plain, regularized = _mlp(), _mlp()
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(regularized.parameters(), lr=1e-2)
    x = torch.randn(4, 6)
    for model, opt, lam in ((plain, opt_a, 0.0), (regularized, opt_b, 5.0)):
        loss = model(x).pow(2).mean() + MSQE(lam)(model, None, None)
        loss.backward()
        opt.step()
    w_a, w_b = latent_weight(plain[0]), latent_weight(regularized[0])
    assert not torch.equal(opt_a.state[w_a]["exp_avg_sq"], opt_b.state[w_b]["exp_avg_sq"])


def test_fisher_step_is_lr_lam_f_times_quantization_error():
    model = _mlp()
    fisher = {"0": torch.rand_like(latent_weight(model[0])), "2": torch.rand_like(latent_weight(model[2]))}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = latent_weight(model[0])
    before = w.detach().clone()
    q = model[0].weight.detach().clone()
    FisherPenalty(fisher, lam=4.0)(model, opt, 0)
    torch.testing.assert_close(w.detach(), before - 0.05 * 4.0 * fisher["0"] * (before - q))


def test_fisher_step_never_overshoots_the_grid_point():
    model = _mlp()
    fisher = {"0": torch.full_like(latent_weight(model[0]), 1e6)}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    q = model[0].weight.detach().clone()
    FisherPenalty(fisher, lam=1.0)(model, opt, 0)
    torch.testing.assert_close(latent_weight(model[0]).detach(), q)


def test_fisher_penalty_value_and_normalize():
    model = _mlp()
    f = {"0": torch.full_like(latent_weight(model[0]), 2.0), "2": torch.full_like(latent_weight(model[2]), 2.0)}
    raw = FisherPenalty(f, lam=1.0)
    normalized = FisherPenalty(f, lam=1.0, normalize=True)
    assert float(raw.penalty(model)) == pytest.approx(float(ste_squared_error(model).detach()), rel=1e-5)
    assert float(normalized.penalty(model)) == pytest.approx(0.5 * float(ste_squared_error(model).detach()), rel=1e-5)
    with pytest.raises(FewbitsValueError, match="non-negative"):
        FisherPenalty({"0": -f["0"]}, lam=1.0)
    with pytest.raises(FewbitsValueError, match="lam"):
        FisherPenalty(f, lam=-1.0)


def test_adam_fisher_reads_exp_avg_sq_with_optional_bias_correction():
    model = _mlp()
    opt = _run(model, 3)
    w = latent_weight(model[0])
    v = opt.state[w]["exp_avg_sq"]
    raw = adam_fisher(model, opt, bias_correction=False)
    corrected = adam_fisher(model, opt)
    assert set(raw) == {"0", "2"}
    torch.testing.assert_close(raw["0"], v)
    torch.testing.assert_close(corrected["0"], v / (1 - 0.999 ** 3))
    raw["0"].add_(1.0)  # a copy, not the optimizer's buffer
    assert not torch.equal(raw["0"], v)
    with pytest.raises(FewbitsValueError, match="exp_avg_sq"):
        adam_fisher(model, torch.optim.Adam(model.parameters()))


def test_true_fisher_matches_the_expectation_over_the_models_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    register_weight_parametrization(model[0], STEQuantize(2))
    x = torch.randn(1, 3)
    # exact: sum_k p_k (d log p_k / dW)**2 at the quantized weight
    logits = model(x)
    p = torch.softmax(logits, -1)[0].detach()
    w = latent_weight(model[0])
    exact = torch.zeros_like(w)
    for k in range(4):
        (g,) = torch.autograd.grad(torch.log_softmax(logits, -1)[0, k], w, retain_graph=True)
        exact += p[k] * g.pow(2)
    n = 1000  # Monte-Carlo over sampled labels: a few percent of error at this size
    estimate = true_fisher(model, [{"x": x.expand(n, 3)}], _forward, max_examples=n, seed=1)["0"]
    torch.testing.assert_close(estimate, exact, rtol=0.15, atol=1e-4)
    assert model.training  # mode restored


def test_true_fisher_differs_from_the_empirical_fisher_at_a_confident_fit():
    """At a confident correct fit the empirical Fisher (true labels) vanishes; the true Fisher does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    register_weight_parametrization(model[0], STEQuantize(8))
    with torch.no_grad():
        latent_weight(model[0]).copy_(torch.tensor([[3.0, 0.0], [0.0, 3.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, latent_weight(model[0]))
    empirical = g.pow(2) / 2
    true = true_fisher(model, [{"x": x.repeat(500, 1)}], _forward, max_examples=1000, seed=0)["0"]
    assert float(true.sum()) > 5 * float(empirical.sum())
