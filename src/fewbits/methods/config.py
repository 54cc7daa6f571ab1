"""What every method's config shares: plain data, JSON in and out with a type tag and a version."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar

from fewbits.errors import FewbitsValueError


class MethodConfig:
    """Mixin for a method's config dataclass: ``to_dict`` / ``from_dict`` with its method name and version.

    Subclasses are frozen dataclasses that validate every field in ``__post_init__`` and set
    ``method`` (the registry name) and ``version`` (raised when a field changes meaning).
    """

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON manifest, with ``method`` and ``version`` tags."""
        return {"method": self.method, "version": self.version, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict` (the tags are optional); unknown keys or a newer version are an error."""
        data = dict(data)
        if data.pop("method", cls.method) != cls.method:
            raise FewbitsValueError(f"A {cls.__name__} cannot be read from a config of another method; give a "
                                    f"{cls.method!r} config.")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version:
            raise FewbitsValueError(f"{cls.__name__} version {version!r} is newer than the version {cls.version} this "
                                    "fewbits reads; upgrade fewbits.")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise FewbitsValueError(f"Unknown {cls.__name__} field(s) {sorted(unknown)}; was it written by a newer "
                                    "fewbits?")
        return cls(**data)
