"""The packed run-time: outputs equal to the training representation, bytes held, conversions both ways."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fewbits
from fewbits.errors import FewbitsTypeError, FewbitsValueError
from fewbits.methods.codebook import codebook_modules
from fewbits.nn import Codebook
from fewbits.nn.activations import activation_quantizers, add_activation_quantizer
from fewbits.nn.mask import apply_mask
from fewbits.quantize.pack import pack, packed_nbytes
from fewbits.runtime import (PackedConv, PackedConv1D, PackedEmbedding, PackedLinear, PackedWeight, install, modules,
                             tensor_bytes, to_runtime, to_training)


class Layers(nn.Module):
    """Embedding -> Linear (odd widths: spans not on whole bytes) -> Conv1d -> Conv2d -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 12, padding_idx=0)
        self.odd = nn.Linear(12, 20)
        self.conv1d = nn.Conv1d(5, 6, 3, padding=1, padding_mode="circular")
        self.conv2d = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 3, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (N, 6)
        h = torch.tanh(self.odd(self.embed(ids)))  # (N, 6, 20)
        h = torch.tanh(self.conv1d(h.transpose(1, 2)[:, :5]))  # (N, 5, 6) -> (N, 6, 6)
        h = torch.tanh(self.conv2d(h.unsqueeze(1).expand(-1, 6, -1, -1)))  # (N, 4, 3, 3)
        return self.head(h.flatten(1)[:, :16])


def _inputs() -> torch.Tensor:
    return torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(1))


def _compressed(bits: int, groups: int | str | None, scheme: str = "kmeans") -> nn.Module:
    torch.manual_seed(0)
    model = Layers().eval()
    fewbits.compress(model, scheme, bits, groups=groups, targets=["embed", "odd", "conv1d", "conv2d", "head"])
    return model


@pytest.mark.parametrize("groups", [None, 6, "channel"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_runtime_outputs_equal_training_bit_for_bit(bits: int, groups: int | str | None) -> None:
    model = _compressed(bits, groups)
    ids = _inputs()
    with torch.no_grad():
        expected = model(ids)
        runtime = to_runtime(copy.deepcopy(model))
        assert torch.equal(runtime(ids), expected)
    kinds = {type(m) for m in runtime.modules()}
    assert {PackedEmbedding, PackedLinear, PackedConv} <= kinds and not codebook_modules(runtime)


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_tiled_linear_within_the_float32_dot_product_bound(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A narrow tile may make BLAS sum in another order: each result lies within K*eps*sum|w*x| of the exact
    product, so the two within twice that (the stated tolerance of tiled layers; whole layers are exact)."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(64, 50))
    fewbits.compress(lin, "kmeans", bits, groups=10, targets=["0"])
    x = torch.randn(7, 64)
    with torch.no_grad():
        expected = lin(x)
        packed = to_runtime(copy.deepcopy(lin))
        assert torch.equal(packed(x), expected)
        monkeypatch.setattr(modules, "TILE_BYTES", 64 * 4 * 8)  # 8 rows per tile, 7 tiles, the last one short
        bound = 2 * 64 * torch.finfo(torch.float32).eps * (x.abs() @ lin[0].weight.abs().T + lin[0].bias.abs())
        assert ((packed(x) - expected).abs() <= bound).all()


def test_hf_conv1d_and_tied_weights() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    fewbits.compress(gpt, "kmeans", 3, targets=["wte", "c_attn", "c_proj", "c_fc", "lm_head"])
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        expected = gpt(ids).logits
        runtime = to_runtime(copy.deepcopy(gpt))
        assert torch.equal(runtime(ids).logits, expected)
    assert isinstance(runtime.transformer.h[0].attn.c_attn, PackedConv1D)
    assert runtime.lm_head.packed_weight is runtime.transformer.wte.packed_weight
    back = to_training(runtime)
    found = codebook_modules(back)
    assert found["lm_head"][1] is found["transformer.wte"][1]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, expected)


def test_bytes_held_are_the_packed_codes_and_codebooks() -> None:
    model = _compressed(3, 2)
    runtime = to_runtime(copy.deepcopy(model))
    weights = {"embed": 40 * 12, "odd": 20 * 12, "conv1d": 6 * 5 * 3, "conv2d": 4 * 6 * 9, "head": 3 * 16}
    biases = 20 + 6 + 4
    expected = sum(packed_nbytes(n, 3) + 2 * 8 * 4 for n in weights.values()) + 4 * biases
    assert tensor_bytes(runtime) == expected
    assert tensor_bytes(model) > sum(weights.values())  # one uint8 code per weight, and more


def test_round_trip_to_training_restores_trainable_codebooks() -> None:
    model = _compressed(4, None)
    ids = _inputs()
    with torch.no_grad():
        expected = model(ids)
    back = to_training(to_runtime(copy.deepcopy(model)))
    assert list(back.state_dict()) == list(model.state_dict())
    found = codebook_modules(back)
    assert set(found) == set(codebook_modules(model))
    for name, (_, cb) in found.items():
        assert cb.codebook.requires_grad and torch.equal(cb.codes, codebook_modules(model)[name][1].codes)
    assert torch.equal(back(ids), expected)  # with gradients enabled: the training path
    back.head.parametrizations.weight[0].codebook.sum().backward()


def test_gradient_to_inputs_matches_training_path() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(16, 8))
    fewbits.compress(lin, "kmeans", 2, targets=["0"])
    x = torch.randn(3, 16, requires_grad=True)
    lin[0].parametrizations.weight[0].codebook.requires_grad_(False)
    lin(x).square().sum().backward()
    expected = x.grad.clone()
    x.grad = None
    to_runtime(copy.deepcopy(lin))(x).square().sum().backward()
    assert torch.equal(x.grad, expected)


def test_layers_the_runtime_cannot_compute_stay_as_they_are() -> None:
    model = _compressed(2, None)
    apply_mask(model, targets=["odd"])
    runtime = to_runtime(model)
    assert "odd" in codebook_modules(runtime) and isinstance(runtime.head, PackedLinear)


def test_activation_quantizer_moves_with_the_layer() -> None:
    model = _compressed(4, None)
    add_activation_quantizer(model.odd, 4)
    ids = _inputs()
    with torch.no_grad():
        expected = model(ids)
        runtime = to_runtime(model)
        assert "odd" in activation_quantizers(runtime)
        assert torch.equal(runtime(ids), expected)


def test_embedding_rejects_ids_out_of_range() -> None:
    runtime = to_runtime(_compressed(2, None))
    with pytest.raises(IndexError, match=r"\[0, 40\)"):
        runtime.embed(torch.tensor([[3, 40]]))


def test_weight_property_decodes_and_half_precision_follows() -> None:
    model = _compressed(3, 6)
    expected = model.odd.weight.detach().clone()
    runtime = to_runtime(copy.deepcopy(model))
    assert torch.equal(runtime.odd.weight, expected)
    runtime.half()
    assert runtime.odd.weight.dtype == torch.float16 and torch.equal(runtime.odd.weight, expected.half())


def test_packed_weight_rejects_bad_inputs() -> None:
    codes = pack(torch.zeros(12, dtype=torch.uint8), 2)
    with pytest.raises(FewbitsValueError, match="'packed'"):
        PackedWeight(codes[:-1], torch.zeros(1, 4), (3, 4), 2)
    with pytest.raises(FewbitsValueError, match="'codebook'"):
        PackedWeight(codes, torch.zeros(5, 4), (3, 4), 2)
    with pytest.raises(FewbitsValueError, match="'bits'"):
        PackedWeight(codes, torch.zeros(1, 4), (3, 4), 9)
    with pytest.raises(FewbitsTypeError, match="torch.nn.Module"):
        to_runtime("model")


def test_from_codebook_round_trip() -> None:
    codes = torch.randint(0, 32, (7, 9), dtype=torch.uint8)
    cb = Codebook(codes, torch.randn(3, 32), 5)
    packed = PackedWeight.from_codebook(cb)
    assert packed.codes.numel() == packed_nbytes(63, 5)
    assert torch.equal(packed.decode(), cb().detach())
    assert torch.equal(packed.to_codebook().codes, codes)


@pytest.mark.parametrize("groups", [1, 2, 64])
@pytest.mark.parametrize("bits", range(1, 9))
def test_long_spans_decode_through_the_tables_bit_for_bit(bits: int, groups: int) -> None:
    """Spans of >= 2048 codes (1, 2, 4 bits) and >= 65536 (3, 6 bits) take the table paths; 64 groups do not."""
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (256, 520), dtype=torch.uint8, generator=generator)
    cb = Codebook(codes, torch.randn(groups, 1 << bits, generator=generator), bits)
    packed = PackedWeight.from_codebook(cb)
    expected = cb().detach()
    assert torch.equal(packed.decode(), expected)
    buffer = torch.empty(256 * 520)
    assert torch.equal(packed.decode_rows(37, 201, buffer), expected[37:201])
    assert torch.equal(packed.decode_rows_at(torch.tensor([255, 0, 17])), expected[[255, 0, 17]])


def test_install_fills_a_meta_skeleton_bit_for_bit() -> None:
    from accelerate import init_empty_weights

    model = _compressed(4, 6)
    ids = _inputs()
    with torch.no_grad():
        expected = model(ids)
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    with init_empty_weights(include_buffers=False):
        skeleton = Layers()
    skeleton.load_state_dict(state, strict=False, assign=True)
    for name, (_, cb) in codebook_modules(model).items():
        skeleton = install(skeleton, [name], PackedWeight.from_codebook(cb))
    assert not any(t.is_meta for t in skeleton.state_dict().values())
    with torch.no_grad():
        assert torch.equal(skeleton.eval()(ids), expected)


def test_install_falls_back_to_a_codebook_for_other_layers() -> None:
    deconv = nn.Sequential(nn.ConvTranspose1d(2, 3, 3))
    fewbits.compress(deconv, "kmeans", 2, targets=["0"])
    x = torch.randn(1, 2, 5)
    with torch.no_grad():
        expected = deconv(x)
    packed = PackedWeight.from_codebook(deconv[0].parametrizations.weight[0])
    fresh = nn.Sequential(nn.ConvTranspose1d(2, 3, 3))
    fresh[0].bias.data.copy_(deconv[0].bias)
    fresh = install(fresh, ["0"], packed)
    assert isinstance(fresh[0].parametrizations.weight[0], Codebook)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_load_holds_the_tensors_file_once(tmp_path) -> None:
    from fewbits.models.hf import tiny_bert

    torch.manual_seed(0)
    model, _ = tiny_bert(2)
    fewbits.compress(model.eval(), "kmeans", 3)
    folder = fewbits.save(model, tmp_path / "a")
    loaded = fewbits.load(folder)
    data = {name: t for name, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.numel()}
    file_bytes = (folder / "fewbits.safetensors").stat().st_size
    assert tensor_bytes(loaded) <= file_bytes  # views of the one buffer the file was read into, no copies
    stored = [t for name, t in data.items() if "packed_weight" in name or "LayerNorm" in name]
    lowest = min(t.data_ptr() for t in stored)
    assert max(t.data_ptr() for t in stored) - lowest < file_bytes
    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_load_kernels_leaves_nothing_for_the_first_forward_to_load() -> None:
    from fewbits.runtime import kernels, load_kernels

    load_kernels()
    signatures = {f: list(f.signatures) for f in (kernels.decode_span, kernels.decode_rows_at)}
    for bits in (1, 3, 8):
        with torch.no_grad():
            to_runtime(_compressed(bits, "channel"))(_inputs())
    assert {f: list(f.signatures) for f in signatures} == signatures
