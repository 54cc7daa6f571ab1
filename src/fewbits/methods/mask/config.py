"""The mask method's settings: how the scores start and learn, and which layers carry a mask."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fewbits.errors import bad_param
from fewbits.methods.config import MethodConfig
from fewbits.nn.targets import Patterns


@dataclass(frozen=True)
class MaskConfig(MethodConfig):
    """How a mask is learned (plain data, checked on creation). ``margin / score_lr`` is the number of Adam
    steps of consistent evidence a weight needs before it changes state; see :mod:`fewbits.nn.mask`."""

    method = "mask"
    version = 1

    score_lr: float = 3e-4  # Adam rate of the scores (the sensitive knob: watch the kept fraction)
    margin: float = 1e-2  # initial |score|: kept at +margin, removed at -margin, threshold 0
    init_sparsity: float = 0.0  # fraction of each layer removed at the start (smallest |w| first)
    sparsity: float | None = None  # exact fraction removed per layer at every step (top-k of scores)
    head_lr: float | None = None  # rate of the dense head (None: the TrainConfig's lr)
    targets: Patterns = None  # layers to mask (None: Embeddings and fully connected layers, not the head)
    exclude: Patterns = None  # layers never masked

    def __post_init__(self) -> None:
        for name in ("score_lr", "margin") + (("head_lr",) if self.head_lr is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise bad_param(name, "a finite number > 0", value, "MaskConfig")
        for name in ("init_sparsity",) + (("sparsity",) if self.sparsity is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad_param(name, "a number in [0, 1)", value, "MaskConfig")
