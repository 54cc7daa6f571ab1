"""Pure tensor quantizers: ``weight -> QuantizedTensor`` (no nn.Module, no I/O)."""

from __future__ import annotations

from fewbits.quantize.base import QuantizedTensor, resolve_group_size
from fewbits.quantize.pack import pack, packed_nbytes, unpack

__all__ = ["QuantizedTensor", "pack", "packed_nbytes", "resolve_group_size", "unpack"]
