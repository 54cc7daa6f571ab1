"""The compact artifact: bit-packed codes, codebooks and uncompressed tensors in safetensors, plus a JSON manifest.

``save(model, dir)`` / ``load(dir)`` round-trip a compressed model bit-identically; ``describe(dir)``
accounts for every byte (``fewbits info DIR`` prints it). No pickle anywhere.
"""

from __future__ import annotations

from fewbits.io.artifact import load, load_tokenizer, save
from fewbits.io.format import FORMAT_VERSION, MANIFEST_FILE, TENSORS_FILE
from fewbits.io.summary import ArtifactSummary, LayerSize, describe

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "TENSORS_FILE", "ArtifactSummary", "LayerSize", "describe", "load",
           "load_tokenizer", "save"]
