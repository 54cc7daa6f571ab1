"""Weight re-parametrizations (Codebook, STE, Mask, activation fake quantization) and target selection.

The methods that put them on whole models live in :mod:`fewbits.methods` (``compress`` is
:func:`fewbits.methods.codebook.compress`).
"""

from __future__ import annotations

from fewbits.nn.codebook import Codebook
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
    "candidate_names",
    "default_targets",
    "find_parametrizations",
    "head_names",
    "matching_names",
    "register_weight_parametrization",
    "remove_weight_parametrizations",
    "select_targets",
]
