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
from paired_stats import interval
from scripted_readers import floors

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


def _multi_hop(result: dict[str, Any], depths: set[int] | None = None) -> float:
    """Accuracy over answers with 2 or more hops, or of the given hop counts (count-weighted)."""
    pts = [p for p in result["per_difficulty"]
           if (p["difficulty"] >= 2 if depths is None else p["difficulty"] in depths)]
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
    # Each adaptive run's alpha / tau sweep points (Part B reads depth at tau 0.5 from them).
    sweeps = {r["run"]: json.loads(f.read_text())["points"] for r in runs + extra
              if (f := work / "runs" / r["run"] / "sweep.json").is_file()}
    if sweeps:
        summary["sweeps"] = sweeps
    # What context-only readers score on the multi-step test queries: the protocol's chance level (Part B).
    found = floors(work / "data") if (work / "data" / "meta.json").is_file() else None
    old = json.loads((docs / "summary.json").read_text()) if (docs / "summary.json").is_file() else {}
    if found is not None or old.get("floors") is not None:
        summary["floors"] = found if found is not None else old["floors"]
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


# ---------------------------------------------------------------------------------------------- generated text
# What docs/REASONING.md and the README quote, rendered from summary.json alone (benchmarks/render_reports.py).


def _group(r: dict[str, Any]) -> tuple[str, int, str, int]:
    return r["method"], r["K"], r.get("variant") or "", r.get("steps") or 0


def _groups(runs: list[dict[str, Any]]) -> dict[tuple[str, int, str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int, str, int], list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: (r.get("steps") or 0, r.get("variant") or "", METHOD_ORDER.index(r["method"]),
                                         r["K"], r["seed"])):
        out.setdefault(_group(r), []).append(r)
    return out


def _name(method: str, k: int, variant: str) -> str:
    return f"{method} K={k}" + (f" ({variant})" if variant else "")


def settings_md(summary: dict[str, Any]) -> str:
    """Per run group, what each run recorded: steps, seeds, test examples scored, and the tau / alpha in force at
    evaluation (the checkpoint's own). Training-time method options were not recorded by these runs."""
    lines = ["| run group | steps | seeds | test examples per seed | eval tau per seed | eval alpha |",
             "|---|---|---|---|---|---|"]
    for (method, k, variant, steps), rs in _groups(summary["runs"] + summary["extra_runs"]).items():
        taus = " / ".join(f"{r['learned']['settings']['tau']:g}" for r in rs)
        alphas = sorted({r["learned"]["settings"]["alpha"] for r in rs})
        seeds = ", ".join(str(r["seed"]) for r in rs)
        examples = " / ".join(f"{r['learned']['examples']:,}" for r in rs)
        lines.append(f"| {_name(method, k, variant)} | {steps:,} | {seeds} | {examples} | {taus} | "
                     f"{' / '.join(f'{a:g}' for a in alphas)} |")
    return "\n".join(lines) + "\n"


def _paired_points(ours: list[dict[str, Any]], base: list[dict[str, Any]], value) -> dict[str, Any] | None:
    by_seed = {r["seed"]: value(r) for r in base}
    diffs = [value(r) - by_seed[r["seed"]] for r in ours if r["seed"] in by_seed]
    if not diffs:
        return None
    return {**interval(diffs, lower_is_better=False), "seeds": [r["seed"] for r in ours if r["seed"] in by_seed]}


def multi_hop_gains(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Multi-hop accuracy minus vanilla's at the same steps, paired by seed, for every method group that has a
    vanilla group at its step count (points, with a 95 % t interval over the paired seeds)."""
    groups = _groups(summary["runs"] + summary["extra_runs"])
    vanilla = {steps: rs for (m, _, variant, steps), rs in groups.items()
               if m == "vanilla" and variant in ("", f"steps{steps}")}
    rows = []
    for (method, k, variant, steps), rs in groups.items():
        if method == "vanilla" or steps not in vanilla or variant not in ("", f"steps{steps}"):
            continue
        p = _paired_points(rs, vanilla[steps], lambda r: 100 * _multi_hop(r["learned"]))
        if p:
            rows.append({"method": method, "K": k, "steps": steps, **p})
    return rows


def iso_flops_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run whose learned depth skips steps (avg steps < K at the query answers) and has fixed-pruning controls:
    learned accuracy minus uniform and geometric pruning at the same average steps (points)."""
    rows = []
    for r in summary["runs"] + summary["extra_runs"]:
        fixed = r.get("fixed") or {}
        if "uniform" not in fixed:
            continue
        rows.append({"run": r["run"], "method": r["method"], "K": r["K"], "variant": r.get("variant") or "",
                     "steps": r.get("steps"), "seed": r["seed"], "tau": r["learned"]["settings"]["tau"],
                     "avg_steps": r["learned"]["avg_steps"], "learned": 100 * r["learned"]["accuracy"],
                     "uniform": 100 * fixed["uniform"]["accuracy"],
                     "geometric": 100 * fixed["geometric"]["accuracy"] if "geometric" in fixed else None,
                     "spearman": r["learned"]["spearman_steps_difficulty"]})
    return rows


def _signed(x: float) -> str:
    """+1.2 / -0.3, and 0.0 rather than a rounded -0.0."""
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _interval(p: dict[str, Any]) -> str:
    if math.isinf(p["high"]):
        return f"{p['mean']:+.1f} (1 seed: no interval)"
    return f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]"


def claims_md(summary: dict[str, Any]) -> str:
    """The numbers behind the claims, with their conditions: seeds, steps, the tau each run was scored at."""
    gains = multi_hop_gains(summary)
    lines = ["**Multi-hop accuracy minus vanilla's at the same training steps** (percentage points, paired by seed, "
             "95 % t interval; every test answer with 2 or 3 hops):", "",
             "| method | steps | seeds | gain over vanilla, points |", "|---|---|---|---|"]
    for g in sorted(gains, key=lambda g: (g["steps"], -g["mean"])):
        lines.append(f"| {g['method']} K={g['K']} | {g['steps']:,} | {', '.join(map(str, g['seeds']))} | "
                     f"{_interval(g)} |")
    iso = iso_flops_rows(summary)
    pruning = [r for r in iso if r["avg_steps"] < r["K"] - 1e-6]
    better = [r for r in pruning if r["learned"] - r["uniform"] > 0.05]
    worse = [r for r in pruning if r["learned"] - r["uniform"] < -0.05]
    lines += ["", f"**Learned depth vs uniform fixed pruning at the same average steps**, every run that skips "
              f"steps and has the controls ({len(pruning)} runs, each scored at the tau it recorded): learned better "
              f"by more than 0.05 points in {len(better)}, worse in {len(worse)}, level in "
              f"{len(pruning) - len(better) - len(worse)}.", "",
              "| run | steps | tau | avg steps | Spearman(steps, hops) | learned % | uniform % | geometric % | "
              "learned - uniform |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(pruning, key=lambda r: r["learned"] - r["uniform"], reverse=True):
        rho = "n/a" if r["spearman"] is None or (isinstance(r["spearman"], float) and math.isnan(r["spearman"])) \
            else f"{r['spearman']:.2f}"
        geo = "-" if r["geometric"] is None else f"{r['geometric']:.1f}"
        lines.append(f"| {r['run']} | {r['steps']:,} | {r['tau']:g} | {r['avg_steps']:.2f} | {rho} | "
                     f"{r['learned']:.1f} | {r['uniform']:.1f} | {geo} | {_signed(r['learned'] - r['uniform'])} |")
    return "\n".join(lines) + "\n"


def readme_row(summary: dict[str, Any], table: str = "") -> str:
    """The README's reasoning-testbed result, every number with its seeds and steps (`table`: the committed
    table.md, for the sweep points)."""
    gains = multi_hop_gains(summary)
    best = {}  # per step count, the gain with the largest lower confidence bound: a resolved gain, not a lucky seed
    for g in gains:
        if g["steps"] not in best or g["low"] > best[g["steps"]]["low"]:
            best[g["steps"]] = g
    iso = [r for r in iso_flops_rows(summary) if r["avg_steps"] < r["K"] - 1e-6]
    diffs = [r["learned"] - r["uniform"] for r in iso]
    top = max(iso, key=lambda r: r["spearman"] if isinstance(r["spearman"], float) and not math.isnan(r["spearman"])
              else -2) if iso else None
    parts = ["multi-hop gain over vanilla at equal steps with the largest lower 95 % bound: "
             + "; ".join(f"{g['method']} K={g['K']} {_interval(g)} points at {s:,} steps ({g['n']} seeds)"
                         for s, g in sorted(best.items()))]
    if iso:
        parts.append(f"learned depth vs uniform pruning at equal steps: {sum(d > 0.05 for d in diffs)} of {len(iso)} "
                     f"runs better, {sum(d < -0.05 for d in diffs)} worse (differences {_signed(min(diffs))} to "
                     f"{_signed(max(diffs))} points; default decoding, each run's recorded tau)")
    sweep = sweep_points(table)
    if sweep:
        gaps = [p["learned"] - p["uniform"] for p in sweep]
        parts.append(f"over the {len(sweep)} alpha / tau sweep points: {sum(g > 1 for g in gaps)} better by more than "
                     f"1 point, {sum(g < -1 for g in gaps)} worse (differences {_signed(min(gaps))} to "
                     f"{_signed(max(gaps))} points)")
    if top is not None:
        parts.append(f"highest Spearman(steps, hops): {top['spearman']:.2f} ({top['run']}, one seed, "
                     f"tau {top['tau']:g})")
    return "| reasoning testbed (12-symbol pointer chasing, 1-3 hops, 1 layer d=64) | " + "; ".join(parts) + \
        " | [REASONING.md](docs/REASONING.md) |\n"


def sweep_points(table: str) -> list[dict[str, Any]]:
    """The sweep rows of a committed table.md (`sweep_md` wrote them from each run's sweep.json): run, knob,
    average steps, Spearman, learned / uniform / geometric accuracy %."""
    points, in_sweep = [], False
    for line in table.splitlines():
        if line.startswith("| run | setting | avg steps"):
            in_sweep = True
            continue
        if in_sweep and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_sweep or len(cells) != 8 or cells[0].startswith("---") or cells[6] == "-":
            continue
        points.append({"run": cells[0], "knob": cells[1].split(" (")[0], "avg_steps": float(cells[2]),
                       "spearman": None if cells[4] == "n/a" else float(cells[4]),
                       "learned": float(cells[5].split()[0]), "uniform": float(cells[6]),
                       "geometric": None if cells[7] == "-" else float(cells[7])})
    return points


def sweep_verdicts_md(table: str) -> str:
    """Learned depth vs uniform pruning over every sweep point (alpha / tau), wins and losses both listed."""
    pts = sweep_points(table)
    better = [p for p in pts if p["learned"] - p["uniform"] > 1.0]
    worse = [p for p in pts if p["learned"] - p["uniform"] < -1.0]
    lines = [f"Over the {len(pts)} sweep points with fixed-pruning controls (500 test examples each): learned depth "
             f"more than 1 point better than uniform pruning at the same average steps at {len(better)}, more than "
             f"1 point worse at {len(worse)}, within 1 point at {len(pts) - len(better) - len(worse)}. "
             + (f"Largest win {_signed(max(p['learned'] - p['uniform'] for p in better))} points. " if better else "")
             + "The points where it loses:", "",
             "| run | knob | avg steps | learned % | uniform % | learned - uniform |", "|---|---|---|---|---|---|"]
    for p in sorted(worse, key=lambda p: p["learned"] - p["uniform"]):
        lines.append(f"| {p['run']} | {p['knob']} | {p['avg_steps']:.2f} | {p['learned']:.1f} | {p['uniform']:.1f} | "
                     f"{_signed(p['learned'] - p['uniform'])} |")
    return "\n".join(lines) + "\n"
