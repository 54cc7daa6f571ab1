"""fewbits: compress pretrained neural networks to a few bits per weight and measure the cost."""

from __future__ import annotations

from fewbits.errors import FewbitsError

__version__ = "0.1.0"

__all__ = ["FewbitsError", "__version__"]
