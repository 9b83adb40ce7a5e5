"""docs/DECISIVE.md, rendered from the committed run records of `benchmarks/decisive.py`
(docs/results/decisive/runs/*.json, lr/*.json) and judged against docs/protocols/DECISIVE.md.

Every verdict follows the protocol's rule: the per-seed paired difference in loss (nats, method minus control),
its mean and 95 % t interval; "better" / "worse" only when the whole interval is on one side of 0. A claim whose
runs are not all recorded yet is reported as **not yet run**, with the missing runs named.

    python benchmarks/render_reports.py        # rewrites docs/DECISIVE.md with the other reports
    python benchmarks/decisive_report.py       # also redraws the curves (docs/results/decisive/curves.png)
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from paired_stats import interval

PONDERING = ("ponderlm", "ponderlm2", "ponderlm3", "latent_cot")
# The protocol's training-FLOP-matched control of each arm's cost (PonderLM v1's cost has none: A2 is not testable).
COST_CONTROL = {"ponderlm2": "vanilla_long_p2", "ponderlm3": "vanilla_long_p2", "latent_cot": "vanilla_long_lcot",
                "ponderlm": None}


def load(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(run name -> record, arm -> LR sweep result) from the committed files."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))} \
        if (folder / "runs").is_dir() else {}
    sweeps = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "lr").glob("*.json"))} \
        if (folder / "lr").is_dir() else {}
    return runs, sweeps


def _main(runs: dict[str, dict[str, Any]], arm: str) -> dict[int, dict[str, Any]]:
    """seed -> the arm's main run at its own best rate (run name `<arm>-s<seed>`)."""
    return {r["seed"]: r for name, r in runs.items() if name == f"{arm}-s{r['seed']}" and r["phase"] == "main"}


def paired(runs: dict[str, dict[str, Any]], arm: str, control: str, split: str = "val") -> dict[str, Any] | None:
    ours, theirs = _main(runs, arm), _main(runs, control)
    seeds = sorted(s for s in ours.keys() & theirs.keys() if ours[s].get(split) and theirs[s].get(split))
    if not seeds:
        return None
    return {**interval([ours[s][split]["loss"] - theirs[s][split]["loss"] for s in seeds]), "seeds": seeds}


def _ci(p: dict[str, Any] | None) -> str:
    if p is None:
        return "not yet run"
    interval = "no interval (1 seed)" if math.isinf(p["high"]) else f"[{p['low']:+.3f}, {p['high']:+.3f}]"
    return f"{p['mean']:+.3f} {interval}, {len(p['seeds'])} seeds: {p['verdict']}"


def sweep_table(sweeps: dict[str, dict[str, Any]]) -> str:
    if not sweeps:
        return "No learning-rate sweep has finished yet.\n"
    lines = ["| arm | rates tried: final val loss (250 steps, seed 0) | best | status |", "|---|---|---|---|"]
    for arm, s in sweeps.items():
        losses = ", ".join(f"{r}: {v:.4f}" for r, v in s.get("losses", {}).items()) or "-"
        if s.get("final"):
            edge = " (the best is still at an end after two extensions)" if s.get("edge") else ""
            lines.append(f"| {arm} | {losses} | {s['best']:g} | final{edge} |")
        else:
            lines.append(f"| {arm} | {losses} | - | range extended {s['extensions']}x, running |")
    return "\n".join(lines) + "\n"


def runs_table(runs: dict[str, dict[str, Any]]) -> str:
    main = [r for r in runs.values() if r["phase"] == "main"]
    if not main:
        return "No main run has finished yet.\n"
    lines = ["| run | lr | tokens | parameters | val loss (ppl) | held-out loss (ppl) | avg steps | wall min "
             "(load at start) |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(main, key=lambda r: r["run"]):
        held = "not scored" if not r.get("heldout") else f"{r['heldout']['loss']:.4f} ({r['heldout']['ppl']:.1f})"
        val = "n/a" if not r.get("val") else f"{r['val']['loss']:.4f} ({r['val']['ppl']:.1f})"
        lines.append(f"| {r['run']} | {r['lr']:g} | {r['tokens_seen']:,} | {r['parameters']:,} | {val} | {held} | "
                     f"{(r.get('val') or {}).get('avg_steps', 0):.2f} | {r['wall_seconds'] / 60:.1f} "
                     f"({r['load_average']['start']:.1f}) |")
    return "\n".join(lines) + "\n"


def _criterion(*found: dict[str, Any] | None) -> str:
    """The protocol's rule for a claim resting on several comparisons: met when every one is "better"."""
    if any(p is None for p in found):
        return "not yet run"
    return "met" if all(p["verdict"] == "better" for p in found) else "not met"


def claims(runs: dict[str, dict[str, Any]]) -> str:
    out = []
    a1 = []
    for arm in PONDERING:
        v, h = paired(runs, arm, "vanilla_scaled"), paired(runs, arm, "vanilla_scaled", "heldout")
        a1.append(f"| {arm} | {_ci(v)} | {_ci(h)} | {_criterion(v, h)} |")
    out.append("**A1: better than `vanilla_scaled` on the validation split and the held-out text** (loss difference, "
               "nats, method minus control):\n\n| arm | validation | held-out | criterion |\n|---|---|---|---|\n"
               + "\n".join(a1) + "\n")
    a2 = []
    for arm in PONDERING:
        deep = paired(runs, arm, "vanilla_deep")
        if COST_CONTROL[arm] is None:
            a2.append(f"| {arm} | {_ci(deep)} | none in the protocol | not testable |")
            continue
        long = paired(runs, arm, COST_CONTROL[arm])
        a2.append(f"| {arm} | {_ci(deep)} | `{COST_CONTROL[arm]}`: {_ci(long)} | {_criterion(deep, long)} |")
    out.append("**A2: better than the compute-matched controls** (validation):\n\n| arm | vs `vanilla_deep` "
               "(inference FLOPs) | vs the training-FLOP-matched control | criterion |\n|---|---|---|---|\n"
               + "\n".join(a2) + "\n")
    a3 = []
    for arm in PONDERING:
        p = paired(runs, arm, "vanilla_official")
        a3.append(f"| {arm} | {_ci(p)} | {_criterion(p)} |")
    out.append("**A3: better than `vanilla_official`** (validation):\n\n| arm | vs `vanilla_official` | criterion |\n"
               "|---|---|---|\n" + "\n".join(a3) + "\n")
    a4 = []
    for arm in PONDERING:
        ours, base = _main(runs, arm), _main(runs, "vanilla_scaled")
        slopes = []
        for seed in sorted(ours.keys() & base.keys()):
            a = {c["tokens"]: c["val_loss"] for c in ours[seed]["curve"]}
            b = {c["tokens"]: c["val_loss"] for c in base[seed]["curve"]}
            pts = sorted((t, a[t] - b[t]) for t in a.keys() & b.keys())[-3:]
            if len(pts) >= 2:
                xs, ys = [math.log2(t) for t, _ in pts], [g for _, g in pts]
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
        met = "not yet run" if not slopes else "met" if all(s < 0 for s in slopes) else "not met"
        a4.append(f"| {arm} | {', '.join(f'{s:+.3f}' for s in slopes) or '-'} | {met} |")
    out.append("**A4: the gap to `vanilla_scaled` shrinks with tokens** (slope of the paired gap against log2 tokens "
               "over the last three evaluations, per seed):\n\n| arm | slope per seed | criterion |\n|---|---|---|\n"
               + "\n".join(a4) + "\n")
    return "\n".join(out)


def render(folder: Path, planned: list[str] | None = None) -> str:
    runs, sweeps = load(folder)
    hours = sum(r["wall_seconds"] for r in runs.values()) / 3600
    text = f"""# Decisive experiments: results so far

<!-- Generated by benchmarks/decisive_report.py from docs/results/decisive/ (the run records of
     benchmarks/decisive.py); do not edit: python benchmarks/render_reports.py rewrites it and
     tests/test_reports.py fails when it drifts. -->

The protocol, fixed before the runs: [protocols/DECISIVE.md](protocols/DECISIVE.md). Runs recorded so far:
{len(runs)} ({sum(1 for r in runs.values() if r['phase'] == 'lr')} learning-rate sweep runs,
{sum(1 for r in runs.values() if r['phase'] == 'main')} main runs), {hours:.1f} hours of single-thread wall time
in all (each run's time and the machine's load are in its record). The grid resumes from these records:
`python benchmarks/decisive.py run`.

## Learning-rate sweeps

{sweep_table(sweeps)}
## Runs

{runs_table(runs)}
Validation loss against training tokens and against training FLOPs:
[results/decisive/curves.png](results/decisive/curves.png) (`python benchmarks/decisive_report.py` redraws it from
the same records).

## The protocol's claims

{claims(runs)}
"""
    if planned is not None:
        text += ("\n## Not run yet\n\nIn the protocol's order, the runs whose rate is known and that have no record: "
                 + (", ".join(planned) if planned else "none") + ".\n")
    return text


def plot_curves(folder: Path) -> Path | None:
    """Validation loss of every main run against training tokens and against training FLOPs (two panels; seeds as
    thin lines, the arm's mean over seeds bold)."""
    from ponderlm.eval.plots import _figure, _save

    runs, _ = load(folder)
    arms = sorted({r["arm"] for r in runs.values() if r["phase"] == "main"})
    if not arms:
        return None
    fig, axes = _figure(ncols=2, width=6.0, height=4.4)
    for i, arm in enumerate(arms):
        color = f"C{i % 10}"
        by_seed = _main(runs, arm)
        for axis, key in zip(axes, ("tokens", "train_flops")):
            for r in by_seed.values():
                axis.plot([c[key] for c in r["curve"]], [c["val_loss"] for c in r["curve"]], "-", color=color,
                          alpha=0.3, linewidth=0.8)
            xs = sorted({c[key] for r in by_seed.values() for c in r["curve"]})
            mean = [statistics.fmean(c["val_loss"] for r in by_seed.values() for c in r["curve"] if c[key] == x)
                    for x in xs]
            axis.plot(xs, mean, "-o", color=color, markersize=3, label=f"{arm} ({len(by_seed)} seeds)")
    for axis, label in zip(axes, ("training tokens", "training FLOPs (analytic)")):
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("validation loss (nats, trainer's windows)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle("Decisive grid, main runs at each arm's own learning rate")
    return _save(fig, folder / "curves.png")


if __name__ == "__main__":
    import sys

    folder = Path(__file__).resolve().parent.parent / "docs" / "results" / "decisive"
    path = plot_curves(folder)
    print(f"wrote {path}" if path else "no main run recorded yet", file=sys.stderr)
