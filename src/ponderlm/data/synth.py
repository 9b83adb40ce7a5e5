"""Controlled reasoning sets with a known per-token difficulty (`ponderlm data synth`, docs/REASONING.md).

Each task writes the same prepared-data directory `prepare_data` does (uint16 token shards + meta.json +
`tokenizer/`), so `ponderlm train data.data_dir=DIR` trains on it unchanged, plus two per-token side
streams aligned with the tokens: `{split}_mask_000.bin` (uint8, 1 on answer tokens: the loss mask) and
`{split}_difficulty_000.bin` (uint8, the true difficulty of each answer token, 0 elsewhere).

Every example is exactly `example_len` tokens (right-padded with `<|endoftext|>`, at least one), so any
`data.seq_len` that is a multiple of it cuts windows on example boundaries; the default length is a power
of two, so the trainer's default seq_len of 256 works. Splits are train / val / test. A split is a fixed
function of the example's *structure* (the permutation, or the set of chains), never of the seed, so no
structure is shared between splits whatever seeds or sizes are asked for.

Tasks (token strings are whitespace-separated words of a tiny word-level vocabulary):

- `hops`: pointer chasing. A random permutation p of `symbols` symbols is given as shuffled pair tokens
  `s3>s5` (one token = one edge). After a separator `|`, `queries` queries `h<k> s<q> s<a>` ask for
  a = p^k(q); the hop count k is drawn per query from `hops` (weights `hop_weights`) and is the query's
  marker token, so difficulty varies token by token and the answer's difficulty is k. With
  `perm="cycle"` (default) p is a single n-cycle, so p^j(q) differs for every j < n: no query can be
  answered with fewer than k edge lookups by a fixed point or a short cycle.
- `chains`: variable dereference. `queries` independent chains of `max(depths)` distinct variables:
  `v7=c2` (a constant), then `v1=v7`, `v4=v1`, ... as shuffled assignment tokens. Queries `? v<x> c<y>`
  ask for the constant a variable resolves to; its depth d (1 = directly assigned) is drawn per query
  from `depths` and is *not* shown: the model has to discover how far to follow. Each query has a
  chain of its own, so a query's value is reachable only through exactly d assignments.

Variants whose defaults reproduce the sets above byte for byte (docs/REASONING.md, protocol Part B):

- `hops` with `hop_marker=False`: no query says its hop count. Some symbols are *stops*, shown on the edge
  that leads into them (`s3>s5*`); a query `? s<q> s<a>` asks for the first stop reached from q, and its
  difficulty is the number of hops that takes (drawn from `hops`; the cycle and its stops are built to fit).
- `chains` with `distractors` (more chains than queries; without replacement the extra ones are never
  queried), `constants` ("distinct": no two chains of an example hold the same constant; "shared": every
  constant an example holds is held by exactly two chains) and `queries_with_replacement` (a query picks its
  chain at random among all of them, so a chain may be asked twice or never): these close the elimination
  shortcut of the plain set, where every chain is asked exactly once, so the last unanswered constant in the
  context answers the last query without following any chain.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ponderlm.errors import PonderError

TASKS = ("hops", "chains")
SPLITS = ("train", "val", "test")
EOT = "<|endoftext|>"
UNK = "<unk>"
# The split of a structure: sha256 bucket in [0, 1000); test below test_permille, then val, else train.
FORMAT_VERSION = 1


@dataclass
class Example:
    """One example: its tokens (strings), and for each answer position its difficulty and the query."""

    tokens: list[str]
    answers: list[tuple[int, int]]  # (position of the answer token, difficulty)
    structure: str  # what decides the split (the permutation / the chains), canonical text


@dataclass
class SynthOptions:
    """Sizes and distributions of a synthetic set. `None` fields take the task's default."""

    task: str = "hops"
    symbols: int = 8  # hops: permutation size; chains: number of constants (values)
    hops: tuple[int, ...] = (1, 2, 3, 4)  # hops: hop counts; chains: depths
    hop_weights: tuple[float, ...] | None = None  # relative frequency of each entry of `hops` (None = uniform)
    queries: int | None = None  # per example (hops: 7, chains: 4)
    perm: str = "cycle"  # hops: "cycle" (single n-cycle) or "any" (uniform permutation)
    example_len: int | None = None  # tokens per example incl. padding (None = next power of two)
    train: int = 20000
    val: int = 500
    test: int = 2000
    val_permille: int = 100  # share of structures (per mille) reserved for val
    test_permille: int = 100  # and for test
    seed: int = 0
    # Variants (defaults = the original sets, byte for byte; docs/REASONING.md):
    hop_marker: bool = True  # hops: False = no `h<k>` marker; queries follow the cycle to the first stop symbol
    distractors: int = 0  # chains: extra chains in the context (never queried, unless queries_with_replacement)
    constants: str = "iid"  # chains: how chains get their constants: iid | distinct | shared
    queries_with_replacement: bool = False  # chains: each query picks any chain at random (repeats allowed)
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)

    def resolved(self) -> SynthOptions:
        """A copy with defaults filled in and everything checked (one-line PonderError on a bad value)."""
        o = SynthOptions(**{k: v for k, v in asdict(self).items() if k != "_derived"})
        if o.task not in TASKS:
            raise PonderError(f"unknown task {o.task!r}; choose from {', '.join(TASKS)}")
        o.hops = tuple(int(h) for h in o.hops)
        if not o.hops or min(o.hops) < 1 or len(set(o.hops)) != len(o.hops):
            raise PonderError(f"--hops must be distinct positive integers, got {list(o.hops)}")
        if max(o.hops) > 255:
            raise PonderError(f"--hops values must be at most 255 (stored as uint8), got {max(o.hops)}")
        if o.hop_weights is not None:
            o.hop_weights = tuple(float(w) for w in o.hop_weights)
            # NaN passes `< 0` and `<= 0` alike (and inf makes every probability NaN): finiteness is explicit
            if len(o.hop_weights) != len(o.hops) or not all(math.isfinite(w) and w >= 0 for w in o.hop_weights) \
                    or sum(o.hop_weights) <= 0:
                raise PonderError(f"--hop-weights needs {len(o.hops)} non-negative numbers with a positive sum, "
                                  f"got {list(o.hop_weights)}")
        if not 0 <= o.seed < 2**32:  # numpy's seed words are 32-bit
            raise PonderError(f"--seed must be in [0, 2**32), got {o.seed}")
        if o.queries is None:
            o.queries = 7 if o.task == "hops" else 4
        if o.queries < 1:
            raise PonderError(f"--queries must be at least 1, got {o.queries}")
        _check_variant_options(o)
        if o.task == "hops":
            if o.perm not in ("cycle", "any"):
                raise PonderError(f"--perm must be cycle or any, got {o.perm!r}")
            if o.symbols < 2:
                raise PonderError(f"--symbols must be at least 2, got {o.symbols}")
            if o.queries > o.symbols:
                raise PonderError(f"--queries ({o.queries}) cannot exceed --symbols ({o.symbols}): query symbols "
                                  "are distinct within an example")
            if o.perm == "cycle" and max(o.hops) >= o.symbols:
                raise PonderError(f"with --perm cycle every hop count must be below --symbols ({o.symbols}); "
                                  f"p^{o.symbols} is the identity. Got hops {list(o.hops)}")
            if not o.hop_marker:
                # Query symbols are distinct and each needs its own symbol at its distance from a stop: the
                # easiest possible draw (every query at the lightest drawable hop count) must fit in the cycle.
                weights = o.hop_weights or (1.0,) * len(o.hops)
                lightest = min(h for h, w in zip(o.hops, weights) if w > 0)
                if o.queries * lightest > o.symbols:
                    raise PonderError(f"--no-hop-marker: {o.queries} queries of at least {lightest} hops need "
                                      f"{o.queries * lightest} symbols, more than --symbols {o.symbols}")
            context = o.symbols
        else:
            if o.symbols < 2:
                raise PonderError(f"--symbols (constants) must be at least 2, got {o.symbols}")
            context = (o.queries + o.distractors) * max(o.hops)
        size = vocabulary_size(o)
        if size > MAX_VOCAB:  # tokens are stored as uint16; the vocabulary grows with symbols squared
            raise PonderError(f"this task's vocabulary would have {size:,} tokens, more than the {MAX_VOCAB:,} a "
                              "uint16 token id holds; use fewer --symbols (or --queries / --hops for chains)")
        need = context + 1 + 3 * o.queries + 1  # context, separator, queries, at least one eos
        if o.example_len is None:
            o.example_len = 1 << (need - 1).bit_length()
        elif o.example_len < need:
            raise PonderError(f"--example-len {o.example_len} is too short: this task needs {need} tokens "
                              "per example (context + separator + 3 per query + eos)")
        for name in SPLITS:
            if getattr(o, name) < 1:
                raise PonderError(f"--{name} must be at least 1 example, got {getattr(o, name)}")
        if not (0 < o.val_permille < 1000 and 0 < o.test_permille < 1000 and o.val_permille + o.test_permille < 1000):
            raise PonderError("val and test shares (per mille) must be positive and sum to less than 1000")
        o._derived = {"context_tokens": context, "min_example_len": need}
        return o


CONSTANT_MODES = ("iid", "distinct", "shared")


def _check_variant_options(o: SynthOptions) -> None:
    """One-line errors for the variant options: each belongs to one task, and each has its own limits."""
    chain_flags = [flag for flag, on in (("--distractors", o.distractors != 0),
                                         ("--constants", o.constants != "iid"),
                                         ("--queries-with-replacement", o.queries_with_replacement)) if on]
    if o.task == "hops" and chain_flags:
        raise PonderError(f"{', '.join(chain_flags)} {'applies' if len(chain_flags) == 1 else 'apply'} to --task "
                          "chains only")
    if o.task == "chains" and not o.hop_marker:
        raise PonderError("--no-hop-marker applies to --task hops only (chains never shows a query's depth)")
    if o.task == "hops" and not o.hop_marker and o.perm != "cycle":
        raise PonderError("--no-hop-marker needs --perm cycle (a short cycle without a stop would never end)")
    if isinstance(o.distractors, bool) or not isinstance(o.distractors, int) or o.distractors < 0:
        raise PonderError(f"--distractors must be a non-negative integer, got {o.distractors!r}")
    if o.constants not in CONSTANT_MODES:
        raise PonderError(f"--constants must be one of {', '.join(CONSTANT_MODES)}, got {o.constants!r}")
    chains = o.queries + o.distractors
    if o.task == "chains" and o.constants == "distinct" and chains > o.symbols:
        raise PonderError(f"--constants distinct: {chains} chains (--queries + --distractors) need at least as many "
                          f"constants, got --symbols {o.symbols}")
    if o.task == "chains" and o.constants == "shared" and (chains % 2 or chains // 2 > o.symbols):
        raise PonderError(f"--constants shared pairs the chains (two per constant): --queries + --distractors must "
                          f"be even and at most 2 x --symbols, got {chains} chains and {o.symbols} constants")


# ---------------------------------------------------------------------------------------------- vocabulary
MAX_VOCAB = 1 << 16


def vocabulary_size(o: SynthOptions) -> int:
    """len(vocabulary(o)), computed without building it (a huge --symbols would allocate millions of strings)."""
    if o.task == "hops" and not o.hop_marker:
        return 4 + o.symbols + 2 * o.symbols**2
    if o.task == "hops":
        return 3 + len(o.hops) + o.symbols + o.symbols**2
    nvars = (o.queries + o.distractors) * max(o.hops)
    return 4 + nvars + o.symbols + nvars * (nvars - 1) + nvars * o.symbols


def vocabulary(o: SynthOptions) -> list[str]:
    """All token strings of a task, in id order: `<|endoftext|>` (0: eos / pad), `<unk>` (1), then the task's."""
    words = [EOT, UNK, "|"]
    if o.task == "hops" and not o.hop_marker:
        n = o.symbols
        words += ["?"]
        words += [f"s{i}" for i in range(n)]
        words += [f"s{i}>s{j}" for i in range(n) for j in range(n)]
        words += [f"s{i}>s{j}*" for i in range(n) for j in range(n)]  # the edge into a stop
    elif o.task == "hops":
        n = o.symbols
        words += [f"h{k}" for k in o.hops]
        words += [f"s{i}" for i in range(n)]
        words += [f"s{i}>s{j}" for i in range(n) for j in range(n)]
    else:
        nvars = (o.queries + o.distractors) * max(o.hops)
        words += ["?"]
        words += [f"v{i}" for i in range(nvars)] + [f"c{j}" for j in range(o.symbols)]
        words += [f"v{i}=v{j}" for i in range(nvars) for j in range(nvars) if i != j]
        words += [f"v{i}=c{j}" for i in range(nvars) for j in range(o.symbols)]
    return words


# ---------------------------------------------------------------------------------------------- splits
def split_of(structure: str, o: SynthOptions) -> str:
    """The split a structure belongs to: a fixed function of the structure text (never of the seed)."""
    bucket = int(hashlib.sha256(f"{o.task}:{structure}".encode()).hexdigest()[:8], 16) % 1000
    if bucket < o.test_permille:
        return "test"
    if bucket < o.test_permille + o.val_permille:
        return "val"
    return "train"


def _difficulty_draws(rng: np.random.Generator, o: SynthOptions, n: int) -> np.ndarray:
    hops = np.asarray(o.hops)
    if o.hop_weights is None:
        return hops[rng.integers(0, len(hops), size=n)]
    p = np.asarray(o.hop_weights, dtype=np.float64)
    return rng.choice(hops, size=n, p=p / p.sum())


# ---------------------------------------------------------------------------------------------- tasks
def _permutation(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "any":
        return rng.permutation(n)
    order = rng.permutation(n)  # a single n-cycle: order[0] -> order[1] -> ... -> order[-1] -> order[0]
    p = np.empty(n, dtype=np.int64)
    p[order] = np.roll(order, -1)
    return p


def hops_example(rng: np.random.Generator, o: SynthOptions) -> Example:
    n = o.symbols
    p = _permutation(rng, n, o.perm)
    tokens = [f"s{i}>s{int(p[i])}" for i in rng.permutation(n)]
    tokens.append("|")
    answers = []
    for q, k in zip(rng.permutation(n)[: o.queries], _difficulty_draws(rng, o, o.queries)):
        a = int(q)
        for _ in range(int(k)):
            a = int(p[a])
        tokens += [f"h{int(k)}", f"s{int(q)}", f"s{a}"]
        answers.append((len(tokens) - 1, int(k)))
    return Example(tokens, answers, " ".join(str(int(v)) for v in p))


def _stop_segments(rng: np.random.Generator, ks: np.ndarray, n: int, top: int) -> list[int] | None:
    """Lengths of the runs of a cycle that each end in a stop, such that the drawn hop counts `ks` can be asked
    at distinct symbols (None when no cycle of n symbols can serve them).

    A run of length L offers exactly one symbol at each distance 1..L from the next stop (its L - 1 non-stops
    and the stop before it), so `ks` fits iff, for every d, at least m_d runs are d or longer, where m_d is the
    largest number of queries of any one hop count d' >= d; the shortest such cycle has sum(m_d) symbols. The
    remaining symbols each grow a random run (up to `top`, so every symbol is within `top` hops of a stop) or
    start a new one."""
    counts = np.bincount(ks, minlength=top + 1)[1:]
    need = np.maximum.accumulate(counts[::-1])[::-1]  # need[d - 1] = m_d
    if int(need.sum()) > n:
        return None
    lengths = [int((need > j).sum()) for j in range(int(need[0]))]
    for _ in range(n - int(need.sum())):
        growable = [i for i, length in enumerate(lengths) if length < top]
        pick = int(rng.integers(len(growable) + 1))
        if pick == len(growable):
            lengths.append(1)
        else:
            lengths[growable[pick]] += 1
    return [lengths[i] for i in rng.permutation(len(lengths))]


def hops_stops_example(rng: np.random.Generator, o: SynthOptions) -> Example:
    """`hops` without the hop marker: each query asks for the first stop after its symbol (see the docstring)."""
    n, top = o.symbols, max(o.hops)
    for _ in range(1000):
        ks = _difficulty_draws(rng, o, o.queries)
        lengths = _stop_segments(rng, ks, n, top)
        if lengths is not None:
            break
    else:  # resolved() ensures some draw fits; only extreme --hop-weights make them all this unlikely
        raise PonderError(f"--no-hop-marker: could not fit {o.queries} queries of hops {list(o.hops)} into "
                          f"{n} symbols; use fewer --queries or more --symbols")
    cycle = rng.permutation(n)  # cycle[i] -> cycle[i + 1]; each run ends in a stop
    p = np.empty(n, dtype=np.int64)
    p[cycle] = np.roll(cycle, -1)
    stop = np.zeros(n, dtype=bool)
    stop[cycle[np.cumsum(lengths) - 1]] = True
    distance = np.zeros(n, dtype=np.int64)  # hops from each symbol to the first stop after it
    for s in range(n):
        a, k = int(p[s]), 1
        while not stop[a]:
            a, k = int(p[a]), k + 1
        distance[s] = k
    tokens = [f"s{i}>s{int(p[i])}" + ("*" if stop[p[i]] else "") for i in rng.permutation(n)]
    tokens.append("|")
    answers, used = [], set()
    for k in ks:
        free = [s for s in range(n) if distance[s] == k and s not in used]
        q = free[int(rng.integers(len(free)))]
        used.add(q)
        a = q
        for _ in range(int(k)):
            a = int(p[a])
        tokens += ["?", f"s{q}", f"s{a}"]
        answers.append((len(tokens) - 1, int(k)))
    # the split is decided by the permutation alone, as for the marked task: no cycle is shared between splits
    return Example(tokens, answers, " ".join(str(int(v)) for v in p))


def _chain_constants(rng: np.random.Generator, o: SynthOptions, chains: int) -> np.ndarray:
    if o.constants == "distinct":  # every constant at most once: how often one occurs says nothing
        return rng.choice(o.symbols, size=chains, replace=False)
    if o.constants == "shared":  # every constant exactly twice: an answered constant may still be the answer
        pool = rng.choice(o.symbols, size=chains // 2, replace=False)
        return np.repeat(pool, 2)[rng.permutation(chains)]
    return rng.integers(0, o.symbols, size=chains)  # "iid": the original draw


def chains_example(rng: np.random.Generator, o: SynthOptions) -> Example:
    depth = max(o.hops)
    # chains 0..queries-1 are asked once each, the rest never; with replacement, queries pick among all of them
    chains = o.queries + o.distractors
    nvars = chains * depth
    # chain c: names[c, 0] is assigned a constant, names[c, i] is assigned names[c, i - 1]
    names = rng.permutation(nvars).reshape(chains, depth)
    values = _chain_constants(rng, o, chains)
    assigns = []
    for c in range(chains):
        assigns.append(f"v{int(names[c, 0])}=c{int(values[c])}")
        assigns += [f"v{int(names[c, i])}=v{int(names[c, i - 1])}" for i in range(1, depth)]
    tokens = [assigns[i] for i in rng.permutation(len(assigns))]
    tokens.append("|")
    if o.queries_with_replacement:
        picks, asked = [], set()
        for d in _difficulty_draws(rng, o, o.queries):
            # Any chain, distractors included: were these never asked, an answer already given would be the
            # likely answer again (a chain asked twice), a shortcut as strong as the one this option removes.
            # Except a chain already asked at this depth: that query could be answered by copying its answer.
            free = [c for c in range(chains) if (c, int(d)) not in asked]
            c = free[int(rng.integers(len(free)))]
            asked.add((c, int(d)))
            picks.append((c, d))
    else:
        picks = list(zip(rng.permutation(o.queries), _difficulty_draws(rng, o, o.queries)))
    answers = []
    for c, d in picks:
        tokens += ["?", f"v{int(names[c, int(d) - 1])}", f"c{int(values[c])}"]
        answers.append((len(tokens) - 1, int(d)))
    return Example(tokens, answers, " ".join(sorted(assigns)))


GENERATORS = {"hops": hops_example, "chains": chains_example}
VARIANT_DEFAULTS = {"hop_marker": True, "distractors": 0, "constants": "iid", "queries_with_replacement": False}


def generate_split(o: SynthOptions, split: str, count: int) -> list[Example]:
    """`count` examples of `split`, deterministic in (options, seed, split): examples whose structure hashes
    to another split are redrawn (rejection), so no permutation / chain set is ever shared between splits."""
    o = o.resolved() if not o._derived else o
    seed_words = [o.seed, SPLITS.index(split), int(hashlib.sha256(o.task.encode()).hexdigest()[:8], 16)]
    rng = np.random.Generator(np.random.PCG64(seed_words))
    make = hops_stops_example if o.task == "hops" and not o.hop_marker else GENERATORS[o.task]
    out: list[Example] = []
    tries = 0
    while len(out) < count:
        ex = make(rng, o)
        tries += 1
        if split_of(ex.structure, o) == split:
            out.append(ex)
        elif tries > 1000 * (count + 10):
            raise PonderError(f"could not draw {count} {split} examples: too few distinct structures for this "
                              "split; use more --symbols or larger split shares")
    return out


# ---------------------------------------------------------------------------------------------- encoding
def encode_examples(examples: Sequence[Example], o: SynthOptions, ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Flat streams for a split: tokens (uint16), mask (uint8: 1 on answers), difficulty (uint8)."""
    n, L = len(examples), o.example_len
    tokens = np.zeros((n, L), dtype=np.uint16)  # eos / pad = 0
    mask = np.zeros((n, L), dtype=np.uint8)
    diff = np.zeros((n, L), dtype=np.uint8)
    for i, ex in enumerate(examples):
        tokens[i, : len(ex.tokens)] = [ids[t] for t in ex.tokens]
        for pos, d in ex.answers:
            mask[i, pos] = 1
            diff[i, pos] = d
    return {"tokens": tokens.reshape(-1), "mask": mask.reshape(-1), "difficulty": diff.reshape(-1)}


def build_tokenizer(words: list[str]):
    """A word-level `PreTrainedTokenizerFast` over `words` (whitespace-split), eos = bos = pad = id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=UNK, model_max_length=1 << 30)


def synthesize(options: SynthOptions, out_dir: str | Path, *, overwrite: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Generate the task's train / val / test splits into `out_dir` (atomically); returns meta.json's content."""
    from tqdm.auto import tqdm

    from ponderlm.data.prepare import make_temp_dir, publish
    from ponderlm.data.tokenizer import tokenizer_identity
    from ponderlm.hub import update_json
    from ponderlm.version import __version__

    o = options.resolved()
    out = Path(out_dir)
    words = vocabulary(o)
    ids = {w: i for i, w in enumerate(words)}
    tmp = make_temp_dir(out, overwrite)
    try:
        meta: dict[str, Any] = {"dtype": "uint16", "vocab_size": len(words), "eos_id": 0, "tokens": {},
                                "documents": {}, "shards": {}, "loss_mask": {}, "difficulty": {},
                                "side_dtype": "uint8"}
        counts: dict[str, dict[str, int]] = {}
        for split in tqdm(SPLITS, desc=f"synth {o.task}", unit="split", disable=not progress):
            examples = generate_split(o, split, getattr(o, split))
            streams = encode_examples(examples, o, ids)
            for key, suffix, field_name in (("tokens", "", "shards"), ("mask", "_mask", "loss_mask"),
                                            ("difficulty", "_difficulty", "difficulty")):
                name = f"{split}{suffix}_000.bin"
                streams[key].astype(streams[key].dtype.newbyteorder("<"), copy=False).tofile(tmp / name)
                meta[field_name][split] = [{"file": name, "tokens": int(streams[key].size)}]
            meta["tokens"][split] = int(streams["tokens"].size)
            meta["documents"][split] = len(examples)
            diffs = streams["difficulty"][streams["mask"] == 1]
            counts[split] = {str(d): int((diffs == d).sum()) for d in sorted(set(o.hops))}
            counts[split]["structures"] = len({ex.structure for ex in examples})
        tokenizer = build_tokenizer(words)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        # transformers 4.x and 5.x both load this class
        update_json(tmp / "tokenizer" / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
        options_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items() if k != "_derived"}
        for key, default in VARIANT_DEFAULTS.items():  # unused variants are left out: old sets' meta.json unchanged
            if options_dict[key] == default:
                del options_dict[key]
        meta["tokenizer"] = tokenizer_identity(tokenizer, "synth")
        meta["synth"] = {"format": FORMAT_VERSION, "task": o.task, "options": options_dict,
                         "example_len": o.example_len, "answers_per_example": o.queries,
                         "difficulties": sorted(o.hops), "answer_counts": counts, **o._derived}
        meta["inputs"] = []
        meta["ponderlm_version"] = __version__
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class ReasoningSplit:
    """One split as examples: tokens / mask / difficulty, each [E, example_len] (int64 / bool / int64)."""

    tokens: np.ndarray
    mask: np.ndarray
    difficulty: np.ndarray
    meta: dict[str, Any]

    @property
    def task(self) -> str:
        return self.meta["synth"]["task"]


def read_split(data_dir: str | Path, split: str = "test", max_examples: int | None = None) -> ReasoningSplit:
    """Examples of a `ponderlm data synth` directory (a plain `data prepare` directory is refused)."""
    from ponderlm.data.loader import TokenStream, read_meta

    meta = read_meta(data_dir)
    if "synth" not in meta or "difficulty" not in meta:
        raise PonderError(f"{data_dir} is not a `ponderlm data synth` directory (meta.json has no synth section)")
    L = int(meta["synth"]["example_len"])
    streams = [TokenStream(data_dir, split, field=f) for f in ("shards", "loss_mask", "difficulty")]
    n = streams[0].num_tokens // L
    if max_examples is not None:
        n = min(n, max_examples)
    if n < 1:
        raise PonderError(f"the {split} split of {data_dir} has no examples")
    tokens, mask, diff = (s.read(0, n * L).reshape(n, L) for s in streams)
    return ReasoningSplit(tokens, mask.astype(bool), diff, meta)
