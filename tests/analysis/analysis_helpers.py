"""Tiny models and data shared by the analysis tests (imported by name: the folder is on sys.path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize


class RoundTo(nn.Module):
    """A stand-in quantizer: rounds each weight to a multiple of ``step`` (straight-through)."""

    def __init__(self, step: float = 0.25) -> None:
        super().__init__()
        self.step = step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (torch.round(w / self.step) * self.step - w).detach()


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64, sizes: tuple[int, ...] = (6, 8, 3)) -> nn.Sequential:
    """A small ReLU MLP in float64 (exact comparisons)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype)


def batches(n: int = 30, sizes: tuple[int, ...] = (12, 10, 8), features: int = 6, classes: int = 3, seed: int = 1,
            dtype: torch.dtype = torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed classification set split into batches of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), features, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (sum(sizes),), generator=g)
    out, start = [], 0
    for s in sizes:
        out.append((x[start:start + s], y[start:start + s]))
        start += s
    return out


def quantized_mlp(seed: int = 0) -> nn.Sequential:
    """``mlp`` with its first layer's weight parametrized by :class:`RoundTo`."""
    model = mlp(seed)
    parametrize.register_parametrization(model[0], "weight", RoundTo())
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (raw storage, not effective values), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    for p in model.parameters():
        assert p.grad is None


def exact_hessian(model: nn.Module, data) -> tuple[torch.Tensor, list[str], list[int]]:
    """The full Hessian of the mean cross-entropy over ``data`` w.r.t. every parameter, flattened."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat), names, sizes
