"""Errors raised by fewbits.

Every error a user can cause derives from :class:`FewbitsError`, and also from the builtin it
refines (``ValueError``, ``TypeError``, ...) so that ``except ValueError`` keeps working.
Messages name the parameter, the bad value and the fix.
"""

from __future__ import annotations


class FewbitsError(Exception):
    """Base class of every error fewbits raises on purpose."""


class FewbitsValueError(FewbitsError, ValueError):
    """An argument has the right type but a bad value."""


class FewbitsTypeError(FewbitsError, TypeError):
    """An argument has the wrong type or dtype."""


class TargetsNotFoundError(FewbitsValueError):
    """A module-name pattern matched no module of the model."""


class MissingDependencyError(FewbitsError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""


class ArtifactError(FewbitsValueError):
    """An artifact on disk is missing, truncated, altered, or for another model or format version."""


def bad_param(name: str, expected: str, got: object, owner: str = "") -> FewbitsValueError:
    """Build the one error template: "The 'bits' parameter of kmeans must be ... Got 9 instead."."""
    where = f" of {owner}" if owner else ""
    return FewbitsValueError(f"The {name!r} parameter{where} must be {expected}. Got {got!r} instead.")
