"""The QAT method's settings: weight and activation bits and which layers (QATConfig), and the regularizer
of the second training phase (RegularizerConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewbits.errors import bad_param
from fewbits.methods.config import MethodConfig
from fewbits.quantize.base import MAX_BITS

FULL_PRECISION = 32
REGULARIZERS = ("ste", "msqe", "fisher", "kd")
FISHER_SOURCES = ("adam", "true")


def check_qat_bits(bits: object, name: str, owner: str = "prepare_qat") -> int:
    """``bits`` if it is an int in [1, MAX_BITS] or 32 (full precision), else the template error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= MAX_BITS or bits == FULL_PRECISION):
        raise bad_param(name, f"an int in [1, {MAX_BITS}] or {FULL_PRECISION} (full precision)", bits, owner)
    return bits


def _check_number(value: object, name: str, owner: str, *, low: float, strict: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value < float("inf") \
        and (value > low if strict else value >= low)
    if not ok:
        raise bad_param(name, f"a finite float {'>' if strict else '>='} {low:g}", value, owner)


@dataclass(frozen=True)
class QATConfig(MethodConfig):
    """How a model is prepared for QAT: enough to rebuild it before loading a checkpoint (JSON-able).

    ``wbits``/``abits``: weight and input bits of every target layer (32: full precision);
    ``per_channel``/``symmetric``: the weight grid; ``keep_first_last``: leave the first and last
    layers at full precision; ``layers`` is filled by ``prepare_qat`` with the quantized layers.
    """

    method = "qat"
    version = 1

    wbits: int
    abits: int = FULL_PRECISION
    per_channel: bool = True
    symmetric: bool = True
    keep_first_last: bool = True
    targets: str | list[str] | None = None
    exclude: str | list[str] | None = None
    layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_qat_bits(self.wbits, "wbits", "QATConfig")
        check_qat_bits(self.abits, "abits", "QATConfig")
        for name in ("keep_first_last", "per_channel", "symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise bad_param(name, "a bool", getattr(self, name), "QATConfig")

    def to_dict(self) -> dict:
        """Plain data (without the method tags: the ``spec`` field of ``qat.json`` files)."""
        data = super().to_dict()
        del data["method"], data["version"]
        return data


@dataclass(frozen=True)
class RegularizerConfig:
    """The regularizer of QAT's second phase and its settings (plain data, stored in ``qat.json``).

    ``method``: ``ste`` (no regularizer, STE training goes on), ``msqe``, ``fisher`` or ``kd``.
    ``lam``: the regularizer's weight. ``temperature`` and ``t2_scaling``: KD's softmax temperature
    and its ``T**2`` factor. ``fisher``: ``adam`` (Adam's ``v_hat`` at the end of the STE phase)
    or ``true`` (labels sampled from the model, ``true_fisher_examples`` training examples).
    ``fisher_normalize``: divide F by its mean so ``lam`` is on MSQE's scale.
    """

    method: str = "ste"
    lam: float = 1.0
    temperature: float = 4.0
    t2_scaling: bool = True
    fisher: str = "adam"
    fisher_normalize: bool = False
    true_fisher_examples: int = 256

    def __post_init__(self) -> None:
        if self.method not in REGULARIZERS:
            raise bad_param("method", f"one of {list(REGULARIZERS)}", self.method, "RegularizerConfig")
        if self.fisher not in FISHER_SOURCES:
            raise bad_param("fisher", "'adam' or 'true'", self.fisher, "RegularizerConfig")
        _check_number(self.lam, "lam", "RegularizerConfig", low=0, strict=False)
        _check_number(self.temperature, "temperature", "RegularizerConfig", low=0, strict=True)
        if isinstance(self.true_fisher_examples, bool) or not isinstance(self.true_fisher_examples, int) \
                or self.true_fisher_examples < 1:
            raise bad_param("true_fisher_examples", "a positive int", self.true_fisher_examples, "RegularizerConfig")
