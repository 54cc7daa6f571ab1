"""Binary masks over frozen weights (fine-tuning by sparsification): one mask and head per task.

``fewbits.methods.apply(model, MaskConfig(...))`` masks the target weights (over any codebook) and
freezes everything but the scores and the head; :mod:`~fewbits.methods.mask.codec` codes masks
losslessly; a trained mask is saved with ``fewbits.save(model, dir, base=...)`` and read back over
its base by ``fewbits.load(dir, base=...)``. The protocol (base -> mask) is :mod:`fewbits.protocols.mask`.
"""

from __future__ import annotations

from fewbits.methods.base import Method
from fewbits.methods.mask import serialize
from fewbits.methods.mask.apply import apply, head_keys, new_head
from fewbits.methods.mask.config import MaskConfig
from fewbits.methods.mask.training import mask_param_groups

METHOD = Method("mask", MaskConfig, apply, serialize.write, serialize.check, serialize.read, fit=serialize.fit)

__all__ = ["METHOD", "MaskConfig", "apply", "head_keys", "mask_param_groups", "new_head"]
