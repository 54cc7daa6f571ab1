"""Honest sizes of an artifact: per layer, everything uncompressed, headers, and the ratio to FP32.

The theory of a compressed model's size is ``codes (n * bits / 8 bytes per layer) + codebooks +
uncompressed tensors``; an artifact adds only headers (the safetensors header, the manifest and the
base model's config). Tokenizer files are counted apart: they are not part of the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewbits._util.tensorfile import TensorEntry
from fewbits.io.container import Artifact, read_artifact
from fewbits.io.format import CONFIG_FILE


@dataclass(frozen=True)
class LayerSize:
    """One compressed layer: its codes, codebook and outlier bytes, and bits per weight including them."""

    name: str
    shape: tuple[int, ...]
    bits: int
    scheme: str
    n_groups: int
    code_bytes: int
    codebook_bytes: int
    tied: tuple[str, ...]
    outliers: int = 0  # weights kept exact beside the codebook
    outlier_bytes: int = 0  # their positions and values

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        """``8 * (codes + codebook + outliers) / weights``: what this layer truly costs per weight."""
        return 8 * (self.code_bytes + self.codebook_bytes + self.outlier_bytes) / self.numel


@dataclass(frozen=True)
class ArtifactSummary:
    """Sizes of an artifact directory (see :func:`describe`); all sizes in bytes."""

    directory: Path
    format_version: int
    fewbits_version: str
    base: dict[str, Any]
    codebook_dtype: str
    layers: list[LayerSize]
    uncompressed_values: int  # values of every tensor stored as is (biases, norms, head, buffers)
    uncompressed_bytes: int
    fp32_uncompressed_bytes: int  # the same tensors with every floating-point value at 4 bytes
    header_bytes: int  # safetensors header + manifest + base model config
    tokenizer_bytes: int

    @property
    def compressed_weights(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def theory_bytes(self) -> int:
        """Codes at n * bits / 8 (per layer, rounded up to a byte) + codebooks + outliers + uncompressed tensors."""
        return sum(layer.code_bytes + layer.codebook_bytes + layer.outlier_bytes for layer in self.layers) \
            + self.uncompressed_bytes

    @property
    def total_bytes(self) -> int:
        """What the model takes on disk: the theory plus headers (tokenizer files excluded)."""
        return self.theory_bytes + self.header_bytes

    @property
    def parameters(self) -> int:
        """Every stored value: compressed weights and uncompressed tensors."""
        return self.compressed_weights + self.uncompressed_values

    @property
    def bits_per_weight(self) -> float:
        """``8 * total_bytes / parameters``: codebooks, uncompressed tensors and headers included."""
        return 8 * self.total_bytes / self.parameters if self.parameters else 0.0

    @property
    def fp32_bytes(self) -> int:
        """The same model with every floating-point value at 32 bits (no header)."""
        return 4 * self.compressed_weights + self.fp32_uncompressed_bytes

    @property
    def ratio(self) -> float:
        """How many times smaller than FP32 (``fp32_bytes / total_bytes``)."""
        return self.fp32_bytes / self.total_bytes

    def sizes(self) -> dict[str, Any]:
        """The one size record every protocol, command, stage and benchmark writes for a saved model."""
        return {"artifact_bytes": self.total_bytes, "theory_bytes": self.theory_bytes,
                "fp32_bytes": self.fp32_bytes, "bits_per_weight": self.bits_per_weight, "ratio_to_fp32": self.ratio}

    @property
    def overhead(self) -> float:
        """Fraction above the theory (``total_bytes / theory_bytes - 1``)."""
        return self.total_bytes / self.theory_bytes - 1 if self.theory_bytes else 0.0


@dataclass(frozen=True)
class MaskLayerSize:
    """One stored mask: its shape, kept weights, coding method and encoded bytes."""

    name: str
    shape: tuple[int, ...]
    kept: int
    method: str
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's weights the mask removes."""
        return 1 - self.kept / self.numel if self.numel else 0.0

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class MaskSummary:
    """Sizes of a task artifact (see :func:`describe_mask`); all sizes in bytes."""

    directory: Path
    base_sha256: str
    base_source: str
    info: dict
    layers: list[MaskLayerSize]
    head_values: int
    head_bytes: int
    header_bytes: int  # safetensors header + manifest

    @property
    def weights(self) -> int:
        """Weights covered by a mask."""
        return sum(layer.numel for layer in self.layers)

    @property
    def mask_bytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of the masked weights removed."""
        return 1 - sum(layer.kept for layer in self.layers) / self.weights if self.weights else 0.0

    @property
    def mask_bits_per_weight(self) -> float:
        """Encoded mask bits per masked weight (a plain bitmask is 1.0)."""
        return 8 * self.mask_bytes / self.weights if self.weights else 0.0

    @property
    def total_bytes(self) -> int:
        return self.mask_bytes + self.head_bytes + self.header_bytes


def _describe_mask(artifact: Artifact) -> MaskSummary:
    data, entries = artifact.data, artifact.entries
    layers = [MaskLayerSize(name, tuple(layer["shape"]), layer["kept"], layer["method"], entries[f"mask.{name}"].nbytes)
              for name, layer in data["masks"].items()]
    head = [entries[f"head.{key}"] for key in data["head"]]
    return MaskSummary(artifact.directory, artifact.base["sha256"], artifact.base.get("source", ""),
                       data.get("info", {}), layers, sum(math.prod(e.shape) for e in head),
                       sum(e.nbytes for e in head), artifact.header_bytes + artifact.manifest_bytes)


def describe(directory: str | os.PathLike | Artifact) -> ArtifactSummary | MaskSummary:
    """Read and verify an artifact (manifest, checksums, header) and account for every byte.

    A task mask gives a :class:`MaskSummary`, any other artifact an :class:`ArtifactSummary`.
    Example: ``s = describe("out/minilm-4bit"); print(s.bits_per_weight, s.ratio)``.
    """
    artifact = directory if isinstance(directory, Artifact) else read_artifact(directory)
    if artifact.method == "mask":
        return _describe_mask(artifact)
    entries, data = artifact.entries, artifact.data
    layers = [
        LayerSize(name, tuple(layer["shape"]), layer["bits"], layer["scheme"], layer["n_groups"],
                  entries[f"codes.{name}"].nbytes, entries[f"codebook.{name}"].nbytes, tuple(layer["tied"]),
                  layer.get("outliers", 0), sum(entries[f"{kind}.{name}"].nbytes for kind in
                                                ("outlier_index", "outlier_values") if layer.get("outliers")))
        for name, layer in data["layers"].items()
    ]
    plain: list[TensorEntry] = [e for n, e in entries.items() if n.startswith("state.")]
    header = artifact.header_bytes + artifact.manifest_bytes + len(artifact.files.get(CONFIG_FILE, b""))
    tokenizer = sum(len(artifact.files[f]) for f in artifact.tokenizer_files if f in artifact.files)
    return ArtifactSummary(
        directory=artifact.directory, format_version=artifact.format_version,
        fewbits_version=artifact.fewbits_version, base=artifact.base,
        codebook_dtype=data["codebook_dtype"], layers=layers,
        uncompressed_values=sum(math.prod(e.shape) for e in plain),
        uncompressed_bytes=sum(e.nbytes for e in plain),
        fp32_uncompressed_bytes=sum(4 * math.prod(e.shape) if e.dtype.is_floating_point else e.nbytes for e in plain),
        header_bytes=header, tokenizer_bytes=tokenizer,
    )
