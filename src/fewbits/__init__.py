"""fewbits: compress pretrained neural networks to a few bits per weight and measure the cost.

The main entry points are imported on first use, so ``import fewbits`` (and the CLI) stays fast::

    reports = fewbits.compress(model, "kmeans", bits=3)   # in place: codes + trainable codebooks
    fewbits.save(model, "out/model-3bit")                 # packed codes, codebooks, manifest
    model = fewbits.load("out/model-3bit")                # bit-identical outputs
    fewbits.describe("out/model-3bit").bits_per_weight    # true size, as `fewbits info` prints it
    fewbits.decompress(model)                             # plain weights again, for any runtime

Every method (codebook, qat, mask) is also a config applied by one entry point,
``fewbits.apply(model, CodebookConfig(scheme="kmeans", bits=3))``, and every artifact, whatever its
method, loads with ``fewbits.load``.
"""

from __future__ import annotations

import importlib
from typing import Any

from fewbits.errors import FewbitsError

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "compress": "fewbits.methods.codebook",
    "decompress": "fewbits.methods.codebook",
    "plan_bits": "fewbits.methods.codebook",
    "apply": "fewbits.methods.registry",
    "prepare_qat": "fewbits.methods.qat",
    "save": "fewbits.io",
    "load": "fewbits.loading",
    "load_tokenizer": "fewbits.loading",
    "describe": "fewbits.io",
}

__all__ = ["FewbitsError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewbits' has no attribute {name!r}")
