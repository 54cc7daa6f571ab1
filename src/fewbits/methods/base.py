"""What a compression method is to the rest of fewbits: its config class and four functions.

A method (codebook, qat, mask, or one you add) is one folder under ``fewbits/methods/`` holding its
config dataclass, its transform, its loss terms and its serialization, and one :class:`Method`
value that the registry lists. The artifact container (``fewbits.io``) never knows a method's
tensors: it asks the method named in the manifest to write (:attr:`Method.write`), check
(:attr:`Method.check`) and read (:attr:`Method.read`) them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewbits._util.tensorfile import TensorEntry


@dataclass(frozen=True)
class Saved:
    """What a method hands the container to write.

    ``tensors``: every tensor of the artifact, by name; ``data``: the method's manifest section
    (JSON-able); ``model``: the model whose architecture the manifest records so that ``load`` can
    rebuild it (None when the base is another artifact, named by ``base``: a mask over its base).
    """

    tensors: dict[str, torch.Tensor]
    data: dict[str, Any]
    model: nn.Module | None = None
    base: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stored:
    """What the container hands a method to check or read: the manifest section and the tensors file."""

    path: Path  # the artifact's tensors file, for messages
    data: dict[str, Any]
    entries: dict[str, TensorEntry]  # parsed header (sizes known before any tensor is allocated)
    load_tensors: Callable[[], dict[str, torch.Tensor]] = field(repr=False, default=dict)
    base_note: str = ""  # where the base model came from, for messages ("from .../config.json")
    trainable: bool = True  # read into the training representation; False: packed run-time layers where a method has them


@dataclass(frozen=True)
class Method:
    """One compression method: a name, its config class and the functions the rest of fewbits calls.

    ``apply(model, config)`` transforms a model in place; ``write(model, **options) -> Saved``;
    ``check(stored)`` validates the manifest section and tensor sizes, raising ArtifactError;
    ``read(model, stored) -> model`` installs the stored method onto a freshly built base model (whose
    parameters are on the meta device when ``fills_base``: read then assigns every one);
    ``summary(stored) -> dict`` gives the sizes ``fewbits info`` prints (optional);
    ``fit(model, stored)`` checks the stored tensors against a base model from shapes alone, before anything is
    allocated (it runs on a model built on the meta device; ``read`` must run it too).
    """

    name: str
    config: type
    apply: Callable[[nn.Module, Any], Any]
    write: Callable[..., Saved]
    check: Callable[[Stored], None]
    read: Callable[[nn.Module, Stored], nn.Module]
    version: int = 1
    fills_base: bool = False  # read assigns every base tensor, so the base is built on the meta device
    fit: Callable[[nn.Module, Stored], None] | None = None
