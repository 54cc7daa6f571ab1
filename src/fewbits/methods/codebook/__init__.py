"""Codebook quantization: codes + a trainable codebook per group on every target weight.

``compress(model, scheme, bits)`` (or ``fewbits.methods.apply(model, CodebookConfig(...))``) puts a
:class:`~fewbits.nn.Codebook` on every target weight, in place; ``decompress(model)`` bakes the
rebuilt weights back into plain parameters; ``param_groups`` gives the codebooks their own learning
rate for centroid fine-tuning; ``plan_bits(model, 2.5)`` chooses each layer's bits under an average
budget (mixed precision).
"""

from __future__ import annotations

from fewbits.methods.base import Method
from fewbits.methods.codebook import serialize
from fewbits.methods.codebook.apply import LayerReport, apply, codebook_modules, compress, decompress, param_groups
from fewbits.methods.codebook.config import CodebookConfig
from fewbits.methods.codebook.mixed import BitPlan, plan_bits, replan

METHOD = Method("codebook", CodebookConfig, apply, serialize.write, serialize.check, serialize.read, fills_base=True,
                fit=serialize.fit)

__all__ = ["METHOD", "BitPlan", "CodebookConfig", "LayerReport", "apply", "codebook_modules", "compress",
           "decompress", "param_groups", "plan_bits", "replan"]
