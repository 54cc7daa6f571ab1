"""Random directions in weight space with filter normalization (Li et al. 2018), from a seed.

A direction is a dict ``effective name -> tensor`` (see :func:`fewbits.analysis.effective_parameters`).
It is drawn as a standard Gaussian per tensor, then each *filter* is rescaled to the norm of the
matching filter of a reference model's weights, so that a step of 1 along it moves every filter by
its own size and scale-invariant networks compare fairly.

A filter is a slice along dim 0 of a tensor with ndim >= 2: a row of a Linear weight (one output
unit's incoming weights), an output channel of a Conv weight, and a row of an Embedding weight (one
token's vector: the embedding's output unit, as a row is a Linear's). Tensors with ndim < 2 (biases,
normalization scales) are left out (a zero direction) unless ``include_1d=True``, in which case the
whole tensor is one filter. A filter whose weights are all zero gets a zero direction, never NaN.

Directions are normalized ONCE, against a reference model (P2: the STE model), and reused unchanged
for every model compared that has the same parameter names and shapes; :func:`save_directions`
stores them as safetensors so another run can reuse them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fewbits.analysis.params import effective_parameters
from fewbits.errors import ArtifactError, FewbitsValueError, bad_param

Direction = dict[str, torch.Tensor]
DirectionPair = tuple[Direction, Direction]

FORMAT = "fewbits.directions"
FORMAT_VERSION = 1


def filter_normalize(direction: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                     *, include_1d: bool = False) -> Direction:
    """Rescale each filter (dim-0 slice) of ``direction`` to the norm of the same filter of ``weights``.

    Tensors with ndim < 2 are dropped (a zero direction) unless ``include_1d``, where each is
    rescaled as a whole. Zero weight filters (or zero direction filters) give zero, not NaN.
    Returns CPU tensors in the weights' dtype (at least float32).
    """
    out: Direction = {}
    for name, d in direction.items():
        if name not in weights:
            raise bad_param("direction", "names that all appear in 'weights'", name, "filter_normalize")
        dtype = torch.promote_types(weights[name].dtype, torch.float32)
        w = weights[name].detach().to("cpu", torch.float64)
        d64 = d.detach().to("cpu", torch.float64)
        if w.shape != d64.shape:
            raise FewbitsValueError(
                f"The direction for {name!r} must have the weight's shape {tuple(w.shape)}. Got {tuple(d64.shape)} instead."
            )
        if w.ndim < 2 and not include_1d:
            continue
        rows = 1 if w.ndim < 2 else w.shape[0]
        w_norm = w.reshape(rows, -1).norm(dim=1)
        d_norm = d64.reshape(rows, -1).norm(dim=1)
        scale = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.zeros_like(d_norm))
        out[name] = (d64.reshape(rows, -1) * scale[:, None]).reshape(w.shape).to(dtype)
    return out


def random_direction(reference: nn.Module | Mapping[str, torch.Tensor], generator: torch.Generator,
                     *, include_1d: bool = False) -> Direction:
    """One filter-normalized Gaussian direction around ``reference`` (a model, or its effective parameters).

    A Gaussian is drawn (on the CPU, float32) for EVERY tensor in order, 1-D ones included, so the
    multi-dimensional parts do not depend on ``include_1d``.
    """
    weights = effective_parameters(reference) if isinstance(reference, nn.Module) else dict(reference)
    raw = {name: torch.randn(tuple(w.shape), generator=generator, dtype=torch.float32) for name, w in weights.items()}
    return filter_normalize(raw, weights, include_1d=include_1d)


def direction_pairs(reference: nn.Module, pairs: int, seed: int, *, include_1d: bool = False) -> list[DirectionPair]:
    """``pairs`` (x, y) direction pairs, filter-normalized against ``reference``, all drawn from ``seed``.

    The same seed, names and shapes give the same directions on any machine.

    >>> (dx, dy), = direction_pairs(nn.Linear(3, 2), pairs=1, seed=0)
    >>> sorted(dx), dx["weight"].shape
    (['weight'], torch.Size([2, 3]))
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise bad_param("pairs", "a positive int", pairs, "direction_pairs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad_param("seed", "an int", seed, "direction_pairs")
    weights = effective_parameters(reference)
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(pairs):
        dx = random_direction(weights, generator, include_1d=include_1d)
        dy = random_direction(weights, generator, include_1d=include_1d)
        result.append((dx, dy))
    if not result[0][0]:
        raise FewbitsValueError(
            "The reference model has no parameter with ndim >= 2 to perturb; pass include_1d=True to use 1-D ones."
        )
    return result


def check_directions(model: nn.Module, direction: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check that ``direction`` fits ``model`` (every name present, same shapes); return the model's effective weights.

    Warns when the model has multi-dimensional weights the direction does not cover (another architecture?).
    """
    weights = effective_parameters(model)
    for name, d in direction.items():
        if name not in weights:
            raise FewbitsValueError(
                f"The directions name {name!r}, which the model does not have: they were made for another model. "
                "Make new directions from this model (or one with the same parameter names)."
            )
        if tuple(weights[name].shape) != tuple(d.shape):
            raise FewbitsValueError(
                f"The direction for {name!r} has shape {tuple(d.shape)} but the model's weight has "
                f"{tuple(weights[name].shape)}: the directions were made for another model."
            )
    uncovered = [n for n, w in weights.items() if w.ndim >= 2 and n not in direction]
    if uncovered:
        warnings.warn(f"The directions leave {len(uncovered)} weight(s) of the model unperturbed, e.g. {uncovered[0]!r}.",
                      UserWarning, stacklevel=3)
    return weights


def save_directions(path: str | Path, pairs: list[DirectionPair], metadata: Mapping[str, object] | None = None) -> Path:
    """Write direction pairs as safetensors (keys ``pair{k}.{x|y}.{name}``), with JSON ``metadata`` in the header."""
    tensors: dict[str, torch.Tensor] = {}
    for k, (dx, dy) in enumerate(pairs):
        for axis, d in (("x", dx), ("y", dy)):
            for name, t in d.items():
                tensors[f"pair{k}.{axis}.{name}"] = t.detach().cpu().contiguous()
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "pairs": str(len(pairs)),
              "metadata": json.dumps(dict(metadata or {}))}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_directions(path: str | Path) -> tuple[list[DirectionPair], dict[str, object]]:
    """Read direction pairs written by :func:`save_directions`; returns ``(pairs, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"directions file {path} does not exist; write one with save_directions or --out")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); rewrite it with save_directions") from exc
    if header.get("format") != FORMAT or header.get("version") != str(FORMAT_VERSION):
        raise ArtifactError(
            f"{path} is not a fewbits directions file of version {FORMAT_VERSION} "
            f"(format {header.get('format')!r}, version {header.get('version')!r}); rewrite it with save_directions"
        )
    count = int(header["pairs"])
    pairs: list[DirectionPair] = [({}, {}) for _ in range(count)]
    for key, t in tensors.items():
        pair, axis, name = key.split(".", 2)
        k = int(pair.removeprefix("pair"))
        if not 0 <= k < count or axis not in ("x", "y"):
            raise ArtifactError(f"{path} holds an unexpected tensor {key!r}; rewrite it with save_directions")
        pairs[k][0 if axis == "x" else 1][name] = t
    return pairs, json.loads(header.get("metadata", "{}"))
