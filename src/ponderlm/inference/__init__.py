"""Inference: token-by-token decoding with real early exit, generation, step and FLOP accounting.

Imports are lazy so `import ponderlm.inference` does not load torch.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ponderlm.lazy import lazy_exports

_EXPORTS = {
    "decode_options": "ponderlm.inference.sequential",
    "sequential_logits": "ponderlm.inference.sequential",
    "generate": "ponderlm.inference.generate",
}
__all__ = ["decode_options", "generate", "sequential_logits"]
__getattr__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule `ponderlm.inference.generate` binds it on this package under the name of
        # the function it defines; `ponderlm.inference.generate` stays the function, as when this file
        # imported it eagerly.
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
