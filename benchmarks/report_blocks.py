"""Generated blocks in hand-written documents, and the check that they have not drifted.

A document may hold blocks written by a report generator:

    <!-- generated: NAME (python benchmarks/render_reports.py) -->
    ...whatever the renderer NAME returns...
    <!-- /generated: NAME -->

`update` rewrites every block from its renderer; `check` re-renders and reports each block whose text differs
(a hand-edited number, a stale setting). Headline sentences belong inside the blocks, so they cannot drift from
the data they summarise without the check noticing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

Renderer = Callable[[], str]

_BLOCK = re.compile(r"<!-- generated: (?P<name>[\w.-]+)(?: \([^)]*\))? -->\n(?P<body>.*?)"
                    r"<!-- /generated: (?P=name) -->", re.S)


def blocks(text: str) -> dict[str, str]:
    """name -> body of every generated block in `text`."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def _body(rendered: str) -> str:
    return rendered if rendered.endswith("\n") else rendered + "\n"


def render(text: str, renderers: Mapping[str, Renderer]) -> str:
    """`text` with every generated block replaced by its renderer's output; an unknown block name is an error."""
    unknown = sorted(set(blocks(text)) - set(renderers))
    if unknown:
        raise KeyError(f"no renderer for generated block(s) {', '.join(unknown)}")
    cache: dict[str, str] = {}

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in cache:
            cache[name] = _body(renderers[name]())
        head = m.group(0).split("\n", 1)[0]
        return f"{head}\n{cache[name]}<!-- /generated: {name} -->"

    return _BLOCK.sub(fill, text)


def update(path: Path, renderers: Mapping[str, Renderer]) -> bool:
    """Rewrite the generated blocks of `path`; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    new = render(text, renderers)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def check(path: Path, renderers: Mapping[str, Renderer]) -> list[str]:
    """One line per drifted block of `path` (empty: every block is what its generator writes)."""
    text = path.read_text(encoding="utf-8")
    found = blocks(text)
    problems = [f"{path}: generated block '{name}' is missing" for name in renderers if name not in found]
    rendered = blocks(render(text, {n: r for n, r in renderers.items() if n in found}))
    for name, body in found.items():
        if body != rendered[name]:
            old, new = body.splitlines(), rendered[name].splitlines()
            first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            problems.append(f"{path}: generated block '{name}' differs from its generator at its line {first + 1}: "
                            f"{(old[first] if first < len(old) else '<end>')!r} vs "
                            f"{(new[first] if first < len(new) else '<end>')!r}")
    return problems
