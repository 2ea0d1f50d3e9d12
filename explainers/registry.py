"""The explainer registry: methods by stable name, and what each declares.

Built-in methods register themselves when `desiderata.explainers` is imported;
third-party methods register through the ``desiderata.explainers`` entry
point group (each entry point names an `Explainer` subclass).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from desiderata.explainers.base import Explainer, Kind
from desiderata.server.errors import InvalidArgument

__all__ = ["default_method", "get", "load_plugins", "names", "register"]

_REGISTRY: dict[str, type[Explainer]] = {}
_DEFAULTS: dict[Kind, str] = {}


def register(cls: type[Explainer], *, default_for_kind: bool = False) -> type[Explainer]:
    """Adds a method; a second registration of the same name is a bug."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"explainer {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    if default_for_kind:
        _DEFAULTS[cls.capabilities.kind] = cls.name
    return cls


def get(name: str, field_path: str = "params.method") -> type[Explainer]:
    """The method registered under `name`; INVALID_ARGUMENT when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgument.single(field_path, f"unknown method {name!r}; known: {sorted(_REGISTRY)}") from None


def names(kind: Kind | None = None) -> list[str]:
    """Registered method names, optionally of one family."""
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.capabilities.kind == kind)


def default_method(kind: Kind) -> str | None:
    return _DEFAULTS.get(kind)


def load_plugins() -> list[str]:
    """Registers methods declared by installed distributions; returns their names."""
    loaded = []
    for ep in entry_points(group="desiderata.explainers"):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise TypeError(f"entry point {ep.name!r} is not an Explainer subclass")
        register(cls)
        loaded.append(cls.name)
    return loaded
