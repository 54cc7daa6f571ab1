"""A fourth method written as a newcomer would (README "Adding a method"): sign + one scale per row.

The weight becomes ``sign(w) * mean(|w|)`` per output row: 1 bit per weight plus one float per row.
Everything the method needs is here (config, transform, serialization) plus one ``register`` call; the
container, ``fewbits.load`` and the commands' loader know nothing about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fewbits.errors import ArtifactError, bad_param
from fewbits.methods import Method, Saved, Stored
from fewbits.methods.codebook.serialize import plain_state
from fewbits.methods.config import MethodConfig
from fewbits.nn.targets import Patterns, find_parametrizations, register_weight_parametrization, select_targets
from fewbits.quantize import pack, unpack


# --- config.py ---
@dataclass(frozen=True)
class SignConfig(MethodConfig):
    """Which layers become sign + scale."""

    method = "sign"
    version = 1

    targets: Patterns = None
    exclude: Patterns = None

    def __post_init__(self) -> None:
        if self.targets is not None and not isinstance(self.targets, (str, list)):
            raise bad_param("targets", "None, a regex or a list of names", self.targets, "SignConfig")


# --- apply.py ---
class SignScale(nn.Module):
    """Parametrization: frozen signs (bool) and a trainable scale per row."""

    def __init__(self, signs: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("signs", signs)
        self.scale = nn.Parameter(scale)

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        rows = self.signs.shape[0]
        values = torch.where(self.signs, 1.0, -1.0).reshape(rows, -1) * self.scale[:, None]
        return values.reshape(self.signs.shape)


def apply(model: nn.Module, config: SignConfig) -> list[str]:
    names = select_targets(model, config.targets, config.exclude, owner="sign")
    modules = dict(model.named_modules())
    for name in names:
        w = modules[name].weight.detach()
        scale = w.reshape(w.shape[0], -1).abs().mean(1)
        register_weight_parametrization(modules[name], SignScale(w >= 0, scale), drop_original=True)
    return names


# --- serialize.py ---
def write(model: nn.Module) -> Saved:
    found = find_parametrizations(model, SignScale)
    tensors, layers = {}, {}
    for name, (_, p) in found.items():
        tensors[f"signs.{name}"] = pack(p.signs.reshape(-1).to(torch.uint8), 1)
        tensors[f"scale.{name}"] = p.scale.detach().contiguous()
        layers[name] = list(p.signs.shape)
    state, aliases = plain_state(model, set(found))
    tensors.update({f"state.{k}": v for k, v in state.items()})
    return Saved(tensors, {"layers": layers, "aliases": aliases}, model)


def check(stored: Stored) -> None:
    for name, shape in stored.data["layers"].items():
        if stored.entries[f"signs.{name}"].shape != (math.ceil(math.prod(shape) / 8),):
            raise ArtifactError(f"{stored.path}: signs of {name!r} do not fit its shape {shape}.")


def read(model: nn.Module, stored: Stored) -> nn.Module:
    tensors = stored.load_tensors()
    state = {n.removeprefix("state."): t for n, t in tensors.items() if n.startswith("state.")}
    model.load_state_dict({**state, **{a: state[k] for a, k in stored.data["aliases"].items()}}, strict=False)
    modules = dict(model.named_modules())
    for name, shape in stored.data["layers"].items():
        signs = unpack(tensors[f"signs.{name}"], 1, math.prod(shape)).reshape(shape).bool()
        register_weight_parametrization(modules[name], SignScale(signs, tensors[f"scale.{name}"]), drop_original=True)
    return model


# --- __init__.py: the one line the registry needs ---
METHOD = Method("sign", SignConfig, apply, write, check, read)
