"""What the mask method adds to training: its own optimizer groups (the scores, and optionally the head)."""

from __future__ import annotations

from typing import Any

from torch import nn

from fewbits.methods.mask.config import MaskConfig
from fewbits.nn.mask import mask_modules
from fewbits.nn.targets import head_names


def mask_param_groups(model: nn.Module, config: MaskConfig) -> list[dict[str, Any]]:
    """The scores at ``score_lr`` without weight decay (decay would pull every score towards the threshold and
    flip weights for no reason); the head at ``head_lr`` when given (else it trains at the loop's rate)."""
    scores = list({id(m.scores): m.scores for _, m in mask_modules(model).values()}.values())
    groups: list[dict[str, Any]] = [{"name": "scores", "params": scores, "lr": config.score_lr, "weight_decay": 0.0}]
    if config.head_lr is not None:
        head = [p for h in head_names(model) for p in model.get_submodule(h).parameters() if p.requires_grad]
        groups.append({"name": "head", "params": head, "lr": config.head_lr})
    return groups
