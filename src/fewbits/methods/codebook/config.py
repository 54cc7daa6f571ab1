"""The codebook method's settings: which quantizer, how many bits, how weights are grouped, which layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fewbits.errors import bad_param
from fewbits.methods.config import MethodConfig
from fewbits.nn.targets import Patterns
from fewbits.quantize import SCHEMES
from fewbits.quantize.base import MAX_BITS, check_bits
from fewbits.quantize.outliers import check_outlier_fraction, check_selection


@dataclass(frozen=True)
class CodebookConfig(MethodConfig):
    """Codes + a codebook per group on every target weight (``fewbits.methods.apply(model, config)``).

    ``scheme``: one of ``fewbits.quantize.SCHEMES``; ``groups``/``group_size`` as in the quantizers
    (``groups=128``: group-wise); ``targets``/``exclude``: see :mod:`fewbits.nn.targets`;
    ``options``: keywords of the scheme (``max_iter`` for kmeans, ``mode`` for optimal).
    ``bits``: one width, or a dict from layer names to widths (mixed precision, e.g. ``plan_bits(...).bits``);
    ``outliers``: the fraction of each layer's weights kept exact beside its codebook, chosen by
    ``outlier_selection`` (``"magnitude"`` or ``"error"``).
    """

    method = "codebook"
    version = 1

    scheme: str = "kmeans"
    bits: int | dict[str, int] = 4
    groups: int | str | None = None
    group_size: int | None = None
    targets: Patterns = None
    exclude: Patterns = None
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)
    outliers: float = 0.0
    outlier_selection: str = "magnitude"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise bad_param("scheme", f"one of {sorted(SCHEMES)}", self.scheme, "CodebookConfig")
        for b in self.bits.values() if isinstance(self.bits, dict) else [self.bits]:
            check_bits(b, "CodebookConfig", MAX_BITS)
        check_outlier_fraction(self.outliers, "CodebookConfig")
        check_selection(self.outlier_selection, "CodebookConfig")
        if not isinstance(self.options, dict):
            raise bad_param("options", "a dict of the scheme's keywords", self.options, "CodebookConfig")
