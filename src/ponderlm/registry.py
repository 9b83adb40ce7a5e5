"""The method registry: method name -> `PonderMethod` subclass.

A leaf module (it imports nothing from ponderlm but `errors`), so `ponderlm.config` can ask a method for its facts
without importing the methods package; `ponderlm.methods` fills it when imported. The package root stays
light (no torch at `import ponderlm`), so it registers a loader instead (`add_loader`): the first read of
the registry runs it, and any ponderlm module sees every built-in method without importing them itself.
That loader also registers the methods of installed plugins (`load_plugins`, entry-point group
`ponderlm.methods`), after the built-ins, so a plugin cannot take a built-in's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ponderlm.errors import PonderError

_loaders: list[Callable[[], None]] = []


def add_loader(loader: Callable[[], None]) -> None:
    """Run `loader` (which imports modules that register methods) before the registry is first read."""
    _loaders.append(loader)


def _load() -> None:
    while _loaders:  # popped first: a loader that reads the registry while importing sees a partial one, no loop
        _loaders.pop(0)()


class _Registry(dict):
    """A dict that runs the pending loaders before any read; writes (registration) never trigger them."""


def _after_load(read: Callable) -> Callable:
    @functools.wraps(read)
    def wrapper(self: _Registry, *args: Any) -> Any:
        _load()
        return read(self, *args)

    return wrapper


for _read in ("__getitem__", "__contains__", "__iter__", "__len__", "get", "keys", "values", "items"):
    setattr(_Registry, _read, _after_load(getattr(dict, _read)))

REGISTRY: dict[str, Any] = _Registry()


def register_method(name: str):
    """Class decorator: `@register_method("name")` makes `PonderConfig(method="name")` build this class.

    A name taken by another class is an error: a plugin that silently replaced a built-in method would change
    what every config of that name computes. Re-running the same definition (a module reloaded) replaces it."""

    def wrap(cls):
        old = dict.get(REGISTRY, name)  # a plain dict read: registering never runs the loaders
        if old is not None and _qualified(old) != _qualified(cls):
            raise PonderError(f"method {name!r} is already registered by {_qualified(old)}; "
                              f"{_qualified(cls)} cannot take the same name")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def _qualified(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


ENTRY_POINT_GROUP = "ponderlm.methods"


def load_plugins(group: str = ENTRY_POINT_GROUP) -> None:
    """Register the methods installed packages declare in the entry-point `group` (pyproject:
    `[project.entry-points."ponderlm.methods"] name = "package.module:Class"`). Loading the entry point imports
    its module; a class its module did not register itself is registered under the entry point's name."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            cls = ep.load()
        except Exception as exc:  # an uninstallable plugin must say which one it is, not fail deep in an import
            raise PonderError(f"method plugin {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(cls, type):
            raise PonderError(f"method plugin {ep.name!r} ({ep.value}) must name a class, got {type(cls).__name__}")
        if dict.get(REGISTRY, ep.name) is cls:
            continue
        if cls in dict.values(REGISTRY):
            raise PonderError(f"method plugin {ep.name!r} names {_qualified(cls)}, which is registered as "
                              f"{cls.name!r}; the entry point's name and @register_method must agree")
        register_method(ep.name)(cls)


def method_class(name: str) -> Any:
    """The registered class of method `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method {name!r} is not implemented; available: {', '.join(sorted(REGISTRY))}") from None


def method_names(**facts: Any) -> tuple[str, ...]:
    """Registered names (sorted) whose class has all the given facts, e.g. `method_names(adaptive=True)`."""
    return tuple(sorted(n for n, c in REGISTRY.items() if all(getattr(c, k) == v for k, v in facts.items())))
