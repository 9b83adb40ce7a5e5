"""Figures for the evaluation commands, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing global is touched, so these work headless and inside a user's own session.
Every function takes plain data (what the JSON holds) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_pareto(points: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """x = avg executed additional steps per token, y = perplexity; one curve per (model, policy); each learned
    point labelled with the alpha / tau that produced it."""
    fig, (ax,) = _figure(width=6.5, height=4.5)
    curves: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        curves.setdefault(p["curve"], []).append(p)
    for label, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["avg_steps"])
        style = {"learned": "-o", "uniform": "--s", "geometric": ":^"}.get(pts[0]["policy"], "D")
        xs, ys = [p["avg_steps"] for p in pts], [p["ppl"] for p in pts]
        (line,) = ax.plot(xs, ys, style, label=label, markersize=5)
        if pts[0]["policy"] != "learned":
            continue
        for i, p in enumerate(pts):  # above / below in turn, so neighbours' labels overlap less
            ax.annotate(point_label(p, pts), (xs[i], ys[i]), fontsize=7, color=line.get_color(),
                        textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11))
    ax.set_xlabel("avg executed additional steps per token")
    ax.set_ylabel("perplexity")
    ax.set_title("Quality vs pondering compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def point_label(point: dict[str, Any], curve: Sequence[dict[str, Any]]) -> str:
    """The knob value that produced a learned Pareto point: alpha for PonderLM-3 (and tau too when its curve
    sweeps tau), tau for the halting methods."""
    sweeps_tau = len({p["tau"] for p in curve}) > 1
    parts = []
    if point.get("alpha") is not None:
        parts.append(f"α={point['alpha']:g}")
    if point.get("tau") is not None and (point.get("alpha") is None or sweeps_tau):
        parts.append(f"τ={point['tau']:g}")
    return " ".join(parts)


def plot_difficulty(result: dict[str, Any], path: str | Path) -> Path:
    """(a) CE gain over depth 0 per difficulty bucket vs forced steps; (b) difficulty vs learned steps.

    Error bars are 95% intervals of the mean, named on the axes: mean +- 1.96 standard errors for the CE
    gain, and for learned steps a Wilson score interval when steps are 0/1 (K = 1: the share of tokens that
    took the step, which a +-std bar would push below 0 and above 1), else mean +- 1.96 standard errors."""
    fig, (ax_a, ax_b) = _figure(ncols=2, height=4.3)
    depths = result["depths"]
    labels = bucket_labels(result["buckets"])
    for bucket in result["buckets"]:
        gains = [bucket["gain_by_depth"].get(str(k)) for k in depths]
        cis = bucket.get("gain_ci95_by_depth", {})  # absent from JSON written before the intervals existed
        xs = [k for k, g in zip(depths, gains) if g is not None]
        ys = [g for g in gains if g is not None]
        yerr = None
        if cis:
            yerr = [[y - cis[str(k)][0] for k, y in zip(xs, ys)], [cis[str(k)][1] - y for k, y in zip(xs, ys)]]
        ax_a.errorbar(xs, ys, yerr=yerr, fmt="-o", capsize=2, markersize=4, label=labels[bucket["bucket"]])
    ax_a.set_title("(a) CE gain vs executed steps", fontsize=9)
    ax_a.set_xlabel("executed additional steps")
    ax_a.set_ylabel("CE gain over 0 steps (nats)" + ("\nmean ± 1.96 SE" if any(
        "gain_ci95_by_depth" in b for b in result["buckets"]) else ""))
    ax_a.axhline(0.0, color="grey", lw=0.8)
    ax_a.grid(alpha=0.3)
    ax_a.legend(fontsize=7, title="difficulty bucket", title_fontsize=7)

    centers = [b["mean_difficulty"] for b in result["buckets"]]
    means = [b["learned_steps_mean"] for b in result["buckets"]]
    intervals = [b.get("learned_steps_ci95") for b in result["buckets"]]
    yerr = None
    if all(intervals):  # JSON written before the intervals existed has none: draw the means alone
        yerr = [[m - lo for m, (lo, _) in zip(means, intervals)], [hi - m for m, (_, hi) in zip(means, intervals)]]
    ax_b.errorbar(centers, means, yerr=yerr, fmt="-o", capsize=3)
    ax_b.set_title(f"(b) learned depth vs difficulty (Spearman {result['spearman_difficulty_steps']:.2f})",
                   fontsize=9)
    ax_b.set_xlabel("difficulty = NLL with 0 additional steps (bucket mean)")
    kind = result.get("learned_steps_interval")
    if kind == "wilson":
        ax_b.set_ylabel("share of tokens taking the step (learned)\n95% Wilson CI")
    else:
        ax_b.set_ylabel("executed additional steps (learned)" + ("\nmean ± 1.96 SE" if kind else ""))
    ax_b.set_ylim(-0.05, result["max_steps"] + 0.05)
    ax_b.grid(alpha=0.3)
    n = result.get("tokens") or sum(b.get("tokens", 0) for b in result["buckets"])
    model = result.get("model") or result.get("method", "model")
    data = f" on {result['data']}" if result.get("data") else ""
    fig.suptitle(f"{model} ({result.get('method', '?')}, K={result['max_steps']}){data}: "
                 f"n = {n:,} tokens in {len(result['buckets'])} difficulty buckets", fontsize=10)
    return _save(fig, path)


def bucket_labels(buckets: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Legend label per difficulty bucket: its quantile and NLL range, with as many decimals as it takes for
    neighbouring buckets to read differently (an undertrained model's buckets can all lie within 0.1 nats)."""
    for decimals in range(1, 5):
        ranges = [f"{b['lo']:.{decimals}f}-{b['hi']:.{decimals}f}" for b in buckets]
        if len(set(ranges)) == len(ranges):
            break
    return {b["bucket"]: f"Q{b['bucket'] + 1}: NLL0 {r}" for b, r in zip(buckets, ranges)}


def label_positions(xs: Sequence[float], ys: Sequence[float], min_gap: float = 0.07) -> list[int]:
    """Indices of the points to label so no two labels are closer than `min_gap` of the axes (both axes
    scaled to [0, 1]); points in a crowd keep their colour, which encodes the same value."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    scale = lambda v: (v - v.min()) / (np.ptp(v) or 1.0)  # noqa: E731
    pos = np.stack([scale(x), scale(y)], axis=1)
    chosen: list[int] = []
    for i in range(len(pos)):
        if all(np.abs(pos[i] - pos[j]).max() >= min_gap for j in chosen):
            chosen.append(i)
    return chosen


def plot_alpha(result: dict[str, Any], path: str | Path) -> Path:
    """One panel per subset: ΔLoss relative to alpha = 0 vs induced avg executed steps, points coloured by alpha
    (labels only where they do not collide)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    subsets = list(result["subsets"])
    fig, axes = _figure(ncols=len(subsets))
    alphas = [r["alpha"] for name in subsets for r in result["subsets"][name]]
    norm = Normalize(min(alphas), max(alphas) if max(alphas) > min(alphas) else min(alphas) + 1.0)
    for ax, name in zip(axes, subsets):
        rows = sorted(result["subsets"][name], key=lambda r: r["alpha"])
        xs = [r["avg_steps"] for r in rows]
        ys = [r["delta_loss"] for r in rows]
        ax.plot(xs, ys, "-", color="grey", lw=1, zorder=1)
        points = ax.scatter(xs, ys, c=[r["alpha"] for r in rows], cmap=colormaps["viridis"], norm=norm, zorder=2)
        for i in label_positions(xs, ys):
            ax.annotate(f"{rows[i]['alpha']:g}", (xs[i], ys[i]), fontsize=7, textcoords="offset points",
                        xytext=(4, 4))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{name} tokens", fontsize=10)
        ax.set_xlabel("avg executed additional steps (labels, colour: alpha)")
        ax.set_ylabel("Δ loss vs alpha = 0 (nats)")
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=axes, label="alpha", shrink=0.8)
    return _save(fig, path)


def plot_gates(nll_by_steps: dict[int, np.ndarray], result: dict[str, Any], path: str | Path) -> Path:
    """NLL distribution per executed steps (box plot) and the most / least pondered tokens."""
    fig, (ax, ax_t) = _figure(ncols=2)
    keys = sorted(nll_by_steps)
    ax.boxplot([nll_by_steps[k] for k in keys], showfliers=False)
    ax.set_xticks(range(1, len(keys) + 1), [str(k) for k in keys])  # `tick_labels=` needs matplotlib >= 3.9
    for i, k in enumerate(keys):
        ax.annotate(f"n={len(nll_by_steps[k])}", (i + 1, 0), fontsize=7, ha="center",
                    xycoords=("data", "axes fraction"), xytext=(0, 3), textcoords="offset points")
    ax.set_xlabel("executed additional steps")
    ax.set_ylabel("NLL of the next token (nats)")
    ax.set_title("NLL by executed steps", fontsize=10)
    ax.grid(alpha=0.3, axis="y")

    top = result["most_pondered"][:10]
    bottom = result["least_pondered"][:10]
    labels = [repr(t["token"]) for t in top] + [""] + [repr(t["token"]) for t in bottom]
    values = [t["mean_steps"] for t in top] + [0.0] + [t["mean_steps"] for t in bottom]
    colors = ["tab:red"] * len(top) + ["white"] + ["tab:blue"] * len(bottom)
    ys = np.arange(len(labels))
    ax_t.barh(ys, values, color=colors)
    ax_t.set_yticks(ys, labels, fontsize=7)
    ax_t.invert_yaxis()
    ax_t.set_xlabel("mean executed steps")
    ax_t.set_title(f"most (red) / least (blue) pondered tokens, count >= {result['min_count']}", fontsize=9)
    return _save(fig, path)


def plot_jacobi(result: dict[str, Any], path: str | Path) -> Path:
    """RMSE of the parallel solution to the sequential one after each Jacobi sweep (log scale)."""
    fig, (ax,) = _figure()
    rmse = np.asarray(result["rmse"], dtype=float)
    sweeps = np.arange(len(rmse))
    floor = np.finfo(np.float32).tiny  # exact zeros cannot be drawn on a log axis
    ax.semilogy(sweeps, np.maximum(rmse, floor), "-o")
    ax.set_xlabel("Jacobi sweeps (0 = after stage building)")
    ax.set_ylabel("RMSE to sequential hidden states")
    factor = result.get("mean_contraction")
    ax.set_title("Jacobi convergence" + (f" (mean contraction {factor:.2f}x / sweep)" if factor else ""),
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
