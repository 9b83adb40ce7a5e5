"""Analyses of where pondering compute goes and what it buys (METHODS.md: allocation vs difficulty).

- `difficulty`: intrinsic difficulty of a token = its NLL with zero additional steps. (a) CE gain per
  difficulty bucket as a function of executed steps, (b) difficulty vs learned depth.
- `knob`: a sweep of one inference knob (PonderLM-3's router bias alpha: `analyze alpha`), its effect on easy vs
  hard tokens.
- `gates`: NLL by executed steps and the most / least pondered tokens of halting methods.
- `jacobi`: RMSE of the parallel (Jacobi) solution to sequential decoding, per sweep.

How a forced depth is obtained. Adaptive methods (ponderlm3, adaponder, latent_cot) take a fixed-pruning
policy (METHODS.md §9, `fixed_depth_knobs`) in place of their learned depth, so the same checkpoint runs at a
chosen depth: the `constant` policy gives every token exactly k steps. Vanilla is its own 0-step model. Fixed-depth
methods (pondering with always K steps: pause, looped, ponderlm, ponderlm2) have no 0-step prediction and
are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import TokenStats, collect_token_stats
from ponderlm.eval.reasoning import spearman as reasoning_spearman
from ponderlm.methods.options import DecodeOptions, knob_table
from ponderlm.registry import method_names

# RMSE below this (relative to the initial error, at least 1) is float32 round-off, not Jacobi error.
JACOBI_FLOOR = 1e-6
Z95 = 1.959963984540054  # two-sided 95% normal quantile


# ------------------------------------------------------------------ forced depths
def forced_depth_options(config, k: int) -> DecodeOptions:
    """Options that give every token exactly k additional steps (the constant fixed-pruning policy)."""
    return DecodeOptions.resolve(config, **config.method_class.fixed_depth_knobs("constant", float(k)))


def zero_step_stats(model, batches: list[torch.Tensor], progress: bool = True) -> TokenStats:
    """Per-token NLL with zero additional steps (see the module docstring for how per method)."""
    method = model.config.method
    if model.config.max_steps == 0:
        return collect_token_stats(model, batches, progress=progress, desc="depth 0")
    if model.config.method_class.fixed_depth_knobs("constant", 0.0) is None:
        raise PonderError(
            f"method {method!r} always runs K={model.config.max_steps} steps and cannot be forced to 0 steps, so "
            f"its tokens have no 0-step difficulty; use an adaptive method ({', '.join(method_names(adaptive=True))})"
        )
    return forced_depth_stats(model, batches, 0, progress)


def forced_depth_stats(model, batches: list[torch.Tensor], k: int, progress: bool = True) -> TokenStats:
    """Per-token stats with every token at exactly k additional steps (an adaptive method's checkpoint)."""
    stats = collect_token_stats(model, batches, forced_depth_options(model.config, k), progress=progress,
                                desc=f"depth {k}")
    # Guards against a fixed-pruning policy that is not degenerate at k: the analysis would silently mix depths.
    if stats.steps.size and not np.allclose(stats.steps, k):
        raise PonderError(f"forcing depth {k} did not give every token {k} steps (got mean {stats.steps.mean():.3f})")
    return stats


def _mean(values: np.ndarray, sel: np.ndarray, empty: float | None = float("nan")) -> float | None:
    """Mean of `values` over the boolean selection `sel`; `empty` when nothing is selected."""
    return float(values[sel].mean()) if sel.any() else empty


def difficulty_buckets(difficulty: np.ndarray, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile edges and bucket index per token (bucket 0 = easiest)."""
    if num_buckets < 1:
        raise PonderError(f"--buckets must be >= 1, got {num_buckets}")
    edges = np.quantile(difficulty, np.linspace(0.0, 1.0, num_buckets + 1))
    index = np.clip(np.searchsorted(edges, difficulty, side="right") - 1, 0, num_buckets - 1)
    return edges, index


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default): inside [0, 1] and not degenerate at
    0 or n successes, unlike p +- z * sqrt(p(1-p)/n) or a +-std bar of 0/1 values."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # The interval ends exactly at 0 (1) when no (every) trial succeeds; floating point would land just inside.
    lo = 0.0 if successes <= 0 else max(0.0, center - half)
    hi = 1.0 if successes >= n else min(1.0, center + half)
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, binary: bool, z: float = Z95) -> tuple[float, float]:
    """A 95% interval of the mean of `values`: the Wilson interval when they are 0/1 (`binary`: a proportion),
    else mean +- z standard errors."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    if binary:
        return wilson_interval(float(values.sum()), int(values.size), z)
    half = z * _sem(values)
    return float(values.mean() - half), float(values.mean() + half)


def _sem(values: np.ndarray) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for a single value."""
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """`reasoning.spearman`, with 0.0 where it is undefined (a constant side)."""
    rho = reasoning_spearman(a, b)
    return 0.0 if rho is None else rho


# ------------------------------------------------------------------ difficulty
def difficulty_analysis(
    model, batches: list[torch.Tensor], options: DecodeOptions | None = None, *, num_buckets: int = 5,
    progress: bool = True, **knobs: Any,
) -> dict[str, Any]:
    """Bucket tokens by 0-step NLL; CE gain per bucket at each forced depth; learned depth per bucket.

    `options` / `knobs` are the learned-depth decoding options (tau, alpha, ...) for panel (b).
    """
    K = model.config.max_steps
    base = zero_step_stats(model, batches, progress)
    difficulty = base.nll
    edges, bucket = difficulty_buckets(difficulty, num_buckets)
    nll_by_depth = {0: base.nll} | {k: forced_depth_stats(model, batches, k, progress).nll for k in range(1, K + 1)}
    learned_knobs = {**knobs, **(model.config.method_class.fixed_depth_knobs("learned") or {})}
    learned = collect_token_stats(model, batches, options, progress=progress, desc="learned depth", **learned_knobs)

    # Steps of a K = 1 model are 0/1 (their mean is a proportion: Wilson), otherwise counts (mean +- 1.96 SE).
    binary = K == 1 and bool(np.isin(learned.steps, (0.0, 1.0)).all())
    buckets = []
    for b in range(num_buckets):
        in_b = bucket == b
        lo, hi = mean_interval(learned.steps[in_b], binary)
        buckets.append({
            "bucket": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "tokens": int(in_b.sum()),
            "mean_difficulty": _mean(difficulty, in_b),
            "gain_by_depth": {str(k): _mean(difficulty - nll, in_b, None) for k, nll in nll_by_depth.items()},
            "gain_ci95_by_depth": {str(k): list(mean_interval((difficulty - nll)[in_b], binary=False))
                                   for k, nll in nll_by_depth.items()},
            "count_by_depth": {str(k): int(in_b.sum()) for k in nll_by_depth},
            "learned_steps_mean": _mean(learned.steps, in_b),
            "learned_steps_std": float(learned.steps[in_b].std()) if in_b.any() else float("nan"),
            "learned_steps_ci95": [lo, hi],
            "learned_nll_mean": _mean(learned.nll, in_b),
        })
    return {
        "analysis": "difficulty", "method": model.config.method, "max_steps": K, "tokens": int(difficulty.size),
        "difficulty": "NLL of the next token with 0 additional steps (nats)",
        "depths": list(range(K + 1)), "depth_source": {str(k): "exact" for k in nll_by_depth},
        "learned_avg_steps": learned.avg_steps, "learned_loss": learned.loss, "zero_step_loss": base.loss,
        "spearman_difficulty_steps": spearman(difficulty, learned.steps),
        "learned_steps_interval": "wilson" if binary else "sem",
        "intervals": "learned_steps_ci95: 95% Wilson score interval of the share of tokens that took the step when "
                     "steps are 0/1 (learned_steps_interval wilson), else mean +- 1.96 standard errors; "
                     "gain_ci95_by_depth: mean CE gain +- 1.96 standard errors",
        "buckets": buckets,
    }


# ------------------------------------------------------------------ knob sweep
def knob_analysis(
    model, batches: list[torch.Tensor], knob: str, values: list[float], options: DecodeOptions | None = None, *,
    progress: bool = True, **knobs: Any,
) -> dict[str, Any]:
    """Easy / hard halves by 0-step NLL; per value of `knob` (its declared default always added: the reference of
    every delta), each half's ΔLoss vs the default and its avg steps."""
    method = model.config.method
    declared = model.config.method_class.knobs().get(knob)
    if declared is None:
        first, takers = knob_table().get(knob, (None, ()))
        raise PonderError(f"analyze {knob} needs a method with the knob {knob} ({first.help if first else ''}: "
                          f"{', '.join(takers) or 'none'}); this checkpoint is {method!r}")
    ref_value = declared.default
    values = sorted(set(float(v) for v in values) | {ref_value})
    difficulty = zero_step_stats(model, batches, progress).nll
    median = float(np.median(difficulty))
    subsets = {"easy": difficulty <= median, "hard": difficulty > median}
    learned = model.config.method_class.fixed_depth_knobs("learned") or {}
    runs = {v: collect_token_stats(model, batches, options, progress=progress, desc=f"{knob} {v:g}",
                                   **{**knobs, knob: v, **learned}) for v in values}
    out = {}
    for name, sel in subsets.items():
        ref = _mean(runs[ref_value].nll, sel)
        out[name] = [{knob: v, "loss": _mean(r.nll, sel), "delta_loss": _mean(r.nll, sel) - ref,
                      "avg_steps": _mean(r.steps, sel)} for v, r in runs.items()]
    return {
        "analysis": knob, "method": method, "max_steps": model.config.max_steps,
        "tokens": int(difficulty.size), "median_difficulty": median,
        "subset_tokens": {name: int(sel.sum()) for name, sel in subsets.items()},
        "overall": [{knob: v, "loss": r.loss, "avg_steps": r.avg_steps} for v, r in runs.items()],
        "subsets": out,
    }


# ------------------------------------------------------------------ gates
def gates_analysis(
    model, tokenizer, batches: list[torch.Tensor], options: DecodeOptions | None = None, *,
    top: int = 20, min_count: int = 5, progress: bool = True, **knobs: Any,
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """NLL distribution per executed steps and the most / least pondered token strings.

    Returns (JSON-able result, raw NLL arrays per steps for the box plot).
    """
    method = model.config.method
    if not model.config.method_class.adaptive:  # halting: a per-token, content-dependent depth
        raise PonderError(f"analyze gates needs a halting method ({', '.join(method_names(adaptive=True))}); "
                          f"{method!r} gives every token the same depth")
    stats = collect_token_stats(model, batches, options, progress=progress, desc="gates", **knobs)
    steps = np.rint(stats.steps).astype(int)
    nll_by_steps = {int(k): stats.nll[steps == k] for k in np.unique(steps)}
    by_steps = {}
    for k, v in nll_by_steps.items():
        q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
        by_steps[str(k)] = {"count": int(v.size), "fraction": v.size / steps.size, "mean_nll": float(v.mean()),
                            "median_nll": float(med), "q1": float(q1), "q3": float(q3)}
    ids, inverse, counts = np.unique(stats.token_ids, return_inverse=True, return_counts=True)
    mean_steps = np.bincount(inverse, weights=stats.steps) / counts
    mean_nll = np.bincount(inverse, weights=stats.nll) / counts
    eligible = np.nonzero(counts >= min_count)[0]
    order = eligible[np.lexsort((ids[eligible], -mean_steps[eligible]))]  # ties broken by id: deterministic

    def row(i: int) -> dict[str, Any]:
        return {"token": tokenizer.decode([int(ids[i])]), "id": int(ids[i]), "count": int(counts[i]),
                "mean_steps": float(mean_steps[i]), "mean_nll": float(mean_nll[i])}

    most = [row(i) for i in order[:top]]
    least = [row(i) for i in order[::-1][:top]]
    result = {
        "analysis": "gates", "method": method, "max_steps": model.config.max_steps, "tokens": int(steps.size),
        "avg_steps": stats.avg_steps, "loss": stats.loss, "min_count": min_count,
        "spearman_nll_steps": spearman(stats.nll, stats.steps),
        "nll_by_steps": by_steps, "most_pondered": most, "least_pondered": least,
        "note": "steps of a token = additional steps spent at it, i.e. on predicting the token after it",
    }
    return result, nll_by_steps


# ------------------------------------------------------------------ Jacobi
def jacobi_analysis(model, input_ids: torch.Tensor, max_sweeps: int = 8) -> dict[str, Any]:
    """Per-sweep RMSE of the parallel Jacobi solution to the sequential decode (`jacobi_rmse`)."""
    from ponderlm.inference.jacobi import jacobi_rmse

    if max_sweeps < 1:
        raise PonderError(f"--sweeps must be >= 1, got {max_sweeps}")
    device = next(model.parameters()).device
    try:
        rmse = jacobi_rmse(model, input_ids.to(device), None, max_sweeps)
    except ValueError as exc:
        raise PonderError(f"analyze jacobi traces the sweeps of a Jacobi (iterative parallel) solver: {exc}") from None
    ratios = [b / a if a > 0 else None for a, b in zip(rmse, rmse[1:])]
    # Once the error reaches float round-off it stops contracting; the mean covers the sweeps before that.
    floor = JACOBI_FLOOR * max(rmse[0], 1.0)
    converging = [r for r, b in zip(ratios, rmse[1:]) if r is not None and b > floor]
    mean = float(np.exp(np.mean(np.log(converging)))) if converging else None
    return {
        "analysis": "jacobi", "method": model.config.method, "max_steps": model.config.max_steps,
        "sequences": int(input_ids.shape[0]), "seq_len": int(input_ids.shape[1]), "sweeps": max_sweeps,
        "rmse": rmse, "contraction": ratios, "mean_contraction": mean, "floor": floor,
        "note": "entry 0 is after stage building, entry r after r sweeps; reference = token-by-token decoding",
    }
