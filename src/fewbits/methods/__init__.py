"""Compression methods, one folder each (codebook, qat, mask), and the registry that names them.

Every method folder holds the same files: ``config.py`` (its settings, a validated dataclass with
``to_dict``/``from_dict`` and a version), ``apply.py`` (the transform), ``training.py`` (what it adds
to training, if anything) and ``serialize.py`` (its tensors in and out of the artifact container).
``fewbits.methods.registry.apply(model, config)`` applies any of them.
"""

from __future__ import annotations

from fewbits.methods.base import Method, Saved, Stored

__all__ = ["Method", "Saved", "Stored"]
