"""What QAT adds to training: the second phase's regularizers MSQE, Fisher (decoupled) and distillation.

All three pull a quantization-aware model towards a point its quantizer represents well:

* **MSQE**: the loss term ``(lam / 2) * sum (w - Q(w))**2`` over every STE-quantized weight
  (:class:`MSQE`); its gradient ``lam * (w - Q(w))`` flows through the optimizer like the task loss.
* **Fisher**: ``(lam / 2) * sum F_ii (w - Q(w))**2`` with a frozen diagonal ``F``. Its gradient
  ``lam * F * (w - Q(w))`` is applied AFTER ``optimizer.step()`` (:class:`FisherPenalty`, an
  ``after_step`` hook), scaled by the parameter group's current learning rate, as AdamW applies
  weight decay: it never enters Adam's moments.
* **KD**: ``lam * KL(p_teacher^T || p_student^T) * T**2`` from a frozen full-precision teacher
  (:class:`Distillation`), added to the task's cross-entropy; MSE on outputs for regression.

``F`` comes from Adam's second moment at the end of the STE phase (:func:`adam_fisher`, the
*empirical* Fisher: an exponential average of squared mini-batch gradients of the loss at the
true labels), or from :func:`true_fisher` (labels sampled from the model's own predictive
distribution, squared per-example gradients averaged). The two differ (Kunstner et al., 2019,
"Limitations of the empirical Fisher approximation"): only the true Fisher is the expected
Hessian of the log-likelihood's curvature model (a Gauss-Newton matrix); the empirical one
squares gradients at the observed labels, so it shrinks to zero where the model fits the training
data, and Adam's version further mixes gradients from earlier weights and averages over a
mini-batch BEFORE squaring (which drops the per-example variance term).

``Q(w)`` is the layer's STE quantizer applied to the current latent weight and is treated as a
constant in every penalty gradient (it is piecewise constant in ``w``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.methods.qat.config import RegularizerConfig
from fewbits.nn.forward import forward_batch, logits_of
from fewbits.nn.ste import latent_weight, ste_modules


def regularizer_terms(config: RegularizerConfig, *, fisher: Mapping[str, torch.Tensor] | None = None,
                      teacher: nn.Module | None = None, regression: bool = False) -> tuple[list[Any], list[Any]]:
    """The loss terms and after-step hooks of ``config.method`` for the training loop: ``(loss_terms, after_step)``.

    ``fisher`` (the diagonal, by layer) is needed for ``fisher``; ``teacher`` (frozen full precision) for ``kd``.
    """
    if config.method == "msqe":
        return [MSQE(config.lam)], []
    if config.method == "fisher":
        if fisher is None:
            raise bad_param("fisher", "the STE phase's Fisher estimate (from load_ste_checkpoint)", None,
                            "run_second_phase(method='fisher')")
        return [], [FisherPenalty(fisher, config.lam, normalize=config.fisher_normalize)]
    if config.method == "kd":
        if teacher is None:
            raise bad_param("teacher", "the frozen full-precision model", None, "run_second_phase(method='kd')")
        return [Distillation(teacher, forward_batch, lam=config.lam, temperature=config.temperature,
                             t2_scaling=config.t2_scaling, regression=regression)], []
    return [], []


__all__ = [
    "MSQE",
    "Distillation",
    "FisherPenalty",
    "adam_fisher",
    "kd_loss",
    "ste_squared_error",
    "regularizer_terms",
    "true_fisher",
]


def _check_lam(lam: object, owner: str) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or lam == float("inf"):
        raise bad_param("lam", "a finite float >= 0", lam, owner)
    return float(lam)


# --------------------------------------------------------------------------------------------- MSQE


def ste_squared_error(model: nn.Module, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``sum_i weights_i * (w_i - Q(w_i))**2`` over every STE-quantized weight (``weights=None``: all ones).

    Differentiable in the latent weights with ``Q(w)`` held constant. ``weights`` maps module names
    (as in ``model.named_modules()``) to tensors of the weight's shape; modules not in it are skipped.
    """
    total: torch.Tensor | None = None
    for name, module, quantizer in ste_modules(model):
        if weights is not None and name not in weights:
            continue
        w = latent_weight(module)
        delta = w - quantizer.quantize(w)
        term = delta.pow(2) if weights is None else weights[name].to(w.device) * delta.pow(2)
        total = term.sum() if total is None else total + term.sum()
    if total is None:
        raise FewbitsValueError(
            "The model has no STE-quantized weight; quantize it first with fewbits.qat.prepare_qat(model, wbits=...)."
        )
    return total


class MSQE:
    """Loss term ``(lam / 2) * sum (w - Q(w))**2`` (P2's MSQE: Fisher with F = I), for ``train(loss_terms=...)``."""

    def __init__(self, lam: float) -> None:
        self.lam = _check_lam(lam, "MSQE")

    def __call__(self, model: nn.Module, batch: Any, outputs: Any) -> torch.Tensor:
        """The penalty for the model's current latent weights (``batch`` and ``outputs`` unused)."""
        return 0.5 * self.lam * ste_squared_error(model)


# ------------------------------------------------------------------------------------------- Fisher


def adam_fisher(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                bias_correction: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher estimate of every STE-quantized weight from Adam's ``exp_avg_sq``.

    Returns ``{module name: v}`` (detached copies, the latent weight's shape), with
    ``v_hat = v / (1 - beta2**step)`` when ``bias_correction`` (P2 uses ``v_hat``). Works with
    ``torch.optim.Adam`` and ``AdamW`` (any optimizer keeping ``exp_avg_sq`` and ``step``).
    """
    fisher: dict[str, torch.Tensor] = {}
    for name, module, _ in ste_modules(model):
        w = latent_weight(module)
        state = optimizer.state.get(w)
        if not state or "exp_avg_sq" not in state:
            raise FewbitsValueError(
                f"The optimizer holds no 'exp_avg_sq' for the latent weight of {name!r}: pass the Adam/AdamW "
                "optimizer that trained the STE phase, after at least one step."
            )
        v = state["exp_avg_sq"].detach().clone().float()
        if bias_correction:
            beta2 = next(g["betas"][1] for g in optimizer.param_groups if any(p is w for p in g["params"]))
            step = float(state["step"])
            v.div_(1.0 - beta2 ** step)
        fisher[name] = v
    if not fisher:
        raise FewbitsValueError("The model has no STE-quantized weight; there is no Fisher to estimate.")
    return fisher


def _single_examples(batch: Any) -> Iterator[Any]:
    """Split a batch (a tensor, or a mapping of tensors sharing their first dimension) into batches of one."""
    if isinstance(batch, torch.Tensor):
        yield from (batch[i:i + 1] for i in range(batch.shape[0]))
        return
    if not isinstance(batch, Mapping):
        raise FewbitsTypeError(f"true_fisher needs batches that are tensors or dicts of tensors. "
                               f"Got {type(batch).__name__} instead.")
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise FewbitsValueError(f"true_fisher: the batch's tensors disagree on the batch size ({sorted(sizes)}).")
    for i in range(sizes.pop()):
        yield {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def true_fisher(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] = forward_batch, *,
                max_examples: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal true Fisher of every STE-quantized weight, ``E_x E_{y ~ p(y|x)} [grad log p(y|x)**2]``.

    For each example (up to ``max_examples``), one label is sampled from the model's predictive
    distribution and the squared gradient of its log-likelihood is accumulated; the result is the
    average (a Monte-Carlo estimate with one label per example). ``forward(model, batch)`` returns
    the model's outputs (logits, or HF outputs) for a batch, a tensor or a dict of tensors (default:
    :func:`fewbits.models.forward_batch`, for collated batches); each
    example runs alone, in eval mode (dropout off, batch-norm statistics fixed), and the previous
    mode is restored. Costs one forward and one backward pass per example.
    """
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise bad_param("max_examples", "a positive int", max_examples, "true_fisher")
    targets = [(name, latent_weight(module)) for name, module, _ in ste_modules(model)]
    if not targets:
        raise FewbitsValueError("The model has no STE-quantized weight; there is no Fisher to estimate.")
    generator = torch.Generator().manual_seed(seed)
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in targets}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for example in (ex for batch in batches for ex in _single_examples(batch)):
            if seen == max_examples:
                break
            logits = logits_of(forward(model, example))  # (1, K)
            if logits.dim() != 2 or logits.shape[1] < 2:
                raise FewbitsValueError(
                    f"true_fisher needs classification logits of shape (batch, classes >= 2); got "
                    f"{tuple(logits.shape)}. For regression use adam_fisher."
                )
            log_probs = torch.log_softmax(logits[0], dim=-1)
            with torch.no_grad():
                label = int(torch.multinomial(log_probs.detach().float().exp().cpu(), 1, generator=generator))
            grads = torch.autograd.grad(log_probs[label], [w for _, w in targets], allow_unused=True)
            for (name, _), g in zip(targets, grads):
                if g is not None:
                    sums[name].add_(g.detach().float().pow(2))
            seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise FewbitsValueError("true_fisher got no example: 'batches' is empty.")
    return {name: s.div_(seen) for name, s in sums.items()}


class FisherPenalty:
    """Decoupled Fisher regularizer: after each optimizer step, ``w -= lr * lam * F * (w - Q(w))``.

    ``lr`` is the current learning rate of the parameter group holding ``w`` (so a schedule applies
    to it as to AdamW's weight decay). The penalty's gradient never passes through the optimizer,
    so Adam's moments are those of the task loss alone. The per-weight factor ``lr * lam * F`` is
    clipped to 1, i.e. a step never overshoots ``Q(w)``. ``normalize=True`` divides ``F`` by its
    mean over all quantized weights, so ``lam`` is on MSQE's scale (P2 does not normalize; Adam's
    raw ``v_hat`` is of the order of squared gradients, so an unnormalized ``lam`` must be large).
    Use as ``train(..., after_step=[penalty])``.
    """

    def __init__(self, fisher: Mapping[str, torch.Tensor], lam: float, *, normalize: bool = False) -> None:
        self.lam = _check_lam(lam, "FisherPenalty")
        if not fisher:
            raise bad_param("fisher", "a non-empty mapping of module name to Fisher diagonal", dict(fisher),
                            "FisherPenalty")
        fisher = {name: f.detach().float() for name, f in fisher.items()}
        for name, f in fisher.items():
            if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
                raise FewbitsValueError(f"The Fisher diagonal of {name!r} must be finite and non-negative.")
        if normalize:
            mean = torch.cat([f.reshape(-1) for f in fisher.values()]).mean()
            if float(mean) <= 0:
                raise FewbitsValueError("Cannot normalize a Fisher diagonal that is zero everywhere.")
            fisher = {name: f / mean for name, f in fisher.items()}
        self.fisher = fisher

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The penalty's value ``(lam / 2) * sum F (w - Q(w))**2`` (for logging; no gradient is used)."""
        with torch.no_grad():
            return 0.5 * self.lam * ste_squared_error(model, self.fisher)

    @torch.no_grad()
    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Apply the decoupled update to every quantized weight named in the Fisher mapping."""
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        seen = 0
        for name, module, quantizer in ste_modules(model):
            f = self.fisher.get(name)
            if f is None:
                continue
            w = latent_weight(module)
            if f.shape != w.shape:
                raise FewbitsValueError(
                    f"The Fisher diagonal of {name!r} has shape {tuple(f.shape)}, its weight {tuple(w.shape)}: "
                    "was it estimated on another model?"
                )
            lr = lr_of.get(id(w))
            if lr is None:
                continue  # frozen or not optimized: leave it alone, as the optimizer does
            factor = (lr * self.lam * f.to(w.device)).clamp_(max=1.0)
            w.sub_(factor.to(w.dtype) * (w - quantizer.quantize(w)))
            seen += 1
        if seen == 0:
            raise FewbitsValueError(
                "FisherPenalty found none of its weights in the model and optimizer; module names: "
                f"{sorted(self.fisher)[:5]}..."
            )


# ----------------------------------------------------------------------------------------------- KD


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0, *,
            t2_scaling: bool = True, regression: bool = False) -> torch.Tensor:
    """Distillation loss: ``KL(softmax(teacher/T) || softmax(student/T))``, batch mean, times ``T**2``.

    The ``T**2`` factor (Hinton et al. 2015) keeps the soft-target gradients' size independent of
    ``T``; P2's own code omits it, so with ``t2_scaling=False`` a given ``lam`` weighs the soft
    targets ``T**2`` times less. ``regression=True``: mean squared error between the outputs
    (``temperature`` unused). Shapes: ``(batch, classes)``, or any matching shapes for regression.
    """
    if student.shape != teacher.shape:
        raise FewbitsValueError(
            f"kd_loss: student outputs {tuple(student.shape)} and teacher outputs {tuple(teacher.shape)} differ; "
            "the teacher must solve the same task with the same head."
        )
    dtype = torch.promote_types(student.dtype, torch.float32)  # half precision -> float32, float64 stays
    student, teacher = student.to(dtype), teacher.detach().to(dtype)
    if regression:
        return F.mse_loss(student, teacher)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise bad_param("temperature", "a float > 0", temperature, "kd_loss")
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    return kl * temperature ** 2 if t2_scaling else kl


class Distillation:
    """Loss term ``lam * kd_loss(student, teacher(batch), T)`` from a frozen teacher, for ``train(loss_terms=...)``.

    ``forward(model, batch)`` runs a model on a batch (default :func:`fewbits.models.forward_batch`,
    the training loop's own call), so the teacher sees exactly the student's inputs. Works for HF
    models and the CNNs, and for any student parametrization (STE, or P1's codebook fine-tuning).
    The teacher is put in eval mode with gradients off.
    """

    def __init__(self, teacher: nn.Module, forward: Callable[[nn.Module, Any], Any] = forward_batch, *,
                 lam: float = 1.0, temperature: float = 4.0, t2_scaling: bool = True, regression: bool = False) -> None:
        self.lam = _check_lam(lam, "Distillation")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise bad_param("temperature", "a float > 0", temperature, "Distillation")
        self.teacher = teacher.eval().requires_grad_(False)
        self.forward = forward
        self.temperature = float(temperature)
        self.t2_scaling = t2_scaling
        self.regression = regression

    def __call__(self, model: nn.Module, batch: Any, outputs: Any) -> torch.Tensor:
        """The distillation term for the student's ``outputs`` on ``batch``."""
        student_logits = logits_of(outputs)
        teacher_param = next(self.teacher.parameters(), None)
        if teacher_param is not None and teacher_param.device != student_logits.device:
            self.teacher.to(student_logits.device)  # the training loop moved the student after we got it
        with torch.no_grad():
            teacher_logits = logits_of(self.forward(self.teacher, batch))
        return self.lam * kd_loss(student_logits, teacher_logits, self.temperature,
                                  t2_scaling=self.t2_scaling, regression=self.regression)
