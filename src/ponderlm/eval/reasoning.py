"""Answer accuracy and executed steps against the true difficulty on a `ponderlm data synth` set.

`ponderlm eval reasoning --model DIR --data DIR` (docs/REASONING.md). Every example of the split is one
window (`example_len` tokens). An answer token at position j is predicted at position j - 1 (the query
symbol): it counts as correct when the argmax of that position's logits is the answer, and the executed
additional steps of position j - 1 are the compute spent on it. Scores come from the model's parallel
eval forward under the decoding options (the method's knobs: tau, alpha, fixed pruning, ...), the same forward
`eval ppl` uses, which agrees with token-by-token decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import eval_forwards, flops_ratio, resolve


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman rank correlation with average ranks for ties (steps are integers: many ties); None when either
    side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
    rx, ry = _average_ranks(x), _average_ranks(y)
    if x.size < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(v: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


def score_answers(correct: np.ndarray, difficulty: np.ndarray, steps: np.ndarray,
                  example: np.ndarray | None = None) -> dict[str, Any]:
    """Aggregate per-answer results: accuracy overall and per difficulty, mean executed steps per
    difficulty, Spearman(steps, difficulty) and (with `example` ids) the share of fully solved examples."""
    correct = np.asarray(correct, dtype=bool)
    difficulty = np.asarray(difficulty, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.float64)
    if correct.size == 0:
        raise PonderError("no answer tokens to score")
    per = []
    for d in sorted(set(difficulty.tolist())):
        sel = difficulty == d
        per.append({"difficulty": int(d), "count": int(sel.sum()), "accuracy": float(correct[sel].mean()),
                    "avg_steps": float(steps[sel].mean())})
    out: dict[str, Any] = {"answers": int(correct.size), "accuracy": float(correct.mean()),
                           "avg_steps_answers": float(steps.mean()), "per_difficulty": per,
                           "spearman_steps_difficulty": spearman(steps, difficulty)}
    if example is not None:
        example = np.asarray(example)
        _, inverse = np.unique(example, return_inverse=True)
        solved = np.bincount(inverse, weights=~correct) == 0
        out["examples_fully_solved"] = float(solved.mean())
    return out


@torch.no_grad()
def reasoning_eval(model: Any, data_dir: str | Path, options: Any = None, *, split: str = "test",
                   batch_size: int = 64, max_examples: int | None = None, progress: bool = True,
                   tokenizer: Any = None, **knobs: Any) -> dict[str, Any]:
    """Score a model on a synthetic split under `options` (a `DecodeOptions`, None: the saved knob values) with
    `knobs` overridden; returns the JSON-ready result (see docs/REASONING.md).

    With `tokenizer` (the one saved with the model) a set written with another vocabulary is refused."""
    from ponderlm.data.synth import read_split

    options = resolve(model, options, **knobs)
    data = read_split(data_dir, split, max_examples)
    if batch_size < 1:
        raise PonderError(f"--batch-size must be at least 1, got {batch_size}")
    if int(data.meta["vocab_size"]) > model.config.vocab_size:
        raise PonderError(f"{data_dir} has a {data.meta['vocab_size']}-token vocabulary but the model's vocab_size "
                          f"is {model.config.vocab_size}; was it trained on this set?")
    if tokenizer is not None:
        from ponderlm.data.tokenizer import tokenizer_identity

        theirs, ours = data.meta.get("tokenizer", {}).get("sha256"), tokenizer_identity(tokenizer, "").get("sha256")
        if theirs and ours and theirs != ours:
            raise PonderError(f"{data_dir} was written with another vocabulary than the model's tokenizer (a different "
                              "task or --symbols / --hops / --queries); evaluate on the set the model was trained on")
    L = data.tokens.shape[1]
    if L > model.config.max_position_embeddings:
        raise PonderError(f"examples have {L} tokens, more than the model's max_position_embeddings "
                          f"({model.config.max_position_embeddings})")
    preds, steps_all = [], []
    start = time.perf_counter()
    batches = torch.from_numpy(data.tokens).split(batch_size)
    for _, logits, st in eval_forwards(model, batches, options, progress=progress, desc="reasoning"):
        preds.append(logits.argmax(-1).cpu())
        steps_all.append(st.cpu())
    pred = torch.cat(preds).numpy()
    steps = torch.cat(steps_all).double().numpy()
    ratio = flops_ratio(model.config, L, float(steps.mean()))
    ex, pos = np.nonzero(data.mask)  # answer tokens; each is predicted at pos - 1
    if (pos == 0).any():
        raise PonderError("an answer token sits at position 0 of an example; the set is malformed")
    result = score_answers(pred[ex, pos - 1] == data.tokens[ex, pos], data.difficulty[ex, pos],
                           steps[ex, pos - 1], example=ex)
    return {"method": model.config.method, "max_steps": int(model.config.max_steps), "task": data.task,
            "split": split, "examples": int(len(data.tokens)), **result,
            "avg_steps": float(steps.mean()), "flops_ratio": ratio, "settings": options.as_dict(),
            "seconds": time.perf_counter() - start}


def plot_reasoning(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Two panels over true difficulty: answer accuracy and mean executed steps, one line per result
    (label: its `name`, else its method)."""
    from ponderlm.eval.plots import _figure, _save

    fig, (ax_acc, ax_steps) = _figure(ncols=2)
    for r in results:
        label = r.get("name") or r["method"]
        xs = [p["difficulty"] for p in r["per_difficulty"]]
        ax_acc.plot(xs, [p["accuracy"] for p in r["per_difficulty"]], "-o", label=label, markersize=4)
        rho = r.get("spearman_steps_difficulty")
        tag = "" if rho is None else f" (ρ={rho:.2f})"
        ax_steps.plot(xs, [p["avg_steps"] for p in r["per_difficulty"]], "-o", label=label + tag, markersize=4)
    ax_acc.set_ylabel("answer accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_title("Accuracy vs difficulty")
    ax_steps.set_ylabel("executed additional steps at the query")
    ax_steps.set_title("Executed steps vs difficulty (Spearman ρ)")
    for ax in (ax_acc, ax_steps):
        ax.set_xlabel("true difficulty (hops / chain depth)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)
