"""The artifact container: every method's model saved as one directory (manifest + safetensors), read back
strictly. ``fewbits.save`` / ``fewbits.load`` round-trip a compressed model bit-identically;
``describe(dir)`` accounts for every byte (``fewbits info DIR`` prints it). No pickle anywhere.
"""

from __future__ import annotations

from fewbits.io.container import Artifact, load, read_artifact, save
from fewbits.io.format import FORMAT_VERSION, MANIFEST_FILE, TENSORS_FILE
from fewbits.io.summary import ArtifactSummary, LayerSize, MaskLayerSize, MaskSummary, describe

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "TENSORS_FILE", "Artifact", "ArtifactSummary", "LayerSize",
           "MaskLayerSize", "MaskSummary", "describe", "load", "read_artifact", "save"]
