"""Quantization-aware training: STE weights, learned-step input quantizers, second-phase regularizers.

``prepare_qat(model, wbits, abits)`` (or ``fewbits.methods.apply(model, QATConfig(...))``) prepares a
model in place; :mod:`~fewbits.methods.qat.training` holds the loss terms (MSQE, Fisher, KD);
a trained model is saved with ``fewbits.save(model, dir, config=...)`` and read by ``fewbits.load``
with its activation quantizers. The two-phase protocol is :mod:`fewbits.protocols.qat`.
"""

from __future__ import annotations

from fewbits.methods.base import Method
from fewbits.methods.qat import serialize
from fewbits.methods.qat.apply import apply, prepare_qat, qat_targets
from fewbits.methods.qat.config import FULL_PRECISION, REGULARIZERS, QATConfig, RegularizerConfig

METHOD = Method("qat", QATConfig, apply, serialize.write, serialize.check, serialize.read, fills_base=True,
                fit=serialize.fit)

__all__ = ["FULL_PRECISION", "METHOD", "REGULARIZERS", "QATConfig", "RegularizerConfig", "apply", "prepare_qat",
           "qat_targets"]
