"""The Mask parametrization: frozen bases, straight-through scores, exact sparsity, fixed masks, tied weights."""

import pytest
import torch
from torch import nn

from fewbits.errors import FewbitsValueError, TargetsNotFoundError
from fewbits.methods.codebook import codebook_modules, compress
from fewbits.nn.mask import Mask, apply_mask, kept_fraction, mask_modules, masks, set_masks, topk_mask


def _train_steps(model, batch, steps=5, score_lr=0.5, head_lr=1e-2):
    """A few Adam steps on whatever is trainable; large rates so that mask bits really flip."""
    scores = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".scores")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".scores")]
    opt = torch.optim.Adam([{"params": scores, "lr": score_lr}, {"params": others, "lr": head_lr}])
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _freeze_all_but_masks_and_head(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".scores") or name.startswith("classifier."))


@pytest.mark.parametrize("quantized", [False, True])
def test_frozen_weights_never_change_and_bits_flip(make_bert, quantizer, batch, quantized):
    model = make_bert()
    if quantized:
        compress(model, quantizer, bits=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits0 = model(input_ids=batch["input_ids"]).logits
    names = apply_mask(model, margin=0.1)
    assert torch.equal(model(input_ids=batch["input_ids"]).logits, logits0)  # all kept: the base itself
    assert all(not p.requires_grad for _, cb in codebook_modules(model).values() for p in cb.parameters())
    for module, m in mask_modules(model).values():  # apply_mask itself freezes what the weight is built from
        assert [p for p in module.parametrizations.weight.parameters() if p.requires_grad] == [m.scores]
    _freeze_all_but_masks_and_head(model)
    _train_steps(model, batch)
    after = model.state_dict()
    for key, value in before.items():
        new_key = key if key in after else key.replace(".weight", ".parametrizations.weight.original")
        if key.startswith("classifier."):
            assert not torch.equal(after[new_key], value), key  # the head trains normally
        else:
            assert torch.equal(after[new_key], value), key
    assert kept_fraction(model) < 1.0  # some bits flipped, so the base really saw gradients
    for name in names:
        module = dict(model.named_modules())[name]
        base = module.parametrizations.weight.original if not quantized else module.parametrizations.weight[0]()
        mask = mask_modules(model)[name][1].mask()
        assert torch.equal(module.weight, base * mask)


def test_straight_through_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    base = layer.weight.detach().clone()
    mask = Mask.init(base, margin=1.0, init_sparsity=0.4)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", mask)
    x = torch.randn(7, 5)
    layer(x).pow(2).sum().backward()
    effective = (base * mask.mask()).requires_grad_(True)
    nn.functional.linear(x, effective, layer.bias.detach()).pow(2).sum().backward()
    assert torch.allclose(mask.scores.grad, effective.grad * base)  # dL/dmask = dL/dW * base
    assert mask.scores.grad[~mask.mask()].abs().sum() > 0  # removed weights still get a gradient


def test_target_sparsity_is_exact_per_layer_and_starts_from_magnitude(make_bert, batch):
    model = make_bert()
    bases = {n: m.weight.detach().clone() for n, m in model.named_modules()
             if getattr(m, "weight", None) is not None}
    apply_mask(model, sparsity=0.3, margin=0.1)
    for name, (module, m) in mask_modules(model).items():
        n = m.scores.numel()
        kept = m.mask()
        assert int(kept.sum()) == n - round(0.3 * n) == m.keep
        magnitude = bases[name].abs()
        assert magnitude[kept].min() >= magnitude[~kept].max()  # magnitude pruning at the start
    _freeze_all_but_masks_and_head(model)
    _train_steps(model, batch, steps=4)
    for _, m in mask_modules(model).values():
        assert int(m.mask().sum()) == m.scores.numel() - round(0.3 * m.scores.numel())


def test_init_sparsity_removes_the_smallest_magnitudes():
    weight = torch.tensor([[0.5, -0.1, 0.3], [-0.7, 0.2, 0.05]])
    mask = Mask.init(weight, margin=0.2, init_sparsity=0.5)
    assert mask.mask().tolist() == [[True, False, True], [True, False, False]]
    assert mask.scores.unique().tolist() == pytest.approx([-0.2, 0.2])


def test_topk_mask_breaks_ties_by_index():
    scores = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0])
    assert topk_mask(scores, 3).tolist() == [True, True, True, False, False]
    assert topk_mask(scores, 0).sum() == 0 and topk_mask(scores, 5).all()


def test_set_masks_reproduces_the_trained_model_bit_for_bit(make_bert, quantizer, batch):
    model = make_bert(seed=3)
    compress(model, quantizer, bits=1)
    apply_mask(model, margin=0.1)
    _freeze_all_but_masks_and_head(model)
    _train_steps(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits
    fresh = make_bert(seed=3)
    compress(fresh, quantizer, bits=1)
    fresh.classifier.load_state_dict(model.classifier.state_dict())
    names = set_masks(fresh, masks(model))
    assert set(names) == set(mask_modules(model))
    assert torch.equal(fresh(input_ids=batch["input_ids"]).logits, logits)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if n.endswith(".scores"))


def test_mask_is_cached_in_evaluation_and_fresh_while_training():
    mask = Mask.init(torch.randn(4, 4), margin=1.0)
    with torch.no_grad():
        first = mask.mask()
        assert mask.mask() is first
        mask.scores[0, 0] = -1.0  # an in-place write bumps the version: the cache is dropped
        second = mask.mask()
        assert second is not first and not bool(second[0, 0]) and int(second.sum()) == 15
    mask.scores.data[0, 1] = -1.0  # like fused AdamW: written without bumping the version counter
    assert int(mask.mask().sum()) == 14  # trainable scores with grad enabled: never served from a cache
    with torch.no_grad():
        assert int(mask.mask().sum()) == 14


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 10, bias=False)
        self.proj.weight = self.emb.weight
        self.head = nn.Linear(10, 2)

    def forward(self, ids):
        return self.head(self.proj(self.emb(ids)).mean(1))


def test_tied_weights_share_one_mask():
    torch.manual_seed(0)
    model = _Tied()
    names = apply_mask(model, init_sparsity=0.25)
    found = mask_modules(model)
    assert names == ["emb", "proj"] and found["emb"][1] is found["proj"][1]
    assert list(masks(model)) == ["emb"]
    twin = _Tied()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if "scores" not in k and "original" not in k},
                         strict=False)
    with torch.no_grad():
        twin.emb.weight.copy_(model.emb.parametrizations.weight.original)
    assert set_masks(twin, masks(model)) == ["emb", "proj"]
    assert mask_modules(twin)["emb"][1] is mask_modules(twin)["proj"][1]
    ids = torch.randint(0, 10, (3, 5))
    assert torch.equal(twin(ids), model(ids))


def test_bad_arguments_are_refused_before_any_change(make_bert):
    model = make_bert()
    for kwargs, param in [({"sparsity": 1.0}, "'sparsity'"), ({"margin": 0.0}, "'margin'"),
                          ({"init_sparsity": -0.1}, "'init_sparsity'")]:
        with pytest.raises(FewbitsValueError, match=param):
            apply_mask(model, **kwargs)
    with pytest.raises(TargetsNotFoundError):
        apply_mask(model, targets=["no_such_layer"])
    assert not mask_modules(model)
    with pytest.raises(FewbitsValueError, match="init_sparsity"):
        Mask.init(torch.randn(3, 3), margin=1.0, init_sparsity=0.2, sparsity=0.5)
    apply_mask(model, targets=["query"])
    with pytest.raises(FewbitsValueError, match="already carry a mask"):
        apply_mask(model, targets=["query"])
    with pytest.raises(FewbitsValueError, match="shape"):
        set_masks(make_bert(), {"bert.pooler.dense": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(FewbitsValueError, match="lacks"):
        set_masks(make_bert(), {"bert.nothing": torch.ones(3, 3, dtype=torch.bool)})
