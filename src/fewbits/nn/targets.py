"""Which layers to compress, and a generic way to put a parametrization on their weight.

Candidates are the modules that own a weight with at least two dimensions: Linear, Embedding,
Conv1d/2d/3d, Hugging Face ``Conv1D``, ... (never norms or biases). Patterns follow PEFT:

- a string is a regular expression that must match the WHOLE module name (``r".*attention.*"``);
- a list holds exact names or name suffixes (``["query", "value"]`` matches ``encoder.layer.0.attention.self.query``);
- ``exclude`` is applied first; a pattern (or a list entry) that matches no candidate raises
  :class:`~fewbits.errors.TargetsNotFoundError`, which lists the available names.

The default (P1) is every Embedding and every fully connected layer (Linear, HF ``Conv1D``) except
the task head, the modules whose output is the logits:

- Hugging Face models: every top-level child outside the base model (``model.base_model_prefix``,
  e.g. ``classifier`` beside ``bert``), the output embeddings (``lm_head``), and any top-level child
  named ``classifier``, ``score``, ``lm_head`` or ``qa_outputs``; a bare base model has no head;
- other models: the last ``nn.Linear`` in registration order (``fc`` of a ResNet, the last layer of an MLP).

A model with no Embedding or fully connected layer outside its head (the CNNs: ResNet-18, the 1-D CNN)
defaults to all its other candidates, its convolutions, so that it compresses without naming layers.

These helpers keep no global state, so several kinds of parametrization (codebook, STE, mask) can
be selected and registered on the same model independently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from fewbits.errors import FewbitsTypeError, TargetsNotFoundError, bad_param

HF_HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")
Patterns = str | Sequence[str] | None


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's transposed Linear (GPT-2), detected without importing transformers."""
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in type(module).__mro__)


def is_fully_connected(module: nn.Module) -> bool:
    """True for nn.Linear and Hugging Face Conv1D (the layers P1 calls fully connected)."""
    return isinstance(module, nn.Linear) or _is_hf_conv1d(module)


def weight_ndim(module: nn.Module) -> int:
    """Dimensions of the module's ``weight`` (parametrized or not); 0 when it has none."""
    if parametrize.is_parametrized(module, "weight"):
        with torch.no_grad():
            return module.weight.dim()
    weight = module._parameters.get("weight")
    return weight.dim() if isinstance(weight, torch.Tensor) else 0


def candidate_names(model: nn.Module) -> list[str]:
    """Names of the modules owning a weight of at least two dimensions, in registration order."""
    return [name for name, module in model.named_modules() if name and weight_ndim(module) >= 2]


def head_names(model: nn.Module) -> list[str]:
    """Candidates that form the task head (see the module docstring for the rule)."""
    candidates = candidate_names(model)
    roots: set[str] = set()
    prefix = getattr(model, "base_model_prefix", None)
    if prefix is not None and hasattr(model, "config"):  # a Hugging Face PreTrainedModel
        children = dict(model.named_children())
        if prefix in children:
            roots.update(name for name in children if name != prefix)
        roots.update(name for name in HF_HEAD_NAMES if name in children)
        get_out = getattr(model, "get_output_embeddings", None)
        out = get_out() if callable(get_out) else None
        roots.update(name for name, m in model.named_modules() if out is not None and m is out)
        return [c for c in candidates if any(c == r or c.startswith(r + ".") for r in roots)]
    linears = [name for name, m in model.named_modules() if name and isinstance(m, nn.Linear)]
    return linears[-1:]


def default_targets(model: nn.Module) -> list[str]:
    """P1's default: every Embedding and fully connected layer except the task head; for a model that has none
    (a CNN whose only fully connected layer is its head), every other candidate, i.e. the convolutions."""
    head = set(head_names(model))
    modules = dict(model.named_modules())
    others = [name for name in candidate_names(model) if name not in head]
    p1 = [name for name in others if isinstance(modules[name], nn.Embedding) or is_fully_connected(modules[name])]
    return p1 or others


def _matcher(patterns: Patterns, param: str, owner: str) -> list[tuple[str, Callable[[str], bool]]]:
    """One (description, predicate) per pattern; a string is one full-match regex."""
    if isinstance(patterns, str):
        try:
            regex = re.compile(patterns)
        except re.error as exc:
            raise bad_param(param, f"a valid regular expression ({exc})", patterns, owner) from None
        return [(f"regex {patterns!r}", lambda name: regex.fullmatch(name) is not None)]
    if isinstance(patterns, Iterable) and not isinstance(patterns, (bytes, dict)):
        items = list(patterns)
        if not items or not all(isinstance(p, str) and p for p in items):
            raise bad_param(param, "a regex string, or a non-empty list of module names or name suffixes",
                            patterns, owner)
        return [(repr(p), lambda name, p=p: name == p or name.endswith("." + p)) for p in items]
    raise FewbitsTypeError(f"The {param!r} parameter of {owner} must be a regex string, a list of module names, "
                           f"or None. Got {type(patterns).__name__} instead.")


def _available(names: Sequence[str], limit: int = 60) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _match(candidates: Sequence[str], patterns: Patterns, param: str, owner: str) -> set[str]:
    """Candidates matched by any pattern; every pattern must match at least one candidate."""
    matched: set[str] = set()
    for description, predicate in _matcher(patterns, param, owner):
        hits = {name for name in candidates if predicate(name)}
        if not hits:
            raise TargetsNotFoundError(
                f"The {param!r} pattern {description} of {owner} matches no layer with a weight. "
                f"Available names: {_available(candidates)}.")
        matched |= hits
    return matched


def matching_names(model: nn.Module, patterns: Patterns, param: str = "targets", owner: str = "compress") -> set[str]:
    """Candidate names matched by ``patterns``; raises TargetsNotFoundError when a pattern matches none."""
    return _match(candidate_names(model), patterns, param, owner)


def select_targets(model: nn.Module, targets: Patterns = None, exclude: Patterns = None, *,
                   default: Callable[[nn.Module], list[str]] = default_targets,
                   owner: str = "compress") -> list[str]:
    """Module names to parametrize, in registration order; changes nothing.

    ``targets=None`` takes ``default(model)``. Raises TargetsNotFoundError when a pattern matches
    nothing or when nothing is left to select.
    Example: ``select_targets(model, r".*layer\\.[0-5]\\..*", exclude=["key"])``.
    """
    candidates = candidate_names(model)
    excluded = _match(candidates, exclude, "exclude", owner) if exclude is not None else set()
    chosen = set(default(model)) if targets is None else _match(candidates, targets, "targets", owner)
    selected = [name for name in candidates if name in chosen and name not in excluded]
    if not selected:
        raise TargetsNotFoundError(
            f"{owner}: no layer left to select (targets={targets!r}, exclude={exclude!r}). "
            f"Available names: {_available(candidates)}.")
    return selected


def register_weight_parametrization(module: nn.Module, parametrization: nn.Module, *,
                                    drop_original: bool = False) -> None:
    """Add ``parametrization`` to ``module.weight`` (appended on top of any already there).

    ``drop_original=True`` (for a parametrization that ignores its input, like :class:`Codebook`)
    first replaces the weight by an empty buffer of the same dtype, freeing the original values
    and keeping them out of ``model.parameters()``.
    """
    if drop_original:
        if parametrize.is_parametrized(module, "weight"):
            raise bad_param("module", "a module whose weight is not parametrized yet", type(module).__name__,
                            "register_weight_parametrization(drop_original=True)")
        dtype, device = module.weight.dtype, module.weight.device
        del module.weight
        module.register_buffer("weight", torch.empty(0, dtype=dtype, device=device))
        parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
    else:
        parametrize.register_parametrization(module, "weight", parametrization)


def remove_weight_parametrizations(module: nn.Module) -> None:
    """Remove every parametrization of ``module.weight``, leaving the ORIGINAL tensor registered.

    ``copy.deepcopy`` of a parametrized module shares torch's injected class with the original, and
    torch's removal edits that class, which would break the original too; the module first gets a
    private copy of the class, so removing from a copy never touches the model it was copied from.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in vars(cls).items()
                                                          if k not in ("__dict__", "__weakref__")})
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def find_parametrizations(model: nn.Module, kind: type[nn.Module]) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``name -> (module, parametrization)`` for every module whose weight carries a ``kind`` instance.

    Tied modules that share one parametrization instance each appear under their own name.
    """
    found: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, kind):
                    found[name] = (module, p)
                    break
    return found
