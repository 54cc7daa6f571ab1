"""The Codebook parametrization: rebuild, mean gradient, frozen codes, caching, state dicts."""

from __future__ import annotations

import copy

import pytest
import torch

from fewbits.errors import FewbitsTypeError, FewbitsValueError
from fewbits.nn import Codebook
from fewbits.quantize import QuantizedTensor


def test_rebuild_equals_dequantize_with_groups():
    torch.manual_seed(0)
    codes = torch.randint(0, 8, (6, 4), dtype=torch.uint8)
    codebook = torch.randn(3, 8)  # 3 groups of 8 consecutive weights
    cb = Codebook(codes, codebook, bits=3, scheme="kmeans")
    expected = QuantizedTensor(codes, codebook, 3, "kmeans").dequantize()
    assert torch.equal(cb(), expected)
    assert cb.group_size == 8 and cb.n_groups == 3 and cb.shape == (6, 4)


def test_gradient_is_mean_of_members_by_hand():
    # group 0 holds weights 0..3 with codes 0,1,1,3; group 1 holds weights 4..7 with codes 2,2,2,2
    codes = torch.tensor([0, 1, 1, 3, 2, 2, 2, 2], dtype=torch.uint8)
    cb = Codebook(codes, torch.zeros(2, 4), bits=2)
    upstream = torch.tensor([1.0, 2.0, 4.0, 8.0, 1.0, 3.0, 5.0, 7.0])
    (cb() * upstream).sum().backward()
    expected = torch.tensor([[1.0, (2 + 4) / 2, 0.0, 8.0],   # entry 2 of group 0 has no member: zero
                             [0.0, 0.0, (1 + 3 + 5 + 7) / 4, 0.0]])
    assert torch.equal(cb.codebook.grad, expected)
    assert torch.equal(cb.counts(), torch.tensor([[1, 2, 0, 1], [0, 0, 4, 0]]))


def test_training_moves_codebook_not_codes():
    torch.manual_seed(0)
    codes = torch.randint(0, 4, (5, 6), dtype=torch.uint8)
    cb = Codebook(codes, torch.randn(1, 4), bits=2)
    before_codes, before_book = cb.codes.clone(), cb.codebook.detach().clone()
    opt = torch.optim.SGD(cb.parameters(), lr=0.1)
    target = torch.randn(5, 6)
    for _ in range(3):
        opt.zero_grad()
        (cb() - target).pow(2).sum().backward()
        opt.step()
    assert torch.equal(cb.codes, before_codes)
    assert not torch.equal(cb.codebook.detach(), before_book)
    assert [n for n, _ in cb.named_parameters()] == ["codebook"]


def test_frozen_codebook_caches_until_it_changes():
    cb = Codebook(torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8), torch.tensor([[1.0, 2.0]]), bits=1)
    cb.requires_grad_(False)
    first = cb()
    assert cb() is first and not first.requires_grad
    with torch.no_grad():
        cb.codebook.add_(1.0)
    second = cb()
    assert second is not first and torch.equal(second, torch.tensor([[2.0, 3.0], [3.0, 2.0]]))
    second.mul_(0)  # a caller editing the returned tensor must not poison the cache
    assert torch.equal(cb(), torch.tensor([[2.0, 3.0], [3.0, 2.0]]))


def test_weight_cached_in_inference_mode_is_not_reused_for_training_a_mask_over_it():
    cb = Codebook(torch.tensor([0, 1, 1], dtype=torch.uint8), torch.tensor([[1.0, 2.0]]), bits=1)
    cb.requires_grad_(False)
    with torch.inference_mode():
        cb()
    scale = torch.ones(3, requires_grad=True)
    (cb() * scale).sum().backward()  # an inference tensor here would refuse to be saved for backward
    assert torch.equal(scale.grad, torch.tensor([1.0, 2.0, 2.0]))


def test_training_forward_is_fresh_and_differentiable_after_eval_cache():
    cb = Codebook(torch.tensor([0, 1, 1], dtype=torch.uint8), torch.tensor([[1.0, 2.0]]), bits=1)
    with torch.no_grad():
        cached = cb()
    out = cb()
    assert out.requires_grad and out is not cached


def test_load_state_dict_refreshes_gather_index():
    a = Codebook(torch.tensor([0, 0, 1, 1], dtype=torch.uint8), torch.tensor([[1.0, 2.0]]), bits=1)
    b = Codebook(torch.tensor([1, 0, 1, 0], dtype=torch.uint8), torch.tensor([[5.0, 7.0]]), bits=1)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(), torch.tensor([7.0, 5.0, 7.0, 5.0]))
    assert torch.equal(a.counts(), torch.tensor([[2, 2]]))


def test_deepcopy_is_independent():
    cb = Codebook(torch.tensor([0, 1], dtype=torch.uint8), torch.tensor([[1.0, 2.0]]), bits=1)
    with torch.no_grad():
        cb()
    twin = copy.deepcopy(cb)
    with torch.no_grad():
        twin.codebook.mul_(10)
    assert torch.equal(cb(), torch.tensor([1.0, 2.0])) and torch.equal(twin(), torch.tensor([10.0, 20.0]))


@pytest.mark.parametrize("codes, codebook, bits, error", [
    (torch.zeros(4, dtype=torch.int64), torch.zeros(1, 2), 1, FewbitsTypeError),
    (torch.zeros(4, dtype=torch.uint8), torch.zeros(1, 4), 1, FewbitsValueError),   # 2**bits columns
    (torch.zeros(4, dtype=torch.uint8), torch.zeros(3, 2), 1, FewbitsValueError),   # 3 groups for 4 codes
    (torch.full((4,), 2, dtype=torch.uint8), torch.zeros(1, 2), 1, FewbitsValueError),  # code >= 2**bits
    (torch.zeros(4, dtype=torch.uint8), torch.zeros(1, 2), 9, FewbitsValueError),
])
def test_rejects_inconsistent_inputs(codes, codebook, bits, error):
    with pytest.raises(error):
        Codebook(codes, codebook, bits)
