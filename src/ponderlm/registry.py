"""The method registry: method name -> `PonderMethod` subclass.

A leaf module (it imports nothing from ponderlm), so `ponderlm.config` can ask a method for its facts
without importing the methods package; `ponderlm.methods` fills it when imported (the package root
imports it, so importing any ponderlm module fills the registry first).
"""

from __future__ import annotations

from typing import Any

REGISTRY: dict[str, Any] = {}


def register_method(name: str):
    """Class decorator: `@register_method("name")` makes `PonderConfig(method="name")` build this class."""

    def wrap(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def method_class(name: str) -> Any:
    """The registered class of method `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method {name!r} is not implemented; available: {', '.join(sorted(REGISTRY))}") from None


def method_names(**facts: Any) -> tuple[str, ...]:
    """Registered names (sorted) whose class has all the given facts, e.g. `method_names(adaptive=True)`."""
    return tuple(sorted(n for n, c in REGISTRY.items() if all(getattr(c, k) == v for k, v in facts.items())))
