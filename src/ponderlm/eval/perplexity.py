"""Perplexity, executed steps and FLOPs of a checkpoint on held-out text, through the parallel eval forward.

Everything in `ponderlm.eval` is built on `collect_token_stats`: one eval-mode forward per batch under
given decoding options (a `DecodeOptions` and / or the knobs the method declares: tau, alpha, the
fixed-pruning policy, Jacobi sweeps, ...), keeping the per-token NLL and executed steps. For PonderLM-3
the eval forward is the thresholded Jacobi solve that agrees with sequential decoding (METHODS.md §6), so
these numbers are what decoding would give.

Token alignment: position t of a window consumes token x_t, spends `executed_steps[t]` additional
steps on it and predicts x_{t+1}; its NLL is -log p(x_{t+1}). The last position of a window has no
target, but its steps are compute all the same, so averages of steps run over every position.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ponderlm.errors import PonderError
from ponderlm.flops import flops
from ponderlm.loading import load_model, resolve_device, resolve_model_dir  # noqa: F401  (public here too)
from ponderlm.methods.options import DecodeOptions
from ponderlm.registry import method_class


# ------------------------------------------------------------------ evaluation data
def eval_batches(
    data: str | Path,
    tokenizer,
    *,
    split: str = "val",
    seq_len: int = 256,
    batch_size: int = 8,
    max_batches: int | None = None,
) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows [b, seq_len] of held-out tokens, the same for every setting.

    data: a `ponderlm data prepare` directory (its `split`), "default" (the bundled corpus's fixed
    split, tokenized here with the model's tokenizer so any checkpoint can be scored), "heldout" (the
    bundled held-out text, from none of the corpus's sources, all of it; `split` must be "val"), or text /
    jsonl / parquet files and directories (all their documents; `split` must be left at "val").
    """
    if seq_len < 2 or batch_size < 1:
        raise PonderError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
    spec = str(data)
    path = Path(spec).expanduser()
    if (path / "meta.json").is_file():
        from ponderlm.data.loader import iter_eval_batches, read_meta

        vocab = int(read_meta(path)["vocab_size"])
        if vocab > len(tokenizer):
            raise PonderError(f"{path} was tokenized with a {vocab}-token vocabulary but the model's tokenizer has "
                              f"{len(tokenizer)}; prepare the data with the model's tokenizer")
        batches = list(iter_eval_batches(path, split, seq_len, batch_size, max_batches))
    else:
        # Windows are taken from the start, so with max_batches only that much text needs tokenizing.
        needed = None if max_batches is None else max_batches * batch_size * seq_len
        ids = _tokenize_documents(_documents(spec, split), tokenizer, needed)
        n = len(ids) // seq_len
        if n == 0:
            raise PonderError(f"{spec} has {len(ids)} tokens, fewer than seq_len={seq_len}")
        windows = torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len))
        batches = list(windows.split(batch_size))[:max_batches]
    if not batches:
        raise PonderError(f"no evaluation batches from {spec} (max_batches={max_batches})")
    return batches


def _documents(spec: str, split: str) -> Iterable[str]:
    from ponderlm.data.corpus import HELDOUT_NAME, iter_default_corpus, iter_heldout, resolve_inputs

    if spec == HELDOUT_NAME:  # evaluation-only text: it has one split, and "val" names it like every other
        if split != "val":
            raise PonderError(f"--split {split}: the bundled held-out text is scored whole; leave --split out "
                              "(or give val)")
        return (record["text"] for record in iter_heldout())
    if spec == "default":
        if split not in ("val", "train"):
            raise PonderError(f"the bundled corpus has splits val and train, not {split!r}")
        return (record["text"] for record in iter_default_corpus(split))
    if split != "val":  # only the default value is accepted, so a typo or a wrong assumption is not ignored
        raise PonderError(f"--split {split}: {spec} is not a prepared data directory, so it has no splits (all its "
                          "documents are scored); leave --split out or prepare it with `ponderlm data prepare`")
    sources = resolve_inputs([spec])
    # Passing a stats list turns on the reader's binary-file check (random bytes are refused, not scored).
    return (text for source in sources for _, text in source.documents([]))


def _tokenize_documents(texts: Iterable[str], tokenizer, limit: int | None = None) -> np.ndarray:
    """Like `prepare_data`: each document's ids followed by eos, concatenated (stops once `limit` ids exist)."""
    eos = tokenizer.eos_token_id
    out: list[int] = []
    for text in texts:
        out.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            out.append(eos)
        if limit is not None and len(out) >= limit:
            break
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------ decoding options
def resolve(model, options: DecodeOptions | None = None, **knobs: Any) -> DecodeOptions:
    """`ponderlm.inference.decode_options` with validation errors as one-line user errors and its notes (a knob
    this method does not take) said on stderr, once each."""
    from ponderlm.inference import decode_options

    try:
        options = decode_options(model, options, **knobs)
    except ValueError as exc:
        raise PonderError(str(exc)) from None
    for note in options.notes:
        _note_once(note)
    return options


# ------------------------------------------------------------------ per-token statistics
@dataclass
class TokenStats:
    """Flattened over all scored positions: nll[i] = -log p(next token), steps[i] = executed steps there,
    token_ids[i] = the consumed token."""

    nll: np.ndarray
    steps: np.ndarray
    token_ids: np.ndarray
    steps_all_positions: float  # sum of executed steps over every position (including unscored last ones)
    positions: int  # number of positions processed
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return float(self.nll.mean())

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 50.0))

    @property
    def avg_steps(self) -> float:
        return self.steps_all_positions / max(self.positions, 1)


@torch.no_grad()
def eval_forwards(
    model, batches: Iterable[torch.Tensor], options: DecodeOptions, *, progress: bool, desc: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Eval-mode forward of every batch under `options`: (input_ids on the model's device, logits [B,T,V],
    executed steps [B,T] as float, zeros for a method without per-token steps) per batch; the model's
    train / eval mode is restored afterwards."""
    from tqdm.auto import tqdm

    from ponderlm.inference.sequential import eval_mode

    device = next(model.parameters()).device
    with eval_mode(model):
        for x in tqdm(batches, desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False):
            x = x.to(device)
            out = model(input_ids=x, decode_options=options)
            steps = out.executed_steps
            yield x, out.logits, torch.zeros(x.shape, device=device) if steps is None else steps.float()


@torch.no_grad()
def collect_token_stats(
    model, batches: list[torch.Tensor], options: DecodeOptions | None = None, *,
    progress: bool = True, desc: str = "eval", **knobs: Any,
) -> TokenStats:
    """Eval-mode forward of every batch under `options` (None: the saved knob values) with `knobs` overridden;
    per-token NLL and executed steps."""
    import time

    nlls, steps, tokens = [], [], []
    total_steps, positions = 0.0, 0
    start = time.perf_counter()
    options = resolve(model, options, **knobs)
    for x, logits, step in eval_forwards(model, batches, options, progress=progress, desc=desc):
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
        nlls.append(nll.cpu().reshape(-1))
        steps.append(step[:, :-1].cpu().reshape(-1))
        tokens.append(x[:, :-1].cpu().reshape(-1))
        total_steps += float(step.sum())
        positions += x.numel()
    if not nlls:
        raise PonderError("no evaluation batches")
    return TokenStats(
        nll=torch.cat(nlls).double().numpy(), steps=torch.cat(steps).double().numpy(),
        token_ids=torch.cat(tokens).numpy(), steps_all_positions=total_steps, positions=positions,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------ FLOPs
def flops_ratio(config, seq_len: int, avg_steps: float) -> float | None:
    """Decode forward FLOPs per token relative to vanilla (`forward_ratio` of `ponderlm.flops.flops`) at the
    measured average steps; None (said on stderr, once) if the method's cost model cannot cost this configuration:
    a missing number is better than an invented one."""
    # Fixed-depth methods always run K steps; flops() checks that, so do not pass float noise.
    steps = float(avg_steps) if method_class(config.method).adaptive else None
    try:
        return float(flops(config, seq_len, avg_steps=steps)["forward_ratio"])
    except ValueError as exc:
        _note_once(f"flops_ratio unavailable: {exc}")
        return None


@functools.cache  # once per distinct message
def _note_once(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ------------------------------------------------------------------ perplexity
@dataclass
class PerplexityResult:
    ppl: float
    loss: float
    avg_steps: float
    flops_ratio: float | None
    tokens: int
    method: str
    max_steps: int
    seq_len: int
    sequences: int
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(
    model, batches: list[torch.Tensor], options: DecodeOptions | None = None, *, progress: bool = True,
    **knobs: Any,
) -> PerplexityResult:
    """Perplexity, average executed additional steps per token, and the FLOPs ratio at those steps, under
    `options` (None: the saved knob values) with `knobs` overridden."""
    options = resolve(model, options, **knobs)
    stats = collect_token_stats(model, batches, options, progress=progress, desc="ppl")
    seq_len = int(batches[0].shape[1])
    ratio = flops_ratio(model.config, seq_len, stats.avg_steps)
    return PerplexityResult(
        ppl=stats.ppl, loss=stats.loss, avg_steps=stats.avg_steps, flops_ratio=ratio, tokens=int(stats.nll.size),
        method=model.config.method, max_steps=model.config.max_steps, seq_len=seq_len,
        sequences=sum(int(b.shape[0]) for b in batches), settings=options.as_dict(), seconds=stats.seconds,
    )
