"""Turn the study's run directories and analyses into docs/results/: summary.json, table.md, plots.

Called by `python benchmarks/study.py report`. Every number comes from a file the earlier phases
wrote; nothing is re-measured here except the analytic training FLOPs, computed with
`ponderlm.flops.flops` at the executed steps the trainer logged.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from ponderlm.config import ADAPTIVE_METHODS, PonderConfig
from ponderlm.eval.plots import plot_pareto
from ponderlm.flops import flops

# Plots of one seed copied next to the table: (method, analysis).
PLOTS = [("ponderlm3", "difficulty"), ("adaponder", "difficulty"), ("latent_cot", "difficulty"),
         ("ponderlm3", "alpha"), ("adaponder", "gates"), ("ponderlm2", "jacobi"), ("ponderlm3", "jacobi")]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                total += _numel(f.get_slice(name).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_record(run: Path, seq_len: int) -> dict[str, Any]:
    """Evaluation, training cost and training wall-clock of one run directory."""
    config = PonderConfig.from_pretrained(run / "final")
    evaluation = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    rows = [r for r in _read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    rows = list({r["step"]: r for r in rows}.values())  # a resumed run may repeat steps: keep the last
    tokens = rows[-1]["tokens_seen"]
    per_step_tokens = tokens / len(rows)
    train_steps = statistics.fmean(r["executed_steps"] for r in rows)
    adaptive = config.method in ADAPTIVE_METHODS
    cost = flops(config, seq_len, avg_steps=train_steps if adaptive else None, training=True)
    return {
        "method": config.method, "K": config.max_steps, "params": _parameter_count(run / "final"),
        "val_ppl": evaluation["ppl"], "val_loss": evaluation["loss"], "avg_steps": evaluation["avg_steps"],
        "flops_ratio": evaluation["flops_ratio"], "eval_tokens": evaluation["tokens"],
        "eval_settings": evaluation.get("settings"),
        "train_executed_steps": train_steps, "tokens_seen": tokens,
        "train_flops": cost["training"] * tokens, "train_flops_ratio": cost["training_ratio"],
        "train_seconds": sum(per_step_tokens / r["tokens_per_s"] for r in rows),
        "trainer_val_ppl": summary.get("val_ppl"),
    }


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (with 2 seeds: the distance of each seed from the mean)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def _pareto_points(out: Path, seed: int, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    points = []
    for method in methods:
        path = out / "analysis" / f"s{seed}" / method / "pareto.json"
        if path.exists():
            for p in json.loads(path.read_text())["points"]:
                p = dict(p)
                p["curve"] = p["curve"].replace(f"{method}-s{seed}", method)
                points.append(p)
    return points


def _by_policy(points: list[dict[str, Any]], method: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p["method"] == method:
            out.setdefault(p["policy"], []).append(p)
    return out


def iso_flops_comparison(points: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """Each learned point beside the fixed-pruning points run at its measured average steps."""
    groups = _by_policy(points, method)
    rows = []
    for learned in sorted(groups.get("learned", []), key=lambda p: p["avg_steps"]):
        row = {"avg_steps": learned["avg_steps"], "learned_ppl": learned["ppl"],
               "knob": {"alpha": learned["alpha"], "tau": learned["tau"]}}
        for policy in ("uniform", "geometric"):
            match = [p for p in groups.get(policy, []) if abs(p["depth_target"] - learned["avg_steps"]) < 1e-3]
            if match:
                row[f"{policy}_ppl"] = match[0]["ppl"]
                row[f"{policy}_steps"] = match[0]["avg_steps"]
        rows.append(row)
    return rows


def claims(records: dict[tuple[str, int], dict[str, Any]], pareto: dict[int, list[dict[str, Any]]],
           analyses: dict[tuple[str, int, str], dict[str, Any]], seeds: tuple[int, ...]) -> dict[str, Any]:
    """The four paper claims of the study issue, as measured numbers per seed (no verdict wording)."""
    result: dict[str, Any] = {}

    def ppl(method: str, seed: int) -> float | None:
        rec = records.get((method, seed))
        return None if rec is None else rec["val_ppl"]

    result["1_ponderlm2_vs_vanilla"] = [
        {"seed": s, "vanilla_ppl": ppl("vanilla", s), "ponderlm2_ppl": ppl("ponderlm2", s)} for s in seeds]

    rows = []
    for s in seeds:
        p2 = ppl("ponderlm2", s)
        learned = _by_policy(pareto.get(s, []), "ponderlm3").get("learned", [])
        reaching = [p for p in learned if p2 is not None and p["ppl"] <= p2]
        rows.append({"seed": s, "ponderlm2_ppl": p2, "ponderlm2_steps": 3.0,
                     "ponderlm3_curve": sorted((p["avg_steps"], p["ppl"], p["alpha"]) for p in learned),
                     "fewest_steps_at_or_below_ponderlm2_ppl": min((p["avg_steps"] for p in reaching), default=None),
                     "iso_flops": iso_flops_comparison(pareto.get(s, []), "ponderlm3")})
    result["2_ponderlm3"] = rows

    rows = []
    for s in seeds:
        gates = analyses.get(("adaponder", s, "gates"), {})
        difficulty = analyses.get(("adaponder", s, "difficulty"), {})
        rows.append({"seed": s, "iso_flops": iso_flops_comparison(pareto.get(s, []), "adaponder"),
                     "spearman_nll_steps": gates.get("spearman_nll_steps"),
                     "spearman_difficulty_steps": difficulty.get("spearman_difficulty_steps"),
                     "mean_nll_by_steps": {k: v.get("mean_nll") if isinstance(v, dict) else v
                                           for k, v in gates.get("nll_by_steps", {}).items()}})
    result["3_adaponder"] = rows

    result["4_latent_cot_vs_ponderlm2"] = [
        {"seed": s, **{f"{m}_{key}": records[(m, s)][key] for m in ("latent_cot", "ponderlm2", "vanilla")
                       if (m, s) in records for key in ("val_ppl", "train_flops", "avg_steps")}}
        for s in seeds]
    result["difficulty_spearman"] = {
        f"{m}-s{s}": analyses[(m, s, "difficulty")].get("spearman_difficulty_steps")
        for (m, s, a) in analyses if a == "difficulty"}
    result["jacobi_contraction"] = {
        f"{m}-s{s}": analyses[(m, s, "jacobi")].get("mean_contraction") for (m, s, a) in analyses if a == "jacobi"}
    return result


def table(records: dict[tuple[str, int], dict[str, Any]], methods: tuple[str, ...], seeds: tuple[int, ...],
          decode: dict[str, Any] | None) -> str:
    lines = [
        "| method | val ppl (mean ± half-range) | ppl per seed | avg executed steps | inference FLOPs vs vanilla "
        "| training FLOPs (10^12) | training FLOPs vs vanilla | training time, 1 thread (min) | decode tok/s (b=1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        recs = [records[(m, s)] for s in seeds if (m, s) in records]
        if not recs:
            continue
        mean, spread = _mean_spread([r["val_ppl"] for r in recs])
        per_seed = " / ".join(f"{r['val_ppl']:.1f}" for r in recs)
        steps = statistics.fmean(r["avg_steps"] for r in recs)
        fr = statistics.fmean(r["flops_ratio"] for r in recs)
        tf = statistics.fmean(r["train_flops"] for r in recs) / 1e12
        tfr = statistics.fmean(r["train_flops_ratio"] for r in recs)
        minutes = statistics.fmean(r["train_seconds"] for r in recs) / 60
        tok_s = decode["rows"][m]["tok_per_s"] if decode and m in decode["rows"] else float("nan")
        lines.append(f"| {m} | {mean:.1f} ± {spread:.1f} | {per_seed} | {steps:.2f} | {fr:.2f}x | {tf:.1f} "
                     f"| {tfr:.1f}x | {minutes:.1f} | {tok_s:.0f} |")
    return "\n".join(lines) + "\n"


def plot_study_pareto(pareto: dict[int, list[dict[str, Any]]], records: dict[tuple[str, int], dict[str, Any]],
                      path: Path) -> Path:
    """One panel per adaptive method: learned depth vs the uniform / geometric controls at the same
    average steps, every seed, with the fixed-depth methods of that seed as reference markers."""
    from ponderlm.eval.plots import _figure, _save

    adaptive = [m for m in ("ponderlm3", "adaponder", "latent_cot")
                if any(p["method"] == m for pts in pareto.values() for p in pts)]
    fig, axes = _figure(ncols=max(1, len(adaptive)), width=4.6, height=4.0)
    styles = {"learned": "-o", "uniform": "--s", "geometric": ":^"}
    refs = {"vanilla": "k", "pause": "tab:gray", "looped": "tab:brown", "ponderlm": "tab:olive",
            "ponderlm2": "tab:red"}
    for ax, method in zip(axes, adaptive):
        for seed, points in sorted(pareto.items()):
            for policy, pts in sorted(_by_policy(points, method).items()):
                pts = sorted(pts, key=lambda p: p["avg_steps"])
                ax.plot([p["avg_steps"] for p in pts], [p["ppl"] for p in pts], styles.get(policy, "o"),
                        markersize=4, alpha=1.0 if seed == min(pareto) else 0.55,
                        color={"learned": "tab:blue", "uniform": "tab:orange", "geometric": "tab:green"}[policy],
                        label=f"{policy} (seed {seed})")
            for ref, color in refs.items():
                rec = records.get((ref, seed))
                if rec is not None:
                    ax.plot([rec["avg_steps"]], [rec["val_ppl"]], "D", color=color, markersize=5,
                            alpha=1.0 if seed == min(pareto) else 0.55, label=f"{ref} (seed {seed})")
        ax.set_title(method)
        ax.set_xlabel("avg executed additional steps per token")
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def write_report(out: Path, docs: Path, methods: tuple[str, ...], seeds: tuple[int, ...], seq_len: int) -> None:
    records = {}
    for m in methods:
        for s in seeds:
            run = out / "runs" / f"{m}-s{s}"
            if (run / "eval.json").exists():
                records[(m, s)] = run_record(run, seq_len)
    analyses = {}
    for path in (out / "analysis").glob("s*/*/*.json"):
        seed, method, name = int(path.parent.parent.name[1:]), path.parent.name, path.stem
        if name != "pareto":
            analyses[(method, seed, name)] = json.loads(path.read_text())
    pareto = {s: _pareto_points(out, s, methods) for s in seeds}
    decode_path = out / "decode.json"
    decode = json.loads(decode_path.read_text()) if decode_path.exists() else None

    docs.mkdir(parents=True, exist_ok=True)
    for s, points in pareto.items():
        if points:
            plot_pareto(points, docs / f"pareto-all-s{s}.png")
    if any(pareto.values()):
        plot_study_pareto(pareto, records, docs / "pareto.png")
    for method, name in PLOTS:
        src = out / "analysis" / f"s{seeds[0]}" / method / f"{name}.png"
        if src.exists():
            shutil.copyfile(src, docs / f"{name}-{method}.png")
    (docs / "table.md").write_text(table(records, methods, seeds, decode))
    commands = out / "commands.txt"
    if commands.exists():  # the exact command lines, with the interpreter path made portable
        lines = [" ".join(["python", *line.split()[1:]]) for line in commands.read_text().splitlines() if line]
        (docs / "commands.txt").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    summary = {"seeds": list(seeds), "seq_len": seq_len,
               "runs": {f"{m}-s{s}": r for (m, s), r in records.items()},
               "claims": claims(records, pareto, analyses, seeds), "decode": decode,
               "pareto": {f"s{s}": p for s, p in pareto.items()}}
    (docs / "summary.json").write_text(json.dumps(summary, indent=1))
    print((docs / "table.md").read_text())
    print(f"wrote {docs / 'summary.json'}, {docs / 'table.md'} and plots in {docs}")
