"""Reference solvers and context-only "scripted readers" of the synthetic reasoning sets, read from the written files.

Written independently of the generator (`ponderlm.data.synth`): tokens are decoded with the directory's own
tokenizer.json and every answer is re-derived here. The readers score what can be had *without* following a chain
or a cycle past its first edge; protocol Part B (docs/protocols/DECISIVE.md) reads "chance" as the best of them, so
a model is only credited with depth above that floor. tests/test_synth_variants.py checks the readers on sets with a
known shortcut, and `floors` is what benchmarks/reasoning.py records beside each Part B task's results.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

Example = tuple[list[str], list[tuple[int, int]]]


def load_examples(data_dir: Path, split: str) -> list[Example]:
    """(token strings without padding, [(answer position, difficulty)]) per example, from the files alone."""
    meta = json.loads((data_dir / "meta.json").read_text())
    vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    words = {i: w for w, i in vocab.items()}
    L = meta["synth"]["example_len"]
    tokens = np.fromfile(data_dir / f"{split}_000.bin", dtype="<u2").reshape(-1, L)
    mask = np.fromfile(data_dir / f"{split}_mask_000.bin", dtype=np.uint8).reshape(-1, L)
    diff = np.fromfile(data_dir / f"{split}_difficulty_000.bin", dtype=np.uint8).reshape(-1, L)
    out = []
    for t, m, d in zip(tokens, mask, diff):
        strings = [words[int(i)] for i in t]
        end = strings.index("<|endoftext|>")
        if set(strings[end:]) != {"<|endoftext|>"}:
            raise ValueError(f"{data_dir}: an example is not right-padded")
        out.append((strings[:end], [(int(p), int(d[p])) for p in np.flatnonzero(m)]))
    return out


def queries(tokens: list[str]) -> list[tuple[int, str, str, str]]:
    """(answer position, marker token, query symbol, answer) of each query after the separator."""
    sep = tokens.index("|")
    return [(i + 2, tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(sep + 1, len(tokens), 3)]


# ---------------------------------------------------------------------------------------------- hops
def solve_hops_stops(tokens: list[str]) -> tuple[dict[str, str], set[str], list[tuple[int, str, int]]]:
    """Reference for `hops --no-hop-marker`: the successor map, the stop set, and per query (answer position,
    first stop, hops)."""
    sep = tokens.index("|")
    succ, stops = {}, set()
    for edge in tokens[:sep]:
        src, dst = edge.split(">")
        if dst.endswith("*"):
            dst = dst[:-1]
            stops.add(dst)
        if src in succ:
            raise ValueError(f"symbol {src} has two successors")
        succ[src] = dst
    solved = []
    for pos, marker, q, _ in queries(tokens):
        if marker != "?":
            raise ValueError(f"query marker {marker!r}, expected '?' (a marked set states its hop count)")
        a, hops = succ[q], 1
        while a not in stops:
            a, hops = succ[a], hops + 1
            if hops > len(succ):
                raise ValueError("a query never reaches a stop")
        solved.append((pos, a, hops))
    return succ, stops, solved


def stop_guess_accuracy(examples: list[Example]) -> tuple[float, int]:
    """A reader that follows one edge answers 1-hop queries; deeper ones it can only guess among the stops (the
    query's own symbol excluded). Expected accuracy on queries of 2 or more hops, and their number."""
    total, n = 0.0, 0
    for tokens, _ in examples:
        _, stops, solved = solve_hops_stops(tokens)
        for (_, _, q, answer), (_, _, hops) in zip(queries(tokens), solved):
            if hops >= 2:
                candidates = stops - {q}
                total += (answer in candidates) / len(candidates)
                n += 1
    return total / max(n, 1), n


# ---------------------------------------------------------------------------------------------- chains
def solve_chains(tokens: list[str]) -> tuple[dict[str, str], list[tuple[int, str, str, int, str]]]:
    """Reference: the assignments, and per query (answer position, variable, constant, depth, chain head)."""
    sep = tokens.index("|")
    value: dict[str, str] = {}
    for assign in tokens[:sep]:
        var, val = assign.split("=")
        if var in value:
            raise ValueError(f"variable {var} is assigned twice")
        value[var] = val
    solved = []
    for pos, marker, var, _ in queries(tokens):
        if marker != "?":
            raise ValueError(f"query marker {marker!r}, expected '?'")
        v, depth = var, 1
        while not value[v].startswith("c"):
            v, depth = value[v], depth + 1
        solved.append((pos, var, value[v], depth, v))
    return value, solved


def chain_heads(value: dict[str, str]) -> dict[str, str]:
    """Head variable -> constant of every chain in the context."""
    return {v: c for v, c in value.items() if c.startswith("c")}


def elimination_accuracy(examples: list[Example], symbols: int) -> tuple[float, int]:
    """Elimination reader, scored in expectation over its uniform guesses, on queries of depth >= 2: candidates =
    the constants of the context minus those already given as answers in the example."""
    total, n = 0.0, 0
    for tokens, _ in examples:
        value, solved = solve_chains(tokens)
        constants = set(chain_heads(value).values())
        given: list[str] = []
        for (_, _, _, depth, _), (_, _, _, answer) in zip(solved, queries(tokens)):
            if depth >= 2:  # a depth-1 query is one lookup; the reader does follow one assignment
                left = constants - set(given)
                total += (answer in left) / len(left) if left else 1 / symbols
                n += 1
            given.append(answer)
    return total / max(n, 1), n


def context_only_readers(examples: list[Example], symbols: int = 10) -> dict[str, float]:
    """Mean expected accuracy on depth >= 2 queries of readers that follow one assignment at most: elimination,
    by a constant's count in the context, repeating an answer already given in the example, and a uniform guess
    among the context's constants."""
    by_count = repeat = uniform = 0.0
    n = 0
    for tokens, _ in examples:
        value, solved = solve_chains(tokens)
        held = Counter(chain_heads(value).values())
        given: list[str] = []
        for (_, _, _, depth, _), (_, _, _, answer) in zip(solved, queries(tokens)):
            if depth >= 2:
                n += 1
                by_count += held[answer] / sum(held.values())
                pool = set(given) or set(held)
                repeat += (answer in pool) / len(pool)
                uniform += (answer in held) / len(held)
            given.append(answer)
    n = max(n, 1)
    return {"elimination": elimination_accuracy(examples, symbols)[0], "count": by_count / n,
            "repeat": repeat / n, "uniform": uniform / n}


def floors(data_dir: Path, split: str = "test") -> dict[str, float] | None:
    """The context-only readers' accuracy on the multi-step queries of a prepared synthetic set (None for a set
    these readers do not apply to: the marked `hops` task states its hop count)."""
    options = json.loads((data_dir / "meta.json").read_text())["synth"]["options"]
    examples = load_examples(data_dir, split)
    if options["task"] == "chains":
        return context_only_readers(examples, options["symbols"])
    if options["task"] == "hops" and not options.get("hop_marker", True):
        return {"stop_guess": stop_guess_accuracy(examples)[0]}
    return None
