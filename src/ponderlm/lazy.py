"""Lazy package exports (PEP 562), so that importing a package of ponderlm does not load torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: a name of `exports` is imported from its module ("" = the name is a
    submodule of `package`) on first use and bound on the package, so later lookups skip this."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name] or f"{package}.{name}")
        value = getattr(module, name) if exports[name] else module
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
