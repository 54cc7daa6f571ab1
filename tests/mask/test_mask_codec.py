"""Mask codec: exact round trip, the smaller method chosen, sizes near the entropy, corrupt data refused."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits.errors import ArtifactError, FewbitsValueError
from fewbits.methods.mask.codec import EncodedMask, decode, encode, entropy_bits


def _round_trip(mask: torch.Tensor, method: str = "auto") -> EncodedMask:
    enc = encode(mask, method)
    out = decode(enc)
    assert out.dtype == torch.bool and out.shape == mask.shape
    assert torch.equal(out, mask)
    return enc


@pytest.mark.parametrize("method", ["auto", "bitpack", "rice", "runs"])
@pytest.mark.parametrize("p_keep", [0.0, 0.01, 0.5, 0.95, 0.999, 1.0])
def test_round_trip_random_masks(method, p_keep):
    gen = torch.Generator().manual_seed(1)
    _round_trip(torch.rand(37, 53, generator=gen) < p_keep, method)


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 0, 2), (2, 3, 4)])
def test_round_trip_edge_shapes(shape):
    for value in (True, False):
        _round_trip(torch.full(shape, value, dtype=torch.bool))
    if math.prod(shape):
        alternating = (torch.arange(math.prod(shape)) % 2 == 0).reshape(shape)
        _round_trip(alternating, "rice")
        _round_trip(alternating, "runs")


@settings(max_examples=150, deadline=None)
@given(bits=st.lists(st.booleans(), max_size=200), method=st.sampled_from(["auto", "bitpack", "rice", "runs"]))
def test_round_trip_any_bits(bits, method):
    _round_trip(torch.tensor(bits, dtype=torch.bool), method)


def test_structured_masks_sizes():
    n = 400 * 300
    ones = encode(torch.ones(400, 300, dtype=torch.bool))
    zeros = encode(torch.zeros(400, 300, dtype=torch.bool))
    assert ones.nbytes == 0 and zeros.nbytes == 0 and ones.method == zeros.method == "rice"
    # 95% ones, independent: Rice coding lands within 3% of the entropy (0.286 bits), far below 1 bit
    mask = torch.rand(400, 300, generator=torch.Generator().manual_seed(0)) < 0.95
    enc = _round_trip(mask)
    assert enc.method == "rice"
    assert entropy_bits(mask) <= enc.bits_per_weight <= 1.03 * entropy_bits(mask) + 16 / n
    # whole rows removed (structured): a handful of long runs
    rows = torch.ones(400, 300, dtype=torch.bool)
    rows[::10] = False
    enc = _round_trip(rows)
    assert enc.method == "runs" and enc.nbytes < 200


def test_auto_picks_the_smaller_and_bitpack_on_ties():
    dense = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    auto, rice, packed = encode(dense), encode(dense, "rice"), encode(dense, "bitpack")
    assert packed.nbytes == 125 and rice.nbytes >= packed.nbytes  # equal here: k = 0 codes every bit
    assert auto.method == "bitpack"
    sparse = torch.zeros(1000, dtype=torch.bool)
    sparse[[3, 500]] = True
    assert encode(sparse).method == "rice" and encode(sparse).nbytes < encode(sparse, "bitpack").nbytes


def test_rice_layout_is_fixed():
    # minority 0 at positions 1 and 4 of 8 ones/zeros: gaps 1 and 2; k = 0 -> unary "10" and "110"
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    enc = encode(mask, "rice")
    assert enc.params == {"k": 0, "minority": 0, "count": 2, "unary_bits": 5}
    assert enc.data.tolist() == [0b01101]  # bits 1,0,1,1,0 LSB first


def test_corrupt_data_is_refused():
    mask = torch.rand(500, generator=torch.Generator().manual_seed(2)) < 0.97
    enc = encode(mask, "rice")
    truncated = EncodedMask(enc.method, enc.shape, enc.data[:-1], enc.params)
    with pytest.raises(ArtifactError, match="bytes"):
        decode(truncated, "layer.weight")
    wrong_count = EncodedMask(enc.method, enc.shape, enc.data, dict(enc.params, count=enc.params["count"] + 1))
    with pytest.raises(ArtifactError):
        decode(wrong_count)
    with pytest.raises(ArtifactError, match="unknown method"):
        decode(EncodedMask("zip", enc.shape, enc.data, {}))
    runs = encode(mask, "runs")
    with pytest.raises(ArtifactError, match="bytes"):
        decode(EncodedMask("runs", runs.shape, runs.data[:-1], runs.params))
    with pytest.raises(ArtifactError, match="out of range"):
        decode(EncodedMask("runs", runs.shape, runs.data, dict(runs.params, unary_bits=10**6)))
    packed = encode(mask, "bitpack")
    with pytest.raises(ArtifactError, match="expected 63"):
        decode(EncodedMask("bitpack", packed.shape, packed.data[:-1], {}))
    with pytest.raises(ArtifactError, match="lack"):
        decode(EncodedMask("rice", enc.shape, enc.data, {"k": 1}))


def test_bad_inputs():
    with pytest.raises(FewbitsValueError, match="'method'"):
        encode(torch.ones(3, dtype=torch.bool), "huffman")
    with pytest.raises(FewbitsValueError, match="'mask'"):
        encode(torch.tensor([0.0, 1.0]))
    with pytest.raises(FewbitsValueError, match="'mask'"):
        encode(torch.tensor([0, 2]))
    assert torch.equal(decode(encode(torch.tensor([0, 1, 1]))), torch.tensor([False, True, True]))


def test_runs_layout_is_fixed():
    # runs 1,1,2,1 -> lengths-1 = 0,0,1,0; k_first = k_second = 0 -> unary "0","0","10","0"
    mask = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    enc = encode(mask, "runs")
    assert enc.params == {"first": 1, "count": 4, "k_first": 0, "k_second": 0, "unary_bits": 5}
    assert enc.data.tolist() == [0b00100]
