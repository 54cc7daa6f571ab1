"""The mask method's transform: a Mask on every target weight, everything frozen but the scores and the head.

:func:`apply` masks the target weights (on top of any codebook) and freezes every parameter except
the scores and the task head; :func:`new_head` gives a base a freshly initialised head of the task's
size (mask training and mask loading both start there).
"""

from __future__ import annotations

import torch
from torch import nn

from fewbits.errors import FewbitsValueError, bad_param
from fewbits.methods.mask.config import MaskConfig
from fewbits.nn.mask import apply_mask, mask_modules
from fewbits.nn.targets import head_names, select_targets


def new_head(model: nn.Module, num_labels: int, label_names: list[str] | None = None, seed: int = 0) -> list[str]:
    """Give ``model`` a freshly initialised task head with ``num_labels`` outputs; returns the head's module names.

    The head's Linear layers that produce the logits are rebuilt at the new size, every head
    layer is re-initialised (Hugging Face: the model's own ``_init_weights``) from ``seed``
    without touching the global RNG, and a Hugging Face config gets the new labels.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise bad_param("num_labels", "a positive int", num_labels, "new_head")
    heads = head_names(model)
    if not heads:
        raise FewbitsValueError(f"new_head: {type(model).__name__} has no task head (a bare base model); load it "
                                "as a sequence classifier (fewbits.models.load_model).")
    modules = dict(model.named_modules())
    config = getattr(model, "config", None)
    old = getattr(config, "num_labels", None) if config is not None else modules[heads[-1]].weight.shape[0]
    init = getattr(model, "_init_weights", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in heads:
            module = modules[name]
            if isinstance(module, nn.Linear):
                out = num_labels if module.out_features == old else module.out_features
                fresh = nn.Linear(module.in_features, out, bias=module.bias is not None,
                                  device=module.weight.device, dtype=module.weight.dtype)
                if callable(init):
                    init(fresh)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, fresh)
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                raise FewbitsValueError(f"new_head: cannot re-initialise the head layer {name!r} "
                                        f"({type(module).__name__}).")
    if config is not None and hasattr(config, "num_labels"):
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
        if label_names and len(label_names) == num_labels:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {n: i for i, n in enumerate(label_names)}
    return heads


def head_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of the task head (stored dense beside the masks)."""
    heads = head_names(model)
    return [k for k in model.state_dict() if any(k.startswith(h + ".") for h in heads)]


def apply(model: nn.Module, config: MaskConfig) -> list[str]:
    """Mask the target weights and freeze everything but the scores and the head; returns the masked layers."""
    heads = head_names(model)
    selected = select_targets(model, config.targets, config.exclude, owner="fewbits mask")
    in_head = [n for n in selected if any(n == h or n.startswith(h + ".") for h in heads)]
    if in_head:
        raise FewbitsValueError(f"fewbits mask: {in_head} belong to the task head, which trains dense; "
                                "remove them from 'targets'.")
    names = apply_mask(model, targets=selected, margin=config.margin, init_sparsity=config.init_sparsity,
                       sparsity=config.sparsity)
    scores = {id(m.scores) for _, m in mask_modules(model).values()}
    head_params = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in scores or id(p) in head_params)
    return names


