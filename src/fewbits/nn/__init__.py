"""Weight re-parametrizations for whole models: codebook quantization, target selection, optimizer groups.

``compress(model, scheme, bits)`` puts a :class:`Codebook` on every target weight (in place);
``decompress(model)`` bakes the rebuilt weights back into plain parameters; ``param_groups`` gives
the codebooks their own learning rate for centroid fine-tuning.
"""

from __future__ import annotations

from fewbits.nn.codebook import Codebook
from fewbits.nn.compress import LayerReport, codebook_modules, compress, decompress, param_groups
from fewbits.nn.targets import (
    candidate_names,
    default_targets,
    find_parametrizations,
    head_names,
    matching_names,
    register_weight_parametrization,
    remove_weight_parametrizations,
    select_targets,
)

__all__ = [
    "Codebook",
    "LayerReport",
    "candidate_names",
    "codebook_modules",
    "compress",
    "decompress",
    "default_targets",
    "find_parametrizations",
    "head_names",
    "matching_names",
    "param_groups",
    "register_weight_parametrization",
    "remove_weight_parametrizations",
    "select_targets",
]
