"""Inference from packed codes: layers that hold a weight as the artifact stores it and compute from it.

``to_runtime(model)`` turns a compressed model (Codebook parametrizations, the training representation)
into packed layers; ``to_training(model)`` turns it back; ``tensor_bytes(model)`` is what it holds;
``load_kernels()`` loads the compiled decoders up front (a server's start-up, once per process).
"""

from __future__ import annotations

from fewbits.runtime.convert import install, pack_layer, packed_class, tensor_bytes, to_runtime, to_training
from fewbits.runtime.kernels import load_all as load_kernels
from fewbits.runtime.modules import PackedConv, PackedConv1D, PackedEmbedding, PackedLayer, PackedLinear
from fewbits.runtime.packed import PackedWeight

__all__ = ["PackedConv", "PackedConv1D", "PackedEmbedding", "PackedLayer", "PackedLinear", "PackedWeight",
           "install", "load_kernels", "pack_layer", "packed_class", "tensor_bytes", "to_runtime", "to_training"]
