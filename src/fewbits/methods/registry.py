"""The registry of compression methods: name -> :class:`~fewbits.methods.base.Method`, and one apply entry.

``apply(model, config)`` transforms a model in place by whichever method owns the config's class, as
torchao's ``quantize_(model, config)`` does; the artifact container finds a method's reader by the
``method`` field of a manifest through :func:`get`. A new method is a folder under
``fewbits/methods/`` plus one line in ``_BUILTIN`` (or a :func:`register` call from outside).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fewbits.errors import FewbitsTypeError, FewbitsValueError
from fewbits.methods import codebook, mask, qat
from fewbits.methods.base import Method

_BUILTIN = (codebook.METHOD, qat.METHOD, mask.METHOD)
_METHODS: dict[str, Method] = {m.name: m for m in _BUILTIN}


def register(method: Method) -> Method:
    """Add a method (its name must be new); returns it."""
    if not isinstance(method, Method):
        raise FewbitsTypeError(f"The 'method' parameter of register must be a fewbits.methods.Method. "
                               f"Got {type(method).__name__} instead.")
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise FewbitsValueError(f"register: a method named {method.name!r} exists already; pick another name.")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added by :func:`register` (the built-in ones stay)."""
    if name in {m.name for m in _BUILTIN}:
        raise FewbitsValueError(f"unregister: {name!r} is a built-in method and stays registered.")
    _METHODS.pop(name, None)


def names() -> list[str]:
    """Every registered method name."""
    return sorted(_METHODS)


def get(name: str) -> Method:
    """The method registered as ``name``; an unknown name is an error listing the known ones."""
    if name not in _METHODS:
        raise FewbitsValueError(f"Unknown compression method {name!r}; known: {names()} (upgrade fewbits, or "
                                "register the method before loading).")
    return _METHODS[name]


def method_of(config: object) -> Method:
    """The method whose config class ``config`` is an instance of."""
    for method in _METHODS.values():
        if isinstance(config, method.config):
            return method
    raise FewbitsTypeError(f"The 'config' parameter of fewbits.methods.apply must be a method config "
                           f"({', '.join(m.config.__name__ for m in _METHODS.values())}). "
                           f"Got {type(config).__name__} instead.")


def apply(model: nn.Module, config: Any) -> Any:
    """Apply a method's config to ``model`` in place (what the method returns: reports, layer names, ...)."""
    if not isinstance(model, nn.Module):
        raise FewbitsTypeError(f"The 'model' parameter of fewbits.methods.apply must be a torch.nn.Module. "
                               f"Got {type(model).__name__} instead.")
    return method_of(config).apply(model, config)
