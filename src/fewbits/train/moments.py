"""Adam's second moments of a training run, read from its checkpoint: a diagonal Fisher estimate for free.

Adam keeps ``exp_avg_sq``, a running mean of squared mini-batch gradients, for every parameter; after
fine-tuning it estimates the diagonal Fisher (P2), which the sensitivity-aware codebooks of
:mod:`fewbits.protocols.sensitivity` use as per-weight importances.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fewbits.errors import FewbitsValueError, bad_param
from fewbits.nn.targets import select_targets
from fewbits.train.checkpoint import STATE_FILE, latest_checkpoint, load_trainer_state
from fewbits.train.loop import TrainConfig, build_param_groups


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def adam_second_moments(model: nn.Module, checkpoint: str | Path, *, layers: Sequence[str] | None = None,
                        bias_correction: bool = True) -> dict[str, torch.Tensor]:
    """Adam's ``exp_avg_sq`` of each layer's weight from a checkpoint of :func:`fewbits.train.train`.

    ``model`` must have the trainable parameters of the run that wrote ``checkpoint`` (a checkpoint
    folder ``.../checkpoints/step-N``, or a run's ``out_dir``, whose last checkpoint is read): the
    optimizer's groups are rebuilt as the run built them. ``bias_correction`` divides by
    ``1 - beta2**step`` (Adam's ``v_hat``).
    Example: ``F = adam_second_moments(model, "out/fp32-run")``.
    """
    path = Path(checkpoint)
    if not (path / STATE_FILE).is_file():
        path = latest_checkpoint(path) or path
    if not (path / STATE_FILE).is_file():
        raise FewbitsValueError(f"adam_second_moments: {str(checkpoint)!r} holds no training checkpoint "
                                f"({STATE_FILE}); give the out_dir of a fine-tuning run that kept its checkpoints.")
    names = list(select_targets(model, None, None, owner="adam_second_moments") if layers is None else layers)
    unknown = [n for n in names if not isinstance(getattr(_module(model, n), "weight", None), torch.Tensor)]
    if unknown or not names:
        raise bad_param("layers", "module names with a weight", unknown or names, "adam_second_moments")
    state = load_trainer_state(path)["optimizer"]
    groups = build_param_groups(model, TrainConfig(), None)
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in state["param_groups"]]:
        raise FewbitsValueError(f"adam_second_moments: the optimizer state in {path} does not fit this model's "
                                "trainable parameters; give the model the run trained.")
    by_param = {id(p): (i, g) for g, sg in zip(groups, state["param_groups"]) for p, i in zip(g["params"], sg["params"])}
    out = {}
    for name in names:
        weight = _module(model, name).weight
        index, group = by_param.get(id(weight), (None, None))
        entry = state["state"].get(index) if index is not None else None
        if entry is None or "exp_avg_sq" not in entry or tuple(entry["exp_avg_sq"].shape) != tuple(weight.shape):
            raise FewbitsValueError(f"adam_second_moments: the checkpoint {path} holds no second moment for "
                                    f"{name!r} (frozen in that run, or another model).")
        v = entry["exp_avg_sq"].detach().float().clone()
        if bias_correction:
            beta2 = next(sg.get("betas", (0.9, 0.999))[1] for sg in state["param_groups"] if index in sg["params"])
            v.div_(1.0 - beta2 ** float(entry["step"]))
        out[name] = v
    return out
