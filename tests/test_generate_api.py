"""`inference/generate.py` uses only transformers' public generation API: private helpers (`_beam_search`'s
`_get_top_k_continuations`, the prepared config's `_pad_token_tensor`, ...) change between minor releases, and the
supported range (pyproject, scripts/test_transformers_range.sh) must hold for every release in it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

# By module name: `ponderlm.inference.generate` the attribute is the function, not the module.
SOURCE = Path(importlib.import_module("ponderlm.inference.generate").__file__)
# Where transformers documents its generation API (top-level names and the `transformers.generation` package).
PUBLIC_MODULES = ("transformers", "transformers.generation")


def transformers_imports(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, name) of every `from transformers... import name` in the file, at any depth."""
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "transformers"
            for alias in node.names]


def test_transformers_names_come_from_public_modules():
    imports = transformers_imports(ast.parse(SOURCE.read_text(encoding="utf-8")))
    assert imports, "generate.py is expected to use transformers' generation API"
    for module, name in imports:
        assert module in PUBLIC_MODULES, f"{module}.{name}: import it from {' or '.join(PUBLIC_MODULES)}"
        assert not name.startswith("_"), f"{module}.{name} is private"
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} is not exported"


def test_no_private_attribute_is_used():
    """No `obj._name` at all: generate.py's own helpers are module functions, so any such access would reach
    into a transformers object (the model's GenerationMixin methods, the prepared GenerationConfig)."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    private = sorted({f"{ast.unparse(node.value)}.{node.attr} (line {node.lineno})" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                      and not (node.attr.startswith("__") and node.attr.endswith("__"))})
    assert not private, f"private attributes used: {private}"
