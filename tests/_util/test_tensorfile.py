"""Tensors read from a safetensors file as views of the one buffer it was read into."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from fewbits._util.tensorfile import parse_header, tensor_views


def _views(data: bytearray) -> dict[str, torch.Tensor]:
    entries, header_bytes = parse_header(data, Path("x.safetensors"))
    return tensor_views(data, entries, header_bytes)


def test_views_equal_the_saved_tensors_and_share_the_buffer() -> None:
    tensors = {"weight": torch.randn(3, 5), "codes": torch.randint(0, 256, (7,), dtype=torch.uint8),
               "index": torch.arange(4), "empty": torch.empty(0, 3), "flags": torch.tensor([True, False])}
    data = bytearray(save(tensors))
    views = _views(data)
    start = np.frombuffer(data, np.uint8).ctypes.data
    for name, tensor in tensors.items():
        assert views[name].dtype == tensor.dtype and torch.equal(views[name], tensor), name
        if tensor.numel():
            assert start <= views[name].data_ptr() < start + len(data), name  # a view, not a copy
    views["weight"][0, 0] = 7.0
    assert _views(data)["weight"][0, 0] == 7.0  # writes land in the one buffer


def test_a_misaligned_tensor_is_copied_aligned() -> None:
    header = json.dumps({"byte": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "value": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}}).encode()
    header += b" " * (-len(header) % 8)
    data = bytearray(struct.pack("<Q", len(header)) + header + b"\x09" + struct.pack("<f", 2.5))
    views = _views(data)
    assert views["byte"].tolist() == [9] and views["value"].tolist() == [2.5]
    assert views["value"].data_ptr() % 4 == 0
