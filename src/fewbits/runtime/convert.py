"""Switch a model between the training representation (Codebook parametrizations) and the packed run-time one.

``to_runtime(model)`` replaces every layer whose weight carries exactly one :class:`Codebook` (and that
is a plain Linear, Embedding without ``max_norm``, Conv1d/2d/3d or Hugging Face Conv1D) by a
:class:`~fewbits.runtime.modules.PackedLayer` holding the packed codes; ``to_training(model)`` goes
back (codes unpacked, codebooks trainable again). Tied layers keep sharing one weight both ways;
forward hooks and extra children (activation quantizers) move with the layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fewbits.errors import FewbitsTypeError
from fewbits.nn.codebook import Codebook
from fewbits.nn.targets import (_is_hf_conv1d, find_parametrizations, register_weight_parametrization,
                                remove_weight_parametrizations)
from fewbits.runtime.modules import PackedConv, PackedConv1D, PackedEmbedding, PackedLayer, PackedLinear
from fewbits.runtime.packed import PackedWeight

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def packed_class(module: nn.Module) -> type[PackedLayer] | None:
    """The packed layer that computes what ``module`` computes, or None when there is none."""
    cls = type(module)
    if isinstance(module, nn.Linear) and cls.forward is nn.Linear.forward:
        return PackedLinear
    if isinstance(module, nn.Embedding) and cls.forward is nn.Embedding.forward and module.max_norm is None:
        return PackedEmbedding
    if isinstance(module, _CONVS) and cls.forward in {c.forward for c in _CONVS}:
        return PackedConv
    if _is_hf_conv1d(module):
        return PackedConv1D
    return None


def _move_extras(source: nn.Module, target: nn.Module) -> None:
    """Hooks, hook handles and child modules (other than the weight's own) follow the layer."""
    target._forward_pre_hooks = source._forward_pre_hooks
    target._forward_hooks = source._forward_hooks
    for name, child in list(source.named_children()):
        if name not in ("parametrizations", "packed_weight"):
            target.add_module(name, child)
            del source._modules[name]
    for name, value in list(vars(source).items()):
        if isinstance(value, RemovableHandle):
            object.__setattr__(target, name, value)


def pack_layer(module: nn.Module, weight: PackedWeight) -> PackedLayer:
    """Wrap a module whose weight was removed (``module.weight`` absent) around ``weight``; takes its bias."""
    cls = packed_class(module)
    if cls is None:
        raise FewbitsTypeError(f"No packed layer computes a {type(module).__name__}; supported: Linear, "
                               "Embedding (without max_norm), Conv1d/2d/3d, Hugging Face Conv1D.")
    bias = module._parameters.get("bias")
    if "bias" in module._parameters:
        module._parameters["bias"] = None
    layer = cls(module, weight, bias)
    _move_extras(module, layer)
    return layer


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the (possibly new) root."""
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
    return model


def to_runtime(model: nn.Module) -> nn.Module:
    """Replace the Codebook layers of ``model`` by packed layers, in place; returns the model (in eval mode).

    Layers whose weight carries anything besides one Codebook (a mask over it, exact outliers), or whose type
    has no packed counterpart, stay as they are. Example: ``fewbits.compress(m, "kmeans", 3); to_runtime(m)``.
    """
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of to_runtime must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    shared: dict[int, PackedWeight] = {}
    for name, (module, cb) in find_parametrizations(model, Codebook).items():
        if (len(module.parametrizations.weight) != 1 or packed_class(module) is None
                or getattr(cb, "outlier_index", None) is not None):
            continue
        weight = shared.setdefault(id(cb), PackedWeight.from_codebook(cb))
        remove_weight_parametrizations(module)
        del module.weight
        model = _replace(model, name, pack_layer(module, weight))
    return model.eval()


def install(model: nn.Module, members: list[str], weight: PackedWeight) -> nn.Module:
    """Give the modules ``members`` (tied: one weight) the packed ``weight``; returns the (possibly new) root.

    For loading: each module's own weight (a meta tensor, or real values) is dropped, its bias kept.
    A module no packed layer computes gets ``weight.to_codebook()`` as a parametrization instead (one
    Codebook shared by all such members), so every stored layer loads.
    """
    fallback: Codebook | None = None
    for member in members:
        module = model.get_submodule(member)
        if packed_class(module) is None:
            fallback = fallback or weight.to_codebook()
            dtype = fallback.codebook.dtype
            module._parameters["weight"] = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            register_weight_parametrization(module, fallback, drop_original=True)
            continue
        del module.weight
        model = _replace(model, member, pack_layer(module, weight))
    return model


def to_training(model: nn.Module) -> nn.Module:
    """Replace packed layers by their original modules with a trainable :class:`Codebook`, in place; returns the model."""
    shared: dict[int, Codebook] = {}
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, PackedLayer)]:
        module = layer.skeleton
        if "bias" in module._parameters:
            module._parameters["bias"] = layer.bias
        cb = shared.setdefault(id(layer.packed_weight), layer.packed_weight.to_codebook())
        module.register_buffer("weight", torch.empty(0, dtype=cb.codebook.dtype, device=cb.codebook.device))
        register_weight_parametrization(module, cb, drop_original=True)
        _move_extras(layer, module)
        model = _replace(model, name, module)
    return model


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``, each storage counted once (what stays resident)."""
    seen: dict[tuple[str, int], int] = {}
    for _, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
