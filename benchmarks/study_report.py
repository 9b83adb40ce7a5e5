"""Turn the study's run directories and analyses into docs/results/: summary.json, table.md, plots.

Called by `python benchmarks/study.py report`. Every number comes from a file the earlier phases
wrote; nothing is re-measured here except the analytic training FLOPs, computed with
`ponderlm.flops.flops` at the executed steps the trainer logged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import shutil
import statistics
from pathlib import Path
from typing import Any

from ponderlm.config import PonderConfig
from ponderlm.eval.plots import plot_pareto
from ponderlm.flops import flops

# Plots of one seed copied next to the table: (method, analysis).
PLOTS = [("ponderlm3", "difficulty"), ("adaponder", "difficulty"), ("latent_cot", "difficulty"),
         ("ponderlm3", "alpha"), ("adaponder", "gates"), ("ponderlm2", "jacobi"), ("ponderlm3", "jacobi")]


CONTROL = "vanilla_scaled"  # vanilla with embed_scale sqrt(2.5 d): runs/vscale-vanilla-s<seed>


def run_dir_name(method: str, seed: int) -> str:
    return f"vscale-vanilla-s{seed}" if method == CONTROL else f"{method}-s{seed}"


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


def run_settings(run: Path, config: PonderConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """What produced a run, read from the run itself: its recipe, every setting that differs from the documented
    defaults (with its source), the method's options in force (from the saved config.json), the budget and lr."""
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config.method_class.Options)}
    return {
        "recorded": "settings" in summary,
        "recipe": summary.get("settings", {}).get("recipe"),
        "differs_from_defaults": summary.get("settings", {}).get("differs_from_defaults"),
        "method_options": options,
        "K": config.max_steps, "tau": config.tau, "alpha": config.alpha, "embed_scale": config.resolved_embed_scale,
        "init": config.init, "tie_word_embeddings": config.tie_word_embeddings,
        "lr": resolved["optim"]["lr"], "steps": resolved["train"]["steps"],
        "batch_size": resolved["train"]["batch_size"], "seq_len": resolved["data"]["seq_len"],
        "seed": resolved["train"]["seed"],
    }


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
    adaptive = config.method_class.adaptive
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
        "eval_conditions": evaluation.get("conditions"),
        "settings": run_settings(run, config, summary),
        "curve": eval_curve(run),
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
            # `ponderlm pareto` runs policies that draw the same depths (uniform = geometric at K = 1) once: the
            # point stands for each of them (`same_as`), so the iso-FLOPs tables keep both columns.
            for policy in (p["policy"], *p.get("same_as", ())):
                out.setdefault(policy, []).append(p)
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
        {"seed": s, "vanilla_ppl": ppl("vanilla", s), "vanilla_scaled_ppl": ppl(CONTROL, s),
         "ponderlm2_ppl": ppl("ponderlm2", s)} for s in seeds]

    rows = []
    for s in seeds:
        p2 = ppl("ponderlm2", s)
        learned = _by_policy(pareto.get(s, []), "ponderlm3").get("learned", [])
        reaching = [p for p in learned if p2 is not None and p["ppl"] <= p2]
        p2_steps = records[("ponderlm2", s)]["avg_steps"] if ("ponderlm2", s) in records else None
        rows.append({"seed": s, "ponderlm2_ppl": p2, "ponderlm2_steps": p2_steps,
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
        "| training FLOPs (10^12) | training FLOPs vs vanilla | training time, 1 thread (min)"
        + (" | decode tok/s (b=1) |" if decode else " |"),
        "|---|---|---|---|---|---|---|---|" + ("---|" if decode else ""),
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
                     f"| {tfr:.1f}x | {minutes:.1f} |" + (f" {tok_s:.0f} |" if decode else ""))
    return "\n".join(lines) + "\n"


def eval_curve(run: Path) -> list[tuple[int, float]]:
    """(tokens seen, val loss) at every evaluation of a run (the last row wins for a repeated step)."""
    rows = [r for r in _read_jsonl(run / "metrics.jsonl") if r.get("kind") in ("eval", "train")]
    tokens = {r["step"]: r["tokens_seen"] for r in rows if r["kind"] == "train"}
    evals = {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}
    return [(tokens[step], loss) for step, loss in sorted(evals.items()) if step in tokens]


def gap_trend(curves: dict[str, dict[int, list[tuple[int, float]]]], method: str, base: str = "vanilla"
              ) -> dict[str, Any]:
    """The validation-loss gap to `base` at each evaluation (paired by seed, then averaged over the seeds both
    have), and a straight-line fit of the gap against log(tokens) over the last three points: its slope per
    doubling of tokens and, when the gap is positive and shrinking, the token count where the line reaches
    zero. An extrapolation, labelled as such."""

    by_tokens: dict[int, list[float]] = {}
    seeds = sorted(set(curves.get(method, {})) & set(curves.get(base, {})))
    for seed in seeds:
        ours, theirs = dict(curves[method][seed]), dict(curves[base][seed])
        for tokens in ours.keys() & theirs.keys():
            by_tokens.setdefault(tokens, []).append(ours[tokens] - theirs[tokens])
    points = sorted((t, statistics.fmean(v)) for t, v in by_tokens.items() if len(v) == len(seeds))
    result: dict[str, Any] = {"gap": points, "seeds": seeds}
    tail = points[-3:]
    if len(tail) >= 2:
        xs, ys = [math.log2(t) for t, _ in tail], [g for _, g in tail]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
        result["slope_per_doubling"] = slope
        last_t, last_gap = tail[-1]
        # Only a clear trend is extrapolated, and not beyond 1000x the budget (a flat gap never "crosses").
        if last_gap > 0 and slope < -0.01 and last_gap / -slope < 10:
            result["extrapolated_crossing_tokens"] = last_t * 2 ** (last_gap / -slope)
    return result


def plot_curves(curves: dict[str, dict[int, list[tuple[int, float]]]], path: Path) -> Path:
    """Validation loss vs training tokens, every method on one plot (mean over seeds; seeds as thin lines)."""
    from ponderlm.eval.plots import _figure, _save

    fig, axes = _figure(ncols=1, width=7.0, height=4.6)
    ax = axes[0]
    for i, (method, by_seed) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for curve in by_seed.values():
            ax.plot([t for t, _ in curve], [v for _, v in curve], "-", color=color, alpha=0.25, linewidth=0.8)
        tokens = sorted({t for curve in by_seed.values() for t, _ in curve})
        mean = [statistics.fmean(v for curve in by_seed.values() for tt, v in curve if tt == t) for t in tokens]
        ax.plot(tokens, mean, "-o", color=color, markersize=3, label=f"{method} ({len(by_seed)} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def recipe_table(old: dict[tuple[str, int], dict[str, Any]], new: dict[tuple[str, int], dict[str, Any]],
                 methods: tuple[str, ...], seeds: tuple[int, ...]) -> str:
    """Old recipe (tied embeddings, HF init) vs the faithful one, same budget and K, every seed."""
    lines = ["| method | old recipe: val ppl per seed (mean) | faithful recipe: val ppl per seed (mean) "
             "| ratio to vanilla, old -> faithful |", "|---|---|---|---|"]
    for m in methods:
        cells = []
        for recs in (old, new):
            vals = [recs[(m, s)]["val_ppl"] for s in seeds if (m, s) in recs]
            cells.append(" / ".join(f"{v:.1f}" for v in vals) + (f" ({statistics.fmean(vals):.1f})" if vals else ""))
        ratios = []
        for recs in (old, new):
            pairs = [(recs[(m, s)]["val_ppl"], recs[("vanilla", s)]["val_ppl"]) for s in seeds
                     if (m, s) in recs and ("vanilla", s) in recs]
            ratios.append(f"{statistics.fmean(a / b for a, b in pairs):.2f}x" if pairs else "-")
        lines.append(f"| {m} | {cells[0]} | {cells[1]} | {ratios[0]} -> {ratios[1]} |")
    return "\n".join(lines) + "\n"


def k_table(by_k: dict[int, dict[str, Any]], vanilla: dict[str, Any] | None) -> str:
    lines = ["| PonderLM-2 K | val ppl (seed 0) | vs vanilla | inference FLOPs vs vanilla | training FLOPs vs vanilla "
             "| training time, 1 thread (min) |", "|---|---|---|---|---|---|"]
    for k, r in sorted(by_k.items()):
        rel = f"{r['val_ppl'] / vanilla['val_ppl']:.2f}x" if vanilla else "-"
        lines.append(f"| {k} | {r['val_ppl']:.1f} | {rel} | {r['flops_ratio']:.2f}x | {r['train_flops_ratio']:.1f}x "
                     f"| {r['train_seconds'] / 60:.1f} |")
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
    # The embedding-scale control (vanilla fed sqrt(2.5 d)-scaled embeddings) is reported as its own row.
    methods = (*methods[:1], CONTROL, *methods[1:]) if methods and methods[0] == "vanilla" else methods
    for m in methods:
        for s in seeds:
            run = out / "runs" / run_dir_name(m, s)
            if (run / "eval.json").exists():
                records[(m, s)] = {**run_record(run, seq_len), "method": m}
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
    curves = {m: {s: eval_curve(out / "runs" / run_dir_name(m, s)) for s in seeds if (m, s) in records}
              for m in methods}
    curves = {m: c for m, c in curves.items() if c}
    if curves:
        plot_curves(curves, docs / "curves.png")
    trends = {base: {m: gap_trend(curves, m, base) for m in curves if m not in ("vanilla", CONTROL)}
              for base in ("vanilla", CONTROL) if base in curves}
    old = {}
    for path in (out / "runs").glob("old-*-s*"):
        if (path / "eval.json").exists():
            m, s = path.name[len("old-"):].rsplit("-s", 1)
            old[(m, int(s))] = run_record(path, seq_len)
    by_k = {r["K"]: r for (m, s), r in records.items() if m == "ponderlm2" and s == seeds[0]}
    for path in (out / "runs").glob(f"k*-ponderlm2-s{seeds[0]}"):
        if (path / "eval.json").exists():
            rec = run_record(path, seq_len)
            by_k[rec["K"]] = rec
    lr_path = out / "lr.json"
    lr = json.loads(lr_path.read_text()) if lr_path.exists() else None
    # Runs not rerun here (the old-recipe and K-sweep runs) keep their records from the previous summary.json; their
    # settings were not recorded by the code of their time, which the rendered report says.
    previous_path = docs / "summary.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    for key, rec in previous.get("old_recipe", {}).items():
        m, s = key.rsplit("-s", 1)
        old.setdefault((m, int(s)), rec)
    for k, rec in previous.get("k_sweep", {}).items():
        by_k.setdefault(int(k), rec)
    diagnostics = {}
    for (m, s), _ in records.items():
        evals = [r for r in _read_jsonl(out / "runs" / run_dir_name(m, s) / "metrics.jsonl") if r.get("kind") == "eval"]
        if evals and "input_rms_token" in evals[-1]:
            diagnostics[f"{m}-s{s}"] = {k: evals[-1][k] for k in evals[-1] if k.startswith(("input_rms", "val_depth"))}
    text = table(records, methods, seeds, decode)
    text += "\n### Old vs faithful recipe\n\n" + recipe_table(old, records, ("vanilla", "ponderlm", "ponderlm2"),
                                                               seeds)
    text += "\n### PonderLM-2 K sweep\n\n" + k_table(by_k, records.get(("vanilla", seeds[0])))
    if lr:
        text += "\n### Learning-rate sweep (seed 0, final val loss from the trainer's evaluation)\n\n"
        text += "| lr | " + " | ".join(next(iter(lr["val_loss"].values()))) + " | mean |\n"
        text += "|---|" + "---|" * (len(next(iter(lr["val_loss"].values()))) + 1) + "\n"
        for rate, losses in lr["val_loss"].items():
            mark = " (chosen)" if rate == lr["chosen"] else ""
            text += (f"| {rate}{mark} | " + " | ".join(f"{v:.4f}" for v in losses.values())
                     + f" | {lr['mean_val_loss'][rate]:.4f} |\n")
    for base, by_method in trends.items():
        text += (f"\n### Gap to {base} along training (val loss difference, nats, paired by seed and averaged; "
                 "negative = better than the baseline)\n\n")
        text += ("| method | seeds | gap at each evaluation | slope per doubling of tokens (last 3) "
                 "| extrapolated crossing |\n")
        text += "|---|---|---|---|---|\n"
        for m, tr in by_method.items():
            gaps = " ".join(f"{g:+.3f}" for _, g in tr["gap"])
            cross = tr.get("extrapolated_crossing_tokens")
            slope = tr.get("slope_per_doubling")
            text += (f"| {m} | {len(tr['seeds'])} | {gaps} | {'-' if slope is None else f'{slope:+.3f}'} | "
                     f"{'-' if cross is None else f'~{cross / 1e6:.1f}M tokens'} |\n")
    (docs / "table.md").write_text(text)
    commands = out / "commands.txt"
    if commands.exists():  # the exact command lines, with the interpreter and machine paths made portable
        lines = []
        for line in commands.read_text().splitlines():
            words = shlex.split(line) if line else []
            if "_chain" in words:  # a run and its evaluation, chained: list them as the two commands they are
                lines += [shlex.join(cmd) for cmd in json.loads(words[-1])]
            elif words:
                lines.append(shlex.join(words))
        lines = [" ".join(["python", *line.split()[1:]]).replace(str(out), "results/study") for line in lines]
        lines = [re.sub(r"\S*/study\.py", "benchmarks/study.py", line) for line in lines]
        (docs / "commands.txt").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    summary = {"seeds": list(seeds), "seq_len": seq_len,
               "runs": {f"{m}-s{s}": r for (m, s), r in records.items()},
               "claims": claims(records, pareto, analyses, seeds), "decode": decode, "lr_sweep": lr,
               "old_recipe": {f"{m}-s{s}": r for (m, s), r in old.items()},
               "k_sweep": {str(k): r for k, r in by_k.items()}, "gap_to_vanilla": trends,
               "diagnostics": diagnostics,
               "pareto": {f"s{s}": p for s, p in pareto.items()}}
    summary["methods"] = list(methods)
    code = out / "CODE.txt"  # which code trained the runs (written by whoever ran them; see study_document.py)
    summary["code"] = code.read_text(encoding="utf-8").strip() if code.exists() else previous.get("code")
    (docs / "summary.json").write_text(json.dumps(summary, indent=1))
    from study_document import render_results  # benchmarks/ is this script's directory

    results_md = docs.parent / "RESULTS.md"
    results_md.write_text(render_results(summary), encoding="utf-8")
    print((docs / "table.md").read_text())
    print(f"wrote {docs / 'summary.json'}, {docs / 'table.md'}, {results_md} and plots in {docs}")
