"""The import graph of `ponderlm` has no cycle and no upward edge, and its folders form a strict order with no
folder-level cycle: the CLI's command modules (`ponderlm.commands`) sit above the library, which never imports them
(docs/ARCHITECTURE.md shows the layers).

Every `import` statement anywhere in a module counts (also inside functions and `TYPE_CHECKING` blocks):
a deferred import is still a dependency. The checker is tested on a small graph with a known cycle, a known
upward edge and a known folder-level cycle, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first, by folder (or top-level module). A module may import modules of its own layer or below; folders of one
# layer may import each other one way only (no folder-level cycle).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "paths", "registry", "version", "hub", "lazy", "declared"),  # leaves: no ponderlm imports but these
    ("config",),
    ("backbone",),
    ("flops",),  # cost-model vocabulary the methods build their cost models from
    ("methods",),
    ("inference",),  # drivers over the method's per-slot policy: sequential, generate
    ("modeling",),  # the Hugging Face model class: backbone + method + generate
    ("loading", "data"),
    ("eval", "train"),
    ("serve", "plan", "benchmarking"),  # the server, the planner, the speed measurements
    ("commands", "cli", "__main__", "ponderlm"),  # the CLI's command modules and the package root
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_edges(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package modules it imports (a submodule import counts as that submodule only)."""
    paths = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in paths}
                targets |= subs
                if len(subs) < len(node.names) and base in paths:
                    targets.add(base)
        edges[name] = targets - {name}
    return edges


def folder(module: str, package: str = "ponderlm") -> str:
    """The folder or top-level module a module belongs to (`eval` for ponderlm.eval.pareto; the root is `ponderlm`)."""
    return module[len(package) + 1:].split(".")[0] if module != package else package


def folder_edges(edges: dict[str, set[str]], package: str = "ponderlm") -> dict[str, set[str]]:
    """folder -> the other folders its modules import."""
    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        out.setdefault(folder(a, package), set()).update(folder(b, package) for b in targets)
    return {f: targets - {f} for f, targets in out.items()}


def layer_of(module: str, package: str = "ponderlm") -> int:
    for index, layer in enumerate(LAYERS):
        if folder(module, package) in layer:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_import_graph.py::LAYERS: place it")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward_edges(edges: dict[str, set[str]], package: str = "ponderlm") -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer_of(b, package) > layer_of(a, package))


def test_no_import_cycle_and_no_upward_edge():
    edges = import_edges(SRC, "ponderlm")
    assert len(edges) > 50 and "ponderlm.methods.base" in edges["ponderlm.methods.ponderlm3"]
    assert cycles(edges) == []
    assert upward_edges(edges) == []
    assert cycles(folder_edges(edges)) == []
    assert [a for a, t in edges.items() if folder(a) != "commands" and "commands" in map(folder, t)] == []


def test_methods_see_no_model_object():
    """A method computes with the `Backbone` view: nothing under methods/ imports the HF model module."""
    edges = import_edges(SRC, "ponderlm")
    offenders = [m for m, t in edges.items() if m.startswith("ponderlm.methods") and "ponderlm.modeling" in t]
    assert offenders == []


@pytest.fixture
def toy_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "ponderlm"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from ponderlm.modeling import Model  # deferred, still an edge\n")
    (pkg / "modeling.py").write_text("from ponderlm.methods import base\n")
    (pkg / "methods" / "__init__.py").write_text("")
    (pkg / "methods" / "base.py").write_text("from ..config import f\n")
    for sub, files in {"eval": {"a": "from ponderlm.train import b\n", "d": ""},
                       "train": {"b": "", "c": "from ..eval import d\n"}}.items():  # folders only in a cycle
        (pkg / sub).mkdir()
        (pkg / sub / "__init__.py").write_text("")
        for name, text in files.items():
            (pkg / sub / f"{name}.py").write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_and_an_upward_edge(toy_package: Path):
    edges = import_edges(toy_package, "ponderlm")
    assert edges["ponderlm.methods.base"] == {"ponderlm.config"}
    assert edges["ponderlm.modeling"] == {"ponderlm.methods.base"}
    assert cycles(edges) == [["ponderlm.config", "ponderlm.methods.base", "ponderlm.modeling"]]
    assert upward_edges(edges) == ["ponderlm.config -> ponderlm.modeling"]
    assert sorted(cycles(folder_edges(edges))) == [["config", "methods", "modeling"], ["eval", "train"]]
