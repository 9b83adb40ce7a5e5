"""Tables and plots of `benchmarks/reasoning.py` (called by its `report` phase).

Reads every `runs/*/eval.json` under the work directory and writes into the docs directory:
`summary.json` (per run and aggregated over seeds), `table.md` (the tables docs/REASONING.md quotes) and
three figures: accuracy vs hop count per method (at its largest K), executed steps vs hop count for the adaptive
methods, and accuracy on the hardest hop count vs K.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

METHOD_ORDER = ("vanilla", "pause", "looped", "ponderlm", "ponderlm2", "ponderlm3", "adaponder", "latent_cot")
ADAPTIVE = ("ponderlm3", "adaponder", "latent_cot")


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _fmt(m: float, s: float, pct: bool = True, digits: int = 1) -> str:
    if math.isnan(m):
        return "n/a"
    scale = 100.0 if pct else 1.0
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _acc_at(result: dict[str, Any], difficulty: int) -> float | None:
    for p in result["per_difficulty"]:
        if p["difficulty"] == difficulty:
            return p["accuracy"]
    return None


def _multi_hop(result: dict[str, Any]) -> float:
    """Accuracy over answers with 2 or more hops (count-weighted)."""
    pts = [p for p in result["per_difficulty"] if p["difficulty"] >= 2]
    n = sum(p["count"] for p in pts)
    return sum(p["accuracy"] * p["count"] for p in pts) / n if n else float("nan")


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["K"], r.get("variant") or ""), []).append(r)
    rows = []
    for (method, k, variant), rs in sorted(groups.items(),
                                           key=lambda kv: (kv[0][2], METHOD_ORDER.index(kv[0][0]), kv[0][1])):
        diffs = sorted({p["difficulty"] for r in rs for p in r["learned"]["per_difficulty"]})
        row = {"method": method, "K": k, "variant": variant, "steps": rs[0].get("steps"),
               "seeds": sorted(r["seed"] for r in rs), "params": rs[0]["params"],
               "accuracy": _mean_std([r["learned"]["accuracy"] for r in rs]),
               "multi_hop": _mean_std([_multi_hop(r["learned"]) for r in rs]),
               "per_difficulty": {d: _mean_std([_acc_at(r["learned"], d) for r in rs]) for d in diffs},
               "steps_per_difficulty": {d: _mean_std([p["avg_steps"] for r in rs for p in r["learned"]["per_difficulty"]
                                                      if p["difficulty"] == d]) for d in diffs},
               "avg_steps": _mean_std([r["learned"]["avg_steps"] for r in rs]),
               "avg_steps_answers": _mean_std([r["learned"]["avg_steps_answers"] for r in rs]),
               "spearman": _mean_std([r["learned"]["spearman_steps_difficulty"] for r in rs]),
               "spearman_per_seed": [r["learned"]["spearman_steps_difficulty"] for r in rs],
               "train_seconds": _mean_std([r["train_seconds"] for r in rs])}
        for policy in ("uniform", "geometric"):
            vals = [r["fixed"][policy]["accuracy"] for r in rs if policy in r.get("fixed", {})]
            row[f"fixed_{policy}"] = _mean_std(vals)
            row[f"fixed_{policy}_per_seed"] = vals
        row["learned_per_seed"] = [r["learned"]["accuracy"] for r in rs]
        # the learned accuracy over the same seeds as the controls (a run at full depth K has no control)
        row["learned_iso"] = _mean_std([r["learned"]["accuracy"] for r in rs if r.get("fixed")])
        row["iso_seeds"] = sum(1 for r in rs if r.get("fixed"))
        rows.append(row)
    return rows


def table_md(rows: list[dict[str, Any]]) -> str:
    diffs = sorted({d for r in rows for d in r["per_difficulty"]})
    head = ("| method | K | params | seeds | accuracy % | multi-hop % | " + " | ".join(f"{d}-hop %" for d in diffs)
            + " | avg steps | Spearman(steps, hops) | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["method"], str(r["K"]), f"{r['params']:,}", str(len(r["seeds"])), _fmt(*r["accuracy"]),
                 _fmt(*r["multi_hop"])]
        cells += [_fmt(*r["per_difficulty"][d]) if d in r["per_difficulty"] else "" for d in diffs]
        rho = r["spearman"]
        cells += [_fmt(*r["avg_steps"], pct=False, digits=2),
                  "n/a (constant steps)" if math.isnan(rho[0]) else _fmt(*rho, pct=False, digits=2),
                  f"{r['train_seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    iso = [r for r in rows if r["method"] in ADAPTIVE]
    if iso:
        lines += ["", "Iso-FLOPs: the same checkpoint with content-independent depths at the learned average steps "
                  "(accuracy %, mean ± std over the seeds whose learned depth is below K; avg steps and steps per "
                  "hop over all seeds).", "",
                  "| method | K | avg steps | seeds with controls | learned | uniform | geometric | "
                  + " | ".join(f"steps at {d}-hop" for d in diffs) + " |",
                  "|" + "---|" * (7 + len(diffs))]
        for r in iso:
            lines.append("| " + " | ".join([r["method"], str(r["K"]), _fmt(*r["avg_steps"], pct=False, digits=2),
                                            str(r["iso_seeds"]), _fmt(*r["learned_iso"]), _fmt(*r["fixed_uniform"]),
                                            _fmt(*r["fixed_geometric"])]
                                           + [_fmt(*r["steps_per_difficulty"][d], pct=False, digits=2)
                                              for d in diffs]) + " |")
    return "\n".join(lines) + "\n"


def extra_md(rows: list[dict[str, Any]]) -> str:
    """The investigation runs (one recipe change each), aggregated like the main table."""
    diffs = sorted({d for r in rows for d in r["per_difficulty"]})
    lines = ["| method | K | variant | steps | seeds | accuracy % | multi-hop % | "
             + " | ".join(f"{d}-hop %" for d in diffs) + " | train s |", "|" + "---|" * (8 + len(diffs))]
    for r in rows:
        cells = [r["method"], str(r["K"]), r["variant"], str(r["steps"]), str(len(r["seeds"])),
                 _fmt(*r["accuracy"]), _fmt(*r["multi_hop"])]
        cells += [_fmt(*r["per_difficulty"][d]) if d in r["per_difficulty"] else "" for d in diffs]
        cells.append(f"{r['train_seconds'][0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict[str, Any]], docs: Path) -> list[Path]:
    from ponderlm.eval.plots import _figure, _save

    out = []
    top = {r["method"]: r["K"] for r in sorted(rows, key=lambda r: r["K"])}  # each method at its largest K
    k3 = [r for r in rows if r["K"] == top[r["method"]]]
    fig, (ax,) = _figure(width=6.5, height=4.5)
    for r in k3:
        ds = sorted(r["per_difficulty"])
        m = [r["per_difficulty"][d][0] for d in ds]
        s = [r["per_difficulty"][d][1] for d in ds]
        ax.errorbar(ds, m, yerr=s, marker="o", capsize=3, label=f"{r['method']} (K={r['K']})")
    ax.set_xlabel("hop count (true difficulty)")
    ax.set_ylabel("answer accuracy (mean ± std over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy vs difficulty, equal parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    out.append(_save(fig, docs / "accuracy_vs_hops.png"))

    fig, (ax,) = _figure(width=6.5, height=4.5)
    for r in [r for r in rows if r["method"] in ADAPTIVE]:
        ds = sorted(r["steps_per_difficulty"])
        spd = r["steps_per_difficulty"]
        ax.errorbar(ds, [spd[d][0] for d in ds], yerr=[spd[d][1] for d in ds], marker="o", capsize=3,
                    label=f"{r['method']} (K={r['K']}), ρ=" + ("n/a" if math.isnan(r["spearman"][0])
                                                                else f"{r['spearman'][0]:.2f}"))
    ax.set_xlabel("hop count (true difficulty)")
    ax.set_ylabel("executed additional steps at the query")
    ax.set_title("Learned depth vs difficulty")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    out.append(_save(fig, docs / "steps_vs_hops.png"))

    fig, (ax,) = _figure(width=6.5, height=4.5)
    hardest = max((d for r in rows for d in r["per_difficulty"]), default=None)
    for method in METHOD_ORDER:
        rs = sorted([r for r in rows if r["method"] == method], key=lambda r: r["K"])
        if not rs or hardest is None:
            continue
        ax.errorbar([r["K"] for r in rs], [r["per_difficulty"].get(hardest, (np.nan,))[0] for r in rs],
                    yerr=[r["per_difficulty"].get(hardest, (np.nan, np.nan))[1] for r in rs], marker="o", capsize=3,
                    label=method)
    ax.set_xlabel("K (additional steps per token)")
    ax.set_ylabel(f"accuracy on {hardest}-hop queries")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy on the hardest hop count vs K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    out.append(_save(fig, docs / "accuracy_vs_k.png"))
    return out


def _point_row(run: str, knob: str, learned: dict[str, Any], fixed: dict[str, Any]) -> str:
    per = " / ".join(f"{p['accuracy'] * 100:.1f}" for p in learned["per_difficulty"])
    steps = " / ".join(f"{p['avg_steps']:.2f}" for p in learned["per_difficulty"])
    rho = learned["spearman_steps_difficulty"]
    cells = [run, knob, f"{learned['avg_steps']:.2f}", steps, "n/a" if rho is None else f"{rho:.2f}",
             f"{learned['accuracy'] * 100:.1f} ({per})"]
    cells += [f"{fixed[p]['accuracy'] * 100:.1f}" if p in fixed else "-" for p in ("uniform", "geometric")]
    return "| " + " | ".join(cells) + " |"


def sweep_md(work: Path, runs: list[dict[str, Any]]) -> str:
    """Every adaptive run's points: the default decoding (eval.json) and the sweep (sweep.json)."""
    lines = ["| run | setting | avg steps | steps at query (by hops) | Spearman | learned acc % (by hops) | "
             "uniform acc % | geometric acc % |", "|" + "---|" * 8]
    for r in runs:
        if r["method"] not in ADAPTIVE:
            continue
        lines.append(_point_row(r["run"], "default (test, 2,000 ex.)", r["learned"], r.get("fixed", {})))
        sweep = work / "runs" / r["run"] / "sweep.json"
        if sweep.is_file():
            for p in json.loads(sweep.read_text())["points"]:
                knob = f"alpha={p['alpha']:g}" if p.get("alpha") is not None else f"tau={p['tau']:g}"
                lines.append(_point_row(r["run"], knob + " (500 ex.)", p["learned"], p["fixed"]))
    return "\n".join(lines) + "\n"


def forced_md(work: Path, runs: list[dict[str, Any]]) -> str:
    lines = ["| run | forced depth | accuracy % by hop count |", "|---|---|---|"]
    for r in runs:
        path = work / "runs" / r["run"] / "forced.json"
        if path.is_file():
            for row in json.loads(path.read_text())["depths"]:
                per = " / ".join(f"{p['accuracy'] * 100:.1f}" for p in row["per_difficulty"])
                lines.append(f"| {r['run']} | {row['depth']} | {per} |")
    return "\n".join(lines) + "\n"


def report(work: Path, docs: Path) -> None:
    every = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("*/eval.json"))]
    runs = [r for r in every if not r.get("variant")]
    extra = [r for r in every if r.get("variant")]
    if not runs:
        raise SystemExit(f"no finished runs under {work / 'runs'}")
    docs.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    extra_rows = aggregate(extra) if extra else []
    summary = {"runs": runs, "aggregate": rows, "extra_runs": extra, "extra_aggregate": extra_rows}
    (docs / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    text = table_md(rows) + "\nAdaptive runs: default decoding and the alpha / tau sweep, each with fixed pruning " \
        "at the same average steps.\n\n" + sweep_md(work, runs + extra) + "\nAdaptive runs at a forced constant " \
        "depth (every token, 500 test examples).\n\n" + forced_md(work, runs + extra)
    if extra_rows:
        text += "\nInvestigation runs (`extra` phase, one recipe change each; not in the tables above).\n\n" \
            + extra_md(extra_rows)
    (docs / "table.md").write_text(text)
    paths = plots(rows, docs)
    for name in ("bench.log", "commands.txt"):  # timings + load, and every command in order
        if (work / name).is_file():
            (docs / name).write_text((work / name).read_text())
    print(text)
    print("wrote", docs / "summary.json", docs / "table.md", *paths)
