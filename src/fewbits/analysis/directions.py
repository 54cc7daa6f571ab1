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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
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


def _filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """Norm of each filter (dim-0 slice) of a tensor with ndim >= 2; of the whole tensor otherwise (shape (1,))."""
    w = weight.detach().to("cpu", torch.float64)
    rows = 1 if w.ndim < 2 else w.shape[0]
    return w.reshape(rows, -1).norm(dim=1)


def _rescale(raw: torch.Tensor, norms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``raw`` with each filter rescaled to the given norm; zero norms (either side) give zero, never NaN."""
    d = raw.detach().to("cpu", torch.float64).reshape(norms.shape[0], -1)
    d_norm = d.norm(dim=1)
    scale = torch.where(d_norm > 0, norms / d_norm.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(d_norm))
    return (d * scale[:, None]).reshape(raw.shape).to(dtype)


def _direction_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(weight_dtype, torch.float32)


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
        w = weights[name]
        if tuple(w.shape) != tuple(d.shape):
            raise FewbitsValueError(
                f"The direction for {name!r} must have the weight's shape {tuple(w.shape)}. "
                f"Got {tuple(d.shape)} instead."
            )
        if w.ndim >= 2 or include_1d:
            out[name] = _rescale(d, _filter_norms(w), _direction_dtype(w.dtype))
    return out


def _pair_seed(seed: int, k: int) -> int:
    """A well-mixed seed for pair ``k`` of ``seed``, so any pair can be drawn without drawing the others."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, k]).generate_state(1, np.uint64)[0] >> 1)


class DirectionPairs(Sequence[DirectionPair]):
    """Filter-normalized (x, y) direction pairs drawn from a seed, generated on demand.

    Holds only the reference's per-filter norms (a few numbers per filter), so ten pairs for a
    large model cost no memory until used, and the file :func:`save_directions` writes is small.
    Pair ``k`` draws a standard Gaussian (CPU, float32) for every tensor in order, 1-D ones
    included, x then y, from a generator seeded by ``(seed, k)``; then rescales each filter.
    Indexing and iterating give ``(dx, dy)`` dicts, as a list of pairs would.
    """

    def __init__(self, norms: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
                 dtypes: Mapping[str, torch.dtype], pairs: int, seed: int, include_1d: bool) -> None:
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
            raise bad_param("pairs", "a positive int", pairs, "direction_pairs")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_param("seed", "an int", seed, "direction_pairs")
        self.norms = {n: t.to(torch.float64) for n, t in norms.items()}
        self.shapes = {n: tuple(int(v) for v in s) for n, s in shapes.items()}
        self.dtypes = dict(dtypes)
        self.pairs, self.seed, self.include_1d = pairs, seed, bool(include_1d)
        if not any(len(s) >= 2 or self.include_1d for s in self.shapes.values()):
            raise FewbitsValueError(
                "The reference model has no parameter with ndim >= 2 to perturb; pass include_1d=True to use 1-D ones."
            )

    @classmethod
    def from_reference(cls, reference: nn.Module | Mapping[str, torch.Tensor], pairs: int, seed: int, *,
                       include_1d: bool = False) -> DirectionPairs:
        """Pairs normalized against ``reference`` (a model or its effective parameters)."""
        weights = effective_parameters(reference) if isinstance(reference, nn.Module) else dict(reference)
        return cls({n: _filter_norms(w) for n, w in weights.items()}, {n: tuple(w.shape) for n, w in weights.items()},
                   {n: _direction_dtype(w.dtype) for n, w in weights.items()}, pairs, seed, include_1d)

    def __len__(self) -> int:
        return self.pairs

    def __getitem__(self, k):  # type: ignore[override]  # int -> pair, slice -> list of pairs
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.pairs))]
        if isinstance(k, bool) or not isinstance(k, int) or not -self.pairs <= k < self.pairs:
            raise IndexError(f"direction pair {k!r} out of range for {self.pairs} pairs")
        generator = torch.Generator().manual_seed(_pair_seed(self.seed, k % self.pairs))
        return self._draw(generator), self._draw(generator)

    def _draw(self, generator: torch.Generator) -> Direction:
        out: Direction = {}
        for name, shape in self.shapes.items():
            raw = torch.randn(shape, generator=generator, dtype=torch.float32)
            if len(shape) >= 2 or self.include_1d:
                out[name] = _rescale(raw, self.norms[name], self.dtypes[name])
        return out


def random_direction(reference: nn.Module | Mapping[str, torch.Tensor], generator: torch.Generator,
                     *, include_1d: bool = False) -> Direction:
    """One filter-normalized Gaussian direction around ``reference`` (a model, or its effective parameters),
    drawn from ``generator`` (for a single direction; :func:`direction_pairs` for reusable pairs)."""
    weights = effective_parameters(reference) if isinstance(reference, nn.Module) else dict(reference)
    raw = {name: torch.randn(tuple(w.shape), generator=generator, dtype=torch.float32) for name, w in weights.items()}
    return filter_normalize(raw, weights, include_1d=include_1d)


def direction_pairs(reference: nn.Module, pairs: int, seed: int, *, include_1d: bool = False) -> DirectionPairs:
    """``pairs`` (x, y) direction pairs, filter-normalized against ``reference``, drawn from ``seed``.

    The same seed, names and shapes give the same directions on any machine; the pairs are
    generated when indexed (see :class:`DirectionPairs`) and reusable on any model with the
    same parameter names and shapes.

    >>> (dx, dy), = direction_pairs(nn.Linear(3, 2), pairs=1, seed=0)
    >>> sorted(dx), dx["weight"].shape
    (['weight'], torch.Size([2, 3]))
    """
    return DirectionPairs.from_reference(reference, pairs, seed, include_1d=include_1d)


def check_directions(model: nn.Module, direction: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check that ``direction`` fits ``model`` (every name present, same shapes); return the model's effective weights.

    Warns when the model has multi-dimensional weights the direction does not cover (another architecture?).
    """
    weights = effective_parameters(model)
    check_against(weights, direction)
    return weights


def check_against(weights: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], *,
                  warn: bool = True) -> None:
    """:func:`check_directions` against already computed effective weights (``warn``: about uncovered weights)."""
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
    if uncovered and warn:
        warnings.warn(f"The directions leave {len(uncovered)} weight(s) of the model unperturbed, "
                      f"e.g. {uncovered[0]!r}.",
                      UserWarning, stacklevel=4)


def save_directions(path: str | Path, pairs: Sequence[DirectionPair],
                    metadata: Mapping[str, object] | None = None) -> Path:
    """Write direction pairs as safetensors, with JSON ``metadata`` in the header; atomic.

    :class:`DirectionPairs` are stored compactly (seed, shapes and the reference's per-filter
    norms: keys ``norms.{name}``); any other sequence of pairs tensor by tensor (``pair{k}.{x|y}.{name}``).
    """
    tensors: dict[str, torch.Tensor] = {}
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "pairs": str(len(pairs)),
              "metadata": json.dumps(dict(metadata or {}))}
    if isinstance(pairs, DirectionPairs):
        header.update(kind="seeded", seed=str(pairs.seed), include_1d=str(pairs.include_1d).lower(),
                      tensors=json.dumps([[n, list(s), str(pairs.dtypes[n]).removeprefix("torch.")]
                                          for n, s in pairs.shapes.items()]))
        tensors = {f"norms.{n}": t.contiguous() for n, t in pairs.norms.items()}
    else:
        header["kind"] = "explicit"
        for k, (dx, dy) in enumerate(pairs):
            for axis, d in (("x", dx), ("y", dy)):
                for name, t in d.items():
                    tensors[f"pair{k}.{axis}.{name}"] = t.detach().cpu().contiguous()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_directions(path: str | Path) -> tuple[Sequence[DirectionPair], dict[str, object]]:
    """Read direction pairs written by :func:`save_directions`; returns ``(pairs, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"directions file {path} does not exist; write one with save_directions or --out")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); "
                            "rewrite it with save_directions") from exc
    if header.get("format") != FORMAT or header.get("version") != str(FORMAT_VERSION):
        raise ArtifactError(
            f"{path} is not a fewbits directions file of version {FORMAT_VERSION} "
            f"(format {header.get('format')!r}, version {header.get('version')!r}); rewrite it with save_directions"
        )
    try:
        count = int(header["pairs"])
        metadata = json.loads(header.get("metadata", "{}"))
        if header.get("kind") == "seeded":
            entries = json.loads(header["tensors"])
            norms = {n: tensors[f"norms.{n}"] for n, _, _ in entries}
            shapes = {n: tuple(s) for n, s, _ in entries}
            dtypes = {n: getattr(torch, d) for n, _, d in entries}
            return DirectionPairs(norms, shapes, dtypes, count, int(header["seed"]),
                                  header["include_1d"] == "true"), metadata
        pairs: list[DirectionPair] = [({}, {}) for _ in range(count)]
        for key, t in tensors.items():
            pair, axis, name = key.split(".", 2)
            pairs[int(pair.removeprefix("pair"))][0 if axis == "x" else 1][name] = t
        return pairs, metadata
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path} has a malformed directions header or tensor names ({exc!r}); "
                            "rewrite it with save_directions") from exc
