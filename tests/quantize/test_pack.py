"""Bit packing: exact size and exact round trip for every bit width."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits.errors import FewbitsValueError
from fewbits.quantize import pack, packed_nbytes, unpack


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_round_trip_and_size(bits, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(len(values), bits) == -(-len(values) * bits // 8)
    assert torch.equal(unpack(packed, bits, len(values)), codes)


def test_pack_known_layout_lsb_first():
    # 2-bit codes 1, 2, 3 -> 0b00_11_10_01 = 57; 3-bit codes 5, 6, 7 -> bits 101 011 111 (LSB first)
    assert pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 2).tolist() == [57]
    assert pack(torch.tensor([5, 6, 7], dtype=torch.uint8), 3).tolist() == [0b11110101, 0b1]


def test_pack_rejects_codes_out_of_range_and_bad_bits():
    with pytest.raises(FewbitsValueError, match="2\\*\\*bits"):
        pack(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="'bits'"):
        pack(torch.tensor([1], dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="bytes"):
        unpack(torch.zeros(3, dtype=torch.uint8), 3, 100)
