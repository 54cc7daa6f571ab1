"""Empirical Fisher (loop and vmap against a by-hand computation), Adam's second moments, per-layer traces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewbits.analysis.importance import fisher_diagonal, layer_traces
from fewbits.errors import FewbitsValueError
from fewbits.train.moments import adam_second_moments


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.a(x)))


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(n, 5, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)} for n in (3, 4)]


def _by_hand(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    sums = {"a": torch.zeros(4, 5), "head": torch.zeros(3, 4)}
    n = 0
    for batch in batches:
        for x, y in zip(batch["x"], batch["labels"]):
            model.zero_grad()
            F.cross_entropy(model(x[None]), y[None]).backward()
            sums["a"] += model.a.weight.grad ** 2
            sums["head"] += model.head.weight.grad ** 2
            n += 1
    return {k: v / n for k, v in sums.items()}


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_fisher_is_the_mean_squared_per_example_gradient(method):
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = fisher_diagonal(model, _batches(), layers=["a", "head"], method=method, chunk=2)
    expected = _by_hand(Net(), _batches())
    for name in ("a", "head"):
        assert torch.allclose(fisher[name], expected[name], rtol=1e-5, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.a.weight.grad is None


def test_fisher_rejects_bad_arguments():
    with pytest.raises(FewbitsValueError, match="'method'"):
        fisher_diagonal(Net(), _batches(), layers=["a"], method="exact")
    with pytest.raises(FewbitsValueError, match="'layers'"):
        fisher_diagonal(Net(), _batches(), layers=["nope"])
    with pytest.raises(FewbitsValueError, match="'batches'"):
        fisher_diagonal(Net(), [(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))], layers=["a"])


def test_adam_second_moments_from_a_checkpoint(tmp_path):
    from fewbits.train import TrainConfig
    from fewbits.train.checkpoint import save_checkpoint
    from fewbits.train.loop import build_param_groups

    model = Net()
    optimizer = torch.optim.AdamW(build_param_groups(model, TrainConfig(), None), betas=(0.9, 0.99))
    for batch in _batches():
        optimizer.zero_grad()
        F.cross_entropy(model(batch["x"]), batch["labels"]).backward()
        optimizer.step()
    save_checkpoint(tmp_path, 2, model, {"optimizer": optimizer.state_dict()}, best=True)
    v = adam_second_moments(model, tmp_path, layers=["a", "head"])
    assert torch.allclose(v["a"], optimizer.state[model.a.weight]["exp_avg_sq"] / (1 - 0.99 ** 2))
    raw = adam_second_moments(model, tmp_path / "checkpoints" / "step-00000002", layers=["head"],
                              bias_correction=False)
    assert torch.equal(raw["head"], optimizer.state[model.head.weight]["exp_avg_sq"])
    model.a.weight.requires_grad_(False)  # another set of trainable parameters than the run's
    with pytest.raises(FewbitsValueError, match="does not fit"):
        adam_second_moments(model, tmp_path, layers=["head"])
    with pytest.raises(FewbitsValueError, match="holds no training checkpoint"):
        adam_second_moments(model, tmp_path / "missing", layers=["head"])


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_layer_traces_on_a_known_hessian():
    # loss = mean_i (w . e_i + b - y_i)**2 over the 4 unit vectors: d2/dw2 = (2/4) I, trace 2, diagonal so every
    # Rademacher probe gives it exactly
    batches = [{"x": torch.eye(4), "labels": torch.tensor([1.0, -1.0, 0.5, 2.0])}]
    traces = layer_traces(Regression(), batches, layers=["lin"], probes=3)
    assert traces == {"lin": pytest.approx(2.0, rel=1e-6)}
    with pytest.raises(FewbitsValueError, match="'probes'"):
        layer_traces(Regression(), batches, layers=["lin"], probes=0)
