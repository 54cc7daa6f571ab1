"""Learned binary masks over frozen weights (P3: fine-tuning by sparsification).

:class:`Mask` is a ``torch.nn.utils.parametrize`` parametrization of a layer's weight: the forward
pass sees ``base * mask`` where ``base`` is the frozen weight (a plain FP32 weight, or the output
of a :class:`~fewbits.nn.Codebook` registered before it, whose codebook is frozen too) and
``mask`` is computed from real-valued ``scores``. The step function has no useful derivative, so
the backward pass is straight-through: the scores receive ``dL/dmask = dL/dW * base``, the
gradient the loss has with respect to a continuous mask.

Score initialisation and thresholding (why):

- The mask is ``scores > 0`` (``THRESHOLD``). Scores start at ``+margin`` for kept weights and
  ``-margin`` for removed ones. Adam moves each score by about ``score_lr`` per step whatever the
  gradient's scale, so ``margin / score_lr`` is the number of steps of consistent evidence a
  weight needs before it changes state: one knob with a plain meaning, independent of the
  weights' scale. A score initialised at ``|w|`` would instead make large weights
  practically permanent and tie the learning rate to each layer's weight scale.
- ``init_sparsity`` removes the smallest-magnitude weights of each layer at the start (the least
  damaging ones to remove first); the default 0 starts from the pretrained model itself, so the
  first forward pass is exactly the pretrained network and training only removes what the task
  does not need. The kept fraction is then learned, not set.
- ``sparsity`` instead fixes the kept count of every layer exactly: the mask keeps the
  ``numel - round(sparsity * numel)`` highest scores of the layer (ties broken by lowest index),
  and scores start from magnitude pruning at that sparsity. Per layer rather than global, so
  that no layer can be emptied. It costs a selection per layer and step (:func:`topk_mask`),
  so it is slower than the fixed threshold.

Example::

    apply_mask(model, init_sparsity=0.0, margin=1e-2)   # scores trainable, weights frozen
    ...train the scores...
    kept_fraction(model)                                  # e.g. 0.986
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.nn.targets import (Patterns, candidate_names, find_parametrizations, register_weight_parametrization,
                                select_targets)

THRESHOLD = 0.0

__all__ = ["THRESHOLD", "Mask", "apply_mask", "kept_fraction", "mask_modules", "masks", "set_masks"]


class _MaskedWeight(torch.autograd.Function):
    """``base * mask`` forward (``mask`` as 0/1 in base's dtype); straight-through: the scores get ``grad * base``."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(base, mask.clone() if base.requires_grad else None)  # mask only for base's grad
        return base.mul(mask)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        base, mask = ctx.saved_tensors
        grad_base = grad.mul(mask) if ctx.needs_input_grad[0] else None
        grad_scores = grad.mul(base) if ctx.needs_input_grad[1] else None
        return grad_base, grad_scores, None


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the ``keep`` highest scores, exactly ``keep`` of them (ties: lowest index first).

    The keep-th largest score is found by selection (``numpy.partition`` on CPU, about 3x faster
    than ``torch.kthvalue`` there; ``torch.kthvalue`` elsewhere), then one comparison pass.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if keep >= n or keep <= 0:
        return torch.full_like(flat, keep > 0, dtype=torch.bool).view(scores.shape)
    if flat.device.type == "cpu":
        kth = torch.as_tensor(np.partition(flat.numpy(), n - keep)[n - keep])  # the keep-th largest score
    else:
        kth = torch.kthvalue(flat, n - keep + 1).values
    mask = flat > kth
    missing = keep - int(torch.count_nonzero(mask))
    if missing:
        mask[torch.nonzero(flat == kth).squeeze(1)[:missing]] = True
    return mask.view(scores.shape)


def _check_fraction(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise bad_param(name, "a number in [0, 1)", value, owner)
    return float(value)


def _check_margin(margin: object, owner: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (math.isfinite(margin) and margin > 0):
        raise bad_param("margin", "a finite number > 0", margin, owner)
    return float(margin)


class Mask(nn.Module):
    """Weight parametrization ``weight -> weight * mask`` with a straight-through gradient to ``scores``.

    ``scores``: float32 parameter in the weight's shape. ``sparsity=None``: ``mask = scores > 0``;
    a float in [0, 1): ``mask`` keeps exactly ``numel - round(sparsity * numel)`` highest scores.
    In evaluation the mask is cached (see :meth:`mask`), so it is computed once. Build one with
    :meth:`init` (training) or :meth:`from_mask`.
    """

    def __init__(self, scores: torch.Tensor, sparsity: float | None = None) -> None:
        super().__init__()
        if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
            raise FewbitsTypeError("The 'scores' parameter of Mask must be a floating-point tensor. "
                                   f"Got {getattr(scores, 'dtype', type(scores).__name__)} instead.")
        self.sparsity = None if sparsity is None else _check_fraction(sparsity, "sparsity", "Mask")
        self.scores = nn.Parameter(scores.detach().to(torch.float32).clone())
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self._buffer: torch.Tensor | None = None
        self._buffer_key: tuple | None = None

    @classmethod
    def init(cls, base: torch.Tensor, *, margin: float, init_sparsity: float = 0.0,
             sparsity: float | None = None) -> Mask:
        """Scores ``+margin`` (kept) / ``-margin`` (removed), removing the smallest ``|base|`` first.

        ``init_sparsity``: fraction removed at the start in the threshold mode. With ``sparsity``
        the start is magnitude pruning at that sparsity, and ``init_sparsity`` must be 0 or equal.
        """
        margin = _check_margin(margin, "Mask.init")
        init_sparsity = _check_fraction(init_sparsity, "init_sparsity", "Mask.init")
        if sparsity is not None:
            sparsity = _check_fraction(sparsity, "sparsity", "Mask.init")
            if init_sparsity not in (0.0, sparsity):
                raise FewbitsValueError(
                    f"Mask.init: with a target sparsity ({sparsity}) the mask starts from magnitude pruning at that "
                    f"sparsity; init_sparsity={init_sparsity} would be overridden at the first step. Leave it at 0.")
            init_sparsity = sparsity
        n = base.numel()
        kept = topk_mask(base.detach().abs(), n - round(init_sparsity * n))
        scores = torch.where(kept, margin, -margin).to(torch.float32)
        return cls(scores, sparsity)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, margin: float = 1.0) -> Mask:
        """A Mask whose forward applies exactly ``mask`` (scores ``+-margin``, threshold mode)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise FewbitsTypeError("The 'mask' parameter of Mask.from_mask must be a bool tensor. "
                                   f"Got {getattr(mask, 'dtype', type(mask).__name__)} instead.")
        margin = _check_margin(margin, "Mask.from_mask")
        return cls(torch.where(mask, margin, -margin).to(torch.float32))

    @property
    def keep(self) -> int:
        """Number of weights the mask keeps (exact in the top-k mode, counted in the threshold mode)."""
        if self.sparsity is not None:
            return self.scores.numel() - round(self.sparsity * self.scores.numel())
        return int(torch.count_nonzero(self.mask()))

    def mask(self) -> torch.Tensor:
        """The current bool mask (the weight's shape).

        While the scores can train (grad enabled, ``requires_grad``) it is recomputed on every call
        and nothing is cached, since optimizers may update the scores in place without bumping
        their version counter (fused AdamW). Otherwise it is cached on the scores' identity and
        version, so evaluation computes it once.
        """
        s = self.scores
        if torch.is_grad_enabled() and s.requires_grad:
            self._cache = None
            return self._compute()
        key = (s.data_ptr(), s._version, s.device, self.sparsity)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute())
        return self._cache[1]

    def _compute(self) -> torch.Tensor:
        with torch.no_grad():
            if self.sparsity is None:
                return self.scores > THRESHOLD
            return topk_mask(self.scores, self.scores.numel() - round(self.sparsity * self.scores.numel()))

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        """``base * mask``; gradients reach the scores (straight-through) and ``base`` only if it trains."""
        if base.shape != self.scores.shape:
            raise FewbitsValueError(f"Mask: the weight has shape {tuple(base.shape)} but the scores have "
                                    f"{tuple(self.scores.shape)}; a mask fits one layer only.")
        return _MaskedWeight.apply(base, self.scores, self._values(base))

    def _values(self, base: torch.Tensor) -> torch.Tensor:
        """The mask as 0/1 in base's dtype, written into one reused buffer.

        Multiplying by a float mask is about twice as fast on CPU as by a bool one (no per-call
        conversion), and comparing straight into a buffer that already has its memory avoids
        fresh allocations every step. Refilled on every training call (see :meth:`mask`).
        """
        s, buffer = self.scores, self._buffer
        if buffer is None or buffer.shape != s.shape or buffer.dtype != base.dtype or buffer.device != base.device:
            buffer = self._buffer = torch.empty(s.shape, dtype=base.dtype, device=base.device)
            self._buffer_key = None
        training = torch.is_grad_enabled() and s.requires_grad
        key = None if training else (s.data_ptr(), s._version, self.sparsity)
        if training or key != self._buffer_key:
            with torch.no_grad():
                if self.sparsity is None:
                    torch.gt(s, THRESHOLD, out=buffer)
                else:
                    buffer.copy_(self.mask())
            self._buffer_key = key
        return buffer

    def extra_repr(self) -> str:
        mode = "threshold 0" if self.sparsity is None else f"sparsity={self.sparsity}"
        return f"shape={tuple(self.scores.shape)}, {mode}"

    def __getstate__(self) -> dict:
        """Never carry the cached mask into copies or pickles of the module."""
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_buffer"] = state["_buffer_key"] = None
        return state


def mask_modules(model: nn.Module) -> dict[str, tuple[nn.Module, Mask]]:
    """``name -> (module, Mask)`` for every masked module (tied modules share one Mask)."""
    return find_parametrizations(model, Mask)  # type: ignore[return-value]


def _weight_key(module: nn.Module) -> int:
    """Identity of what a module's weight is built from, so tied modules get one shared Mask."""
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations.weight
        return id(plist[0]) if len(plist) else id(plist.original)
    return id(module.weight)


def apply_mask(model: nn.Module, *, targets: Patterns = None, exclude: Patterns = None, margin: float = 1e-2,
               init_sparsity: float = 0.0, sparsity: float | None = None) -> list[str]:
    """Register a :class:`Mask` on every target weight (on top of any codebook); return the names.

    Targets default to :func:`fewbits.nn.default_targets` (Embeddings and fully connected layers,
    not the head). Everything the masked weights are built from (the FP32 weight, or the codebook)
    is frozen; the scores are the new trainable parameters. Validates before changing the model.
    Example: ``apply_mask(model, sparsity=0.1)`` keeps exactly 90% of every target weight.
    """
    _check_margin(margin, "apply_mask")
    _check_fraction(init_sparsity, "init_sparsity", "apply_mask")
    if sparsity is not None:
        _check_fraction(sparsity, "sparsity", "apply_mask")
    selected = select_targets(model, targets, exclude, owner="apply_mask")
    modules = dict(model.named_modules())
    present = mask_modules(model)
    already = [n for n in selected if n in present]
    if already:
        raise FewbitsValueError(f"apply_mask: {already[:5]} already carry a mask; load or train it, "
                                "or start from a fresh model.")
    keys = {name: _weight_key(modules[name]) for name in selected}  # before any registration
    shared: dict[int, Mask] = {}
    for name in selected:
        module, key = modules[name], keys[name]
        if key not in shared:
            with torch.no_grad():
                base = module.weight
            shared[key] = Mask.init(base, margin=margin, init_sparsity=init_sparsity, sparsity=sparsity)
        register_weight_parametrization(module, shared[key])
        for p in module.parametrizations.weight.parameters():
            p.requires_grad_(p is shared[key].scores)
    return selected


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current bool mask per masked module name (one entry per shared Mask: the first name)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, (_, m) in mask_modules(model).items():
        if id(m) not in seen:
            seen.add(id(m))
            out[name] = m.mask().clone()
    return out


def set_masks(model: nn.Module, values: Mapping[str, torch.Tensor]) -> list[str]:
    """Register fixed masks (``name -> bool tensor``, as from :func:`masks`) on ``model``; return the names.

    Each mask is applied as a threshold-mode :class:`Mask` (:meth:`Mask.from_mask`), on top of any
    codebook, with everything frozen. Tied partners of a named module share its mask.
    """
    modules = dict(model.named_modules())
    unknown = sorted(set(values) - set(modules))
    if unknown:
        raise FewbitsValueError(f"set_masks: the masks name modules the model lacks: {unknown[:5]}. "
                                "The mask was trained for another architecture.")
    present = sorted(set(values) & set(mask_modules(model)))
    if present:
        raise FewbitsValueError(f"set_masks: {present[:5]} already carry a mask; start from a fresh model.")
    keys = {name: _weight_key(modules[name]) for name in candidate_names(model)}  # before any registration
    missing = sorted(set(values) - set(keys))
    if missing:
        raise FewbitsValueError(f"set_masks: {missing[:5]} have no weight to mask. "
                                "The mask was trained for another architecture.")
    source = {keys[name]: name for name in values}
    names = [name for name in keys if keys[name] in source]  # the named modules and their tied partners
    for name in names:
        mask = values[source[keys[name]]]
        with torch.no_grad():
            shape = tuple(modules[name].weight.shape)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
            raise FewbitsValueError(f"set_masks: the mask for {name!r} has shape {tuple(getattr(mask, 'shape', ()))}, "
                                    f"the weight {shape}. The mask was trained for another model.")
    shared: dict[int, Mask] = {}
    for name in names:
        module, key = modules[name], keys[name]
        if key not in shared:
            shared[key] = Mask.from_mask(values[source[key]].to(torch.bool))
        register_weight_parametrization(module, shared[key])
        for p in module.parametrizations.weight.parameters():
            p.requires_grad_(False)
    return names


def kept_fraction(model: nn.Module) -> float:
    """Fraction of the masked weights that are kept, over all masks (1.0 when there is no mask)."""
    kept = total = 0
    for m in masks(model).values():
        kept += int(torch.count_nonzero(m))
        total += m.numel()
    return kept / total if total else 1.0
