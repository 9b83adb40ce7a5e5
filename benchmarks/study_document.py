"""docs/RESULTS.md, rendered from docs/results/summary.json alone.

Every number and setting in RESULTS.md comes from here: the settings of each run (read from the run's own
config.json / config.yaml / summary.json when the study ran), the tables, and the headline sentences, whose
verdicts follow fixed rules stated in the text (paired per-seed differences with a t interval). Nothing is typed
by hand, so `python benchmarks/render_reports.py --check` (and tests/test_reports.py) fails when the document and
the data disagree.

    python benchmarks/render_reports.py            # rewrite docs/RESULTS.md (and the other generated blocks)
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from paired_stats import interval

CONTROL = "vanilla_scaled"
ADAPTIVE = ("ponderlm3", "adaponder", "latent_cot")


# ---------------------------------------------------------------------------------------------- statistics
def paired(summary: dict[str, Any], method: str, base: str) -> dict[str, Any] | None:
    """Per-seed difference of validation loss (nats; = log of the perplexity ratio), method minus base, over the
    seeds both have: mean, 95 % t interval, and the verdict the interval allows."""
    runs = summary["runs"]
    diffs = [runs[f"{method}-s{s}"]["val_loss"] - runs[f"{base}-s{s}"]["val_loss"] for s in summary["seeds"]
             if f"{method}-s{s}" in runs and f"{base}-s{s}" in runs]
    return interval(diffs) if diffs else None


def _ci(p: dict[str, Any]) -> str:
    if math.isinf(p["high"]):
        return f"{p['mean']:+.3f} (one seed: no interval)"
    return f"{p['mean']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"


def _verdict_words(p: dict[str, Any], base: str) -> str:
    return {"better": f"better than {base} (the whole interval is below 0)",
            "worse": f"worse than {base} (the whole interval is above 0)",
            "not resolved": f"not distinguishable from {base} at {p['n']} seeds (the interval includes 0)",
            }[p["verdict"]]


# ---------------------------------------------------------------------------------------------- helpers
def _methods(summary: dict[str, Any]) -> list[str]:
    """The arms in report order (recorded by the report phase; older summaries: the order of their runs)."""
    return summary.get("methods") or list(dict.fromkeys(key.rsplit("-s", 1)[0] for key in summary["runs"]))


def _records(summary: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [summary["runs"][f"{method}-s{s}"] for s in summary["seeds"] if f"{method}-s{s}" in summary["runs"]]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2


def _ppl(summary: dict[str, Any], method: str) -> str:
    vals = [r["val_ppl"] for r in _records(summary, method)]
    return f"{_mean(vals):.1f} ± {_half_range(vals):.1f}" if vals else "n/a"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def _one(values: list[Any]) -> str:
    """The value if every run agrees, else every distinct value (a table cell must not hide a difference)."""
    distinct = list(dict.fromkeys(_value(v) for v in values))
    return distinct[0] if len(distinct) == 1 else " / ".join(distinct) + " (differs across seeds)"


# ---------------------------------------------------------------------------------------------- sections
def settings_table(summary: dict[str, Any]) -> str:
    """Per arm, from each run's own records: recipe, every method option in force, K, budget, lr, seeds, the
    threshold / bias used at evaluation, parameters and evaluated tokens."""
    lines = ["| arm | settings recorded | recipe | K | method options in force | embed scale | budget (steps x batch "
             "x seq_len = tokens) | lr | seeds | eval tau / alpha | parameters | eval tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in _methods(summary):
        recs = _records(summary, method)
        if not recs:
            continue
        st = [r.get("settings") or {} for r in recs]
        recorded = all(x.get("recorded") for x in st)
        options = [x.get("method_options") for x in st]
        if any(o is None for o in options):
            opt_text = "not recorded"
        elif all(o == {} for o in options):
            opt_text = "none"
        else:
            opt_text = "; ".join(f"{k} {_one([o.get(k) for o in options])}" for k in options[0])
        recipe = _one([x.get("recipe") or "none (documented defaults)" for x in st]) if recorded else "not recorded"
        budget = "not recorded"
        if all("steps" in x for x in st):
            steps, batch, seq = _one([x["steps"] for x in st]), _one([x["batch_size"] for x in st]), \
                _one([x["seq_len"] for x in st])
            budget = f"{steps} x {batch} x {seq} = {_one([r['tokens_seen'] for r in recs])}"
        ev = [r.get("eval_settings") or {} for r in recs]
        seeds = ", ".join(str(s) for s in summary["seeds"] if f"{method}-s{s}" in summary["runs"])
        lines.append(
            f"| {method} | {'yes' if recorded else 'no'} | {recipe} | {_one([r['K'] for r in recs])} | {opt_text} | "
            f"{_one([round(x['embed_scale'], 3) for x in st]) if all('embed_scale' in x for x in st) else 'n/a'} | "
            f"{budget} | {_one([x.get('lr') for x in st])} | {seeds} | "
            f"{_one([e.get('tau') for e in ev])} / {_one([e.get('alpha') for e in ev])} | "
            f"{_one([r['params'] for r in recs])} | {_one([r['eval_tokens'] for r in recs])} |")
    return "\n".join(lines) + "\n"


def differences_table(summary: dict[str, Any]) -> str:
    """Every setting that differs from the documented defaults, with its source (the runs' own records): the ones
    every arm shares once, then each arm's own."""
    per_arm: dict[str, dict[str, tuple[str, str, str]]] = {}
    for method in _methods(summary):
        found: dict[str, list[Any]] = {}
        for r in _records(summary, method):
            for key, d in ((r.get("settings") or {}).get("differs_from_defaults") or {}).items():
                if key not in ("train.seed", "data.data_dir"):  # per seed / per machine: not a recipe choice
                    found.setdefault(key, []).append(d)
        per_arm[method] = {key: (_one([d["value"] for d in ds]), _one([d["default"] for d in ds]),
                                 _one([d["source"] for d in ds])) for key, ds in found.items()}
    arms = [m for m, rows in per_arm.items() if rows]
    if not arms:
        return "Not recorded by these runs.\n"
    shared = [key for key in per_arm[arms[0]] if all(per_arm[m].get(key) == per_arm[arms[0]][key] for m in arms)]
    lines = ["Common to every arm:", "", "| setting | value | default | source |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {' | '.join(per_arm[arms[0]][key])} |" for key in shared]
    lines += ["", "Per arm:", "", "| arm | setting | value | default | source |", "|---|---|---|---|---|"]
    for m in arms:
        own = [key for key in per_arm[m] if key not in shared]
        lines += [f"| {m} | `{key}` | {' | '.join(per_arm[m][key])} |" for key in own] or [f"| {m} | none | | | |"]
    return "\n".join(lines) + "\n"


def main_table(summary: dict[str, Any]) -> str:
    lines = ["| method | val ppl (mean ± half-range) | ppl per seed | avg executed steps | inference FLOPs vs "
             "vanilla | training FLOPs (10^12) | training FLOPs vs vanilla | training time, 1 thread (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in _methods(summary):
        recs = _records(summary, m)
        if not recs:
            continue
        vals = [r["val_ppl"] for r in recs]
        lines.append(
            f"| {m} | {_mean(vals):.1f} ± {_half_range(vals):.1f} | {' / '.join(f'{v:.1f}' for v in vals)} | "
            f"{_mean([r['avg_steps'] for r in recs]):.2f} | {_mean([r['flops_ratio'] for r in recs]):.2f}x | "
            f"{_mean([r['train_flops'] for r in recs]) / 1e12:.1f} | "
            f"{_mean([r['train_flops_ratio'] for r in recs]):.1f}x | "
            f"{_mean([r['train_seconds'] for r in recs]) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def paired_table(summary: dict[str, Any]) -> str:
    lines = ["| method | vs vanilla: mean [95 % CI], nats | verdict | vs vanilla_scaled: mean [95 % CI], nats "
             "| verdict |", "|---|---|---|---|---|"]
    for m in _methods(summary):
        if m in ("vanilla", CONTROL):
            continue
        cells = []
        for base in ("vanilla", CONTROL):
            p = paired(summary, m, base)
            cells += ["n/a", "n/a"] if p is None else [f"{_ci(p)} ({p['n']} seeds)", p["verdict"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gap_tables(summary: dict[str, Any]) -> str:
    text = ""
    for base, by_method in summary.get("gap_to_vanilla", {}).items():
        text += (f"\n#### Gap to {base} along training (val loss difference, nats, paired by seed and averaged; "
                 "negative = better than the baseline)\n\n")
        text += ("| method | seeds | tokens at each evaluation | gap at each evaluation | slope per doubling of "
                 "tokens (last 3) | extrapolated crossing |\n|---|---|---|---|---|---|\n")
        for m, tr in by_method.items():
            cross = tr.get("extrapolated_crossing_tokens")
            slope = tr.get("slope_per_doubling")
            text += (f"| {m} | {len(tr['seeds'])} | {' '.join(f'{t:,}' for t, _ in tr['gap'])} | "
                     f"{' '.join(f'{g:+.3f}' for _, g in tr['gap'])} | {'-' if slope is None else f'{slope:+.3f}'} | "
                     f"{'-' if cross is None else f'~{cross / 1e6:.1f}M tokens'} |\n")
    return text


def legacy_tables(summary: dict[str, Any], decisive_sweeps: dict[str, dict[str, Any]] | None = None) -> str:
    """The old-recipe and K-sweep runs: not rerun when the main runs were, so their settings were not recorded."""
    text = ""
    old = summary.get("old_recipe", {})
    if old:
        text += ("\n#### Old vs faithful recipe (old-recipe runs: settings not recorded, trained by the code of "
                 "2026-12-01; their command lines are in the git history of results/commands.txt, commit 0dfa2bc)\n\n"
                 "| method | old recipe (tied, HF init): val ppl per seed (mean) | faithful recipe: val ppl per seed "
                 "(mean) |\n|---|---|---|\n")
        for m in ("vanilla", "ponderlm", "ponderlm2"):
            cells = []
            for recs in ({k: v for k, v in old.items()}, summary["runs"]):
                vals = [recs[f"{m}-s{s}"]["val_ppl"] for s in summary["seeds"] if f"{m}-s{s}" in recs]
                cells.append(" / ".join(f"{v:.1f}" for v in vals) + (f" ({_mean(vals):.1f})" if vals else ""))
            text += f"| {m} | {cells[0]} | {cells[1]} |\n"
    k_sweep = summary.get("k_sweep", {})
    if k_sweep:
        text += ("\n#### PonderLM-2 K sweep (seed 0; the K > 1 runs: settings not recorded, code of 2026-12-01)\n\n"
                 "| K | val ppl | inference FLOPs vs vanilla | training FLOPs vs vanilla | settings recorded |\n"
                 "|---|---|---|---|---|\n")
        for k, r in sorted(k_sweep.items(), key=lambda kv: int(kv[0])):
            text += (f"| {k} | {r['val_ppl']:.1f} | {r['flops_ratio']:.2f}x | {r['train_flops_ratio']:.1f}x | "
                     f"{'yes' if (r.get('settings') or {}).get('recorded') else 'no'} |\n")
    lr = summary.get("lr_sweep")
    if lr:
        names = list(next(iter(lr["val_loss"].values())))
        text += ("\n#### Learning-rate sweep (seed 0, final val loss from the trainer's evaluation; "
                 f"rule: {lr['rule']})\n\n| lr | " + " | ".join(names) + " | mean |\n|---|" + "---|" * (len(names) + 1)
                 + "\n")
        for rate, losses in lr["val_loss"].items():
            mark = " (chosen)" if rate == lr["chosen"] else ""
            text += (f"| {rate}{mark} | " + " | ".join(f"{v:.4f}" for v in losses.values())
                     + f" | {lr['mean_val_loss'][rate]:.4f} |\n")
        top = max(lr["val_loss"], key=float)
        if lr["chosen"] == top:
            text += f"\nThe chosen rate {top} is the largest tried: the best rate may lie above the range."
            final = {arm: s for arm, s in (decisive_sweeps or {}).items() if s.get("final")}
            if final:
                inside = [arm for arm, s in final.items() if not s.get("edge")]
                text += (" The decisive grid's sweeps (10x the tokens, sequence length 128, the range extended past a "
                         "winning end; [DECISIVE.md](DECISIVE.md)) found these best rates: "
                         + ", ".join(f"{arm} {s['best']:g}" for arm, s in sorted(final.items()))
                         + f" ({len(inside)} of {len(final)} inside their range).")
            text += "\n"
    return text


def _iso(summary: dict[str, Any], method: str) -> list[tuple[int, dict[str, Any]]]:
    rows = {"ponderlm3": "2_ponderlm3", "adaponder": "3_adaponder"}.get(method)
    if rows is None:
        return []
    return [(r["seed"], p) for r in summary["claims"].get(rows, []) for p in r.get("iso_flops", [])]


def _pruned(points: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """Learned points that skip at least 1 % of the steps and have a fixed-pruning control."""
    return [(s, p) for s, p in points if p["avg_steps"] < 0.99 and "uniform_ppl" in p]


def claims_section(summary: dict[str, Any]) -> str:
    seeds = len(summary["seeds"])
    out = ["## The claims, judged from the paired intervals",
           f"Each verdict below is read off the paired per-seed difference in validation loss and its 95 % t interval "
           f"(the table above): \"better\" / \"worse\" only when the whole interval is on one side of 0. The protocol "
           f"has {seeds} seeds per arm; a row with fewer says so.\n"]
    p2v, p2s = paired(summary, "ponderlm2", "vanilla"), paired(summary, "ponderlm2", CONTROL)
    if p2v and p2s:
        out.append(f"1. **PonderLM-2 beats vanilla at equal parameters.** Against plain vanilla: {_ci(p2v)} nats, "
                   f"{_verdict_words(p2v, 'vanilla')}. Against the scaled-embedding control: {_ci(p2s)} nats, "
                   f"{_verdict_words(p2s, CONTROL)}. Perplexity {_ppl(summary, 'ponderlm2')} vs "
                   f"{_ppl(summary, 'vanilla')} (vanilla) and {_ppl(summary, CONTROL)} ({CONTROL}).")
    iso3 = _iso(summary, "ponderlm3")
    pruned = _pruned(iso3)
    p3 = paired(summary, "ponderlm3", "ponderlm2")
    fewest = [r.get("fewest_steps_at_or_below_ponderlm2_ppl") for r in summary["claims"].get("2_ponderlm3", [])]
    reached = [f for f in fewest if f is not None]
    if p3:
        text = (f"2. **PonderLM-3 reaches PonderLM-2's quality with fewer steps, and beats fixed pruning at equal "
                f"steps.** At its documented defaults PonderLM-3 vs PonderLM-2: {_ci(p3)} nats, "
                f"{_verdict_words(p3, 'ponderlm2')}. Its alpha sweep reaches PonderLM-2's perplexity with fewer than "
                f"1 step per token on {sum(1 for f in reached if f < 0.99)} of {len(fewest)} seeds. ")
        min_steps = [min((p["avg_steps"] for s2, p in iso3 if s2 == s), default=None) for s in summary["seeds"]]
        text += ("Fewest average steps on the sweep, per seed: "
                 + " / ".join("n/a" if m is None else f"{m:.3f}" for m in min_steps) + ". ")
        if pruned:
            wins = sum(1 for _, p in pruned if p["learned_ppl"] < p["uniform_ppl"])
            text += (f"Where the router prunes at least 1 % of the steps ({len(pruned)} sweep points over the seeds), "
                     f"the learned depth has the lower perplexity than uniform pruning at the same steps at {wins} of "
                     f"them: " + "; ".join(f"seed {s} at {p['avg_steps']:.3f} steps {p['learned_ppl']:.1f} vs "
                                          f"{p['uniform_ppl']:.1f}" for s, p in pruned) + ".")
        else:
            text += ("No sweep point prunes 1 % of the steps, so learned vs fixed pruning is **not tested** at these "
                     "defaults (no compute penalty).")
        out.append(text)
    iso_a = _pruned(_iso(summary, "adaponder"))
    if iso_a:
        wins = sum(1 for _, p in iso_a if p["learned_ppl"] < p["uniform_ppl"])
        diffs = [math.log(p["learned_ppl"] / p["uniform_ppl"]) for _, p in iso_a]
        out.append(f"3. **AdaPonderLM beats fixed pruning at iso-FLOPs.** Over the {len(iso_a)} tau-sweep points that "
                   f"prune at least 1 % of the steps, learned halting has the lower perplexity at {wins}; the loss "
                   f"difference to uniform pruning ranges {min(diffs):+.4f} to {max(diffs):+.4f} nats: "
                   + "; ".join(f"seed {s} tau {p['knob']['tau']:g} at {p['avg_steps']:.3f} steps "
                               f"{p['learned_ppl']:.1f} vs {p['uniform_ppl']:.1f}" for s, p in iso_a) + ".")
    lc = paired(summary, "latent_cot", "ponderlm2")
    if lc:
        flops = {m: _mean([r["train_flops"] for r in _records(summary, m)]) / 1e12 for m in ("latent_cot", "ponderlm2")}
        out.append(f"4. **Adaptive latent CoT: fewer training FLOPs than PonderLM-2 at comparable quality.** Training "
                   f"FLOPs {flops['latent_cot']:.1f} vs {flops['ponderlm2']:.1f} x 10^12; latent CoT minus PonderLM-2: "
                   f"{_ci(lc)} nats, {_verdict_words(lc, 'ponderlm2')}.")
    best = [m for m in _methods(summary) if m not in ("vanilla", CONTROL)
            and (p := paired(summary, m, CONTROL)) and p["verdict"] == "better"]
    out.append("\n**Against the scaled-embedding control**, the methods whose whole interval is below 0: "
               + (", ".join(best) if best else "none") + ".")
    return "\n\n".join(out) + "\n"


def setup_section(summary: dict[str, Any]) -> str:
    recs = [r for r in summary["runs"].values() if (r.get("settings") or {}).get("steps")]
    st = recs[0]["settings"] if recs else {}
    tokens = _one([r["tokens_seen"] for r in summary["runs"].values()])
    params = _one([r["params"] for r in _records(summary, "vanilla")])
    evals = [r.get("eval_conditions") or {} for r in summary["runs"].values()]
    ev = evals[0] if evals else {}
    eval_text = ev.get("description", "not recorded") if all(e == ev for e in evals) else \
        "differs across runs: " + " / ".join(dict.fromkeys(e.get("description", "not recorded") for e in evals))
    rows = [
        ("data", "the bundled corpus (Brown, Shakespeare, KJV) with the shipped 4096-token BPE tokenizer and its fixed "
                 "validation split; prepared once and shared by every run"),
        ("backbone", f"Llama, untied embeddings, `init` {_one([r['settings']['init'] for r in recs])}; vanilla has "
                     f"{params} parameters, every arm's count is in the settings table"),
        ("budget", f"{st.get('steps')} steps x {st.get('batch_size')} sequences x {st.get('seq_len')} tokens = "
                   f"{tokens} tokens per run; AdamW at the lr in the settings table (chosen by the sweep below)"),
        ("seeds", ", ".join(map(str, summary["seeds"]))),
        ("evaluation", f"{eval_text}; the same windows for every model"),
        ("recipe", "every arm runs at its method's documented defaults ([METHODS.md](METHODS.md)) plus the study's "
                   "command-line settings, listed per arm below with their source; no packaged recipe"),
        ("code", summary.get("code") or "not recorded"),
    ]
    return "## Setup\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def render_results(summary: dict[str, Any], decisive_sweeps: dict[str, dict[str, Any]] | None = None) -> str:
    """RESULTS.md from the study's summary; `decisive_sweeps` (arm -> the decisive grid's LR sweep) answers the
    study's open question about its learning-rate range."""
    seeds = len(summary["seeds"])
    return f"""# Results: the papers' claims at small scale, on the faithful recipe

<!-- This file is generated by benchmarks/study_document.py from docs/results/summary.json; do not edit it by hand:
     python benchmarks/render_reports.py rewrites it, tests/test_reports.py fails when it drifts. -->

One study trains every method on the same data, backbone and token budget, then evaluates quality against
compute on the same validation windows. It is small, so it tests whether the implementations *behave* like
the papers, not the papers' numbers. Every number and setting below is rendered from
[results/summary.json](results/summary.json), which the study's `report` phase writes from the run directories;
the exact command lines are in [results/commands.txt](results/commands.txt).

```bash
python benchmarks/study.py all          # prepare, lr, train, controls, eval, analyze, decode, report -> docs/results/
```

At this budget (0.1M tokens per run) the study cannot settle whether latent computation pays; the decisive
experiments (10x the tokens, every control, a protocol fixed before the runs) are in [DECISIVE.md](DECISIVE.md).

{setup_section(summary)}
### Settings of each arm (read from the runs)

{settings_table(summary)}
Settings that differ from the documented defaults, per arm, and where each came from (the runs' own records;
the seed and the data directory are left out):

{differences_table(summary)}
## Table

Validation perplexity (mean ± half the range of the {seeds} seeds, then each seed), average executed additional
steps per token at the checkpoint's own threshold, forward FLOPs per token relative to vanilla (`ponderlm.flops`),
training FLOPs of the run (analytic) and training wall time (one thread on a shared machine: compare within the
column only).

{main_table(summary)}
### Paired differences (validation loss, nats, method minus baseline, per seed; 95 % t interval)

{paired_table(summary)}{gap_tables(summary)}{legacy_tables(summary, decisive_sweeps)}
## Plots

- Validation loss vs training tokens, every method and control, seeds as thin lines: [curves.png](results/curves.png).
- Quality vs pondering compute per adaptive method, learned depth beside uniform / geometric fixed pruning at the
  same measured steps: [pareto.png](results/pareto.png), and every point per seed
  ({", ".join(f"[s{s}](results/pareto-all-s{s}.png)" for s in summary["seeds"])}).
- Seed {summary["seeds"][0]} analyses: [PonderLM-3 difficulty](results/difficulty-ponderlm3.png),
  [AdaPonderLM difficulty](results/difficulty-adaponder.png),
  [latent CoT difficulty](results/difficulty-latent_cot.png), [alpha](results/alpha-ponderlm3.png),
  [gates](results/gates-adaponder.png), [Jacobi](results/jacobi-ponderlm3.png).

{claims_section(summary)}
## History

The 0.1 study (tied embeddings, HF init, K = 3, two seeds) is archived with its own data in
[results/v0.1/](results/v0.1/).
"""


def readme_row(summary: dict[str, Any]) -> str:
    """The README's study result: each arm against the scaled-embedding control, with the paired verdicts."""
    rows = {m: paired(summary, m, CONTROL) for m in _methods(summary) if m not in ("vanilla", CONTROL)}
    rows = {m: p for m, p in rows.items() if p}
    n = _one([p["n"] for p in rows.values()])
    tokens = _one([r["tokens_seen"] for r in summary["runs"].values()])
    by = {v: [m for m, p in rows.items() if p["verdict"] == v] for v in ("better", "not resolved", "worse")}
    return (f"| paper-claim study (every method, d=128, 4 layers, {tokens} tokens per run, {n} seeds) | against "
            f"vanilla with scaled embeddings ({_ppl(summary, CONTROL)} ppl), paired 95 % intervals: better "
            f"{', '.join(by['better']) or 'none'}; not resolved {', '.join(by['not resolved']) or 'none'}; worse "
            f"{', '.join(by['worse']) or 'none'}; best mean {min(rows, key=lambda m: rows[m]['mean'])} "
            f"{_ci(rows[min(rows, key=lambda m: rows[m]['mean'])])} nats | [RESULTS.md](docs/RESULTS.md) |\n")
