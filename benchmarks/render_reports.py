"""Render every generated report from the committed result JSON, or check that the committed text still matches.

    python benchmarks/render_reports.py           # rewrite docs/RESULTS.md and the generated blocks
    python benchmarks/render_reports.py --check   # exit 1 and name each drifted block (what tests/test_reports.py does)

Sources (committed): docs/results/summary.json (the study, benchmarks/study.py), docs/results/reasoning/summary.json
(the reasoning testbed, benchmarks/reasoning.py), docs/results/decisive/ (benchmarks/decisive.py),
docs/results/perf/headline/ (benchmarks/perf_suite.py). Targets: docs/RESULTS.md and docs/DECISIVE.md (whole files),
the generated blocks of docs/REASONING.md, docs/METHODS.md, docs/TRAINING.md, docs/PERFORMANCE.md and README.md
(`<!-- generated: NAME -->`, see report_blocks.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decisive  # noqa: E402
import decisive_report  # noqa: E402
import perf_report  # noqa: E402
import reasoning_report  # noqa: E402
import report_blocks  # noqa: E402
import study_document  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# The section of docs/METHODS.md that defines each method (GitHub's anchors for its headings).
METHOD_SECTIONS = {
    "vanilla": "1-vanilla", "pause": "2-pause", "looped": "3-looped-weight-shared", "ponderlm": "4-ponderlm-v1",
    "ponderlm2": "5-ponderlm-2-fixed-k-latent-thoughts",
    "ponderlm3": "6-ponderlm-3-router--differentiable-mask--hard-pruning",
    "adaponder": "7-adaponder-gates--monotonic-halting--kv-reuse",
    "latent_cot": "8-adaptive-latent-cot-per-step-halting-2-d-causal-mask",
}


def methods_defaults() -> str:
    """Every option's documented default, read from the declarations: the shared pondering fields of
    `PonderConfig` and each registered method's own `Options`."""
    import dataclasses
    import inspect
    import math

    import ponderlm.methods  # noqa: F401  (registers every method)
    from ponderlm.config import PonderConfig
    from ponderlm.registry import REGISTRY

    sig = inspect.signature(PonderConfig.__init__)
    shared = ("init", "max_steps", "embed_scale", "latent_feedback", "tie_word_embeddings")
    lines = ["Shared by every method (`PonderConfig`):", "", "| option | default |", "|---|---|"]
    lines += [f"| `{name}` | `{sig.parameters[name].default!r}` |" for name in shared]
    lines += ["", "Per method (its `Options`; an option of another method is ignored; *knob*: an inference knob, which "
              "decoding and evaluation may override per call). `embed_scale=None` means the method's factor: "
              "sqrt(factor x d).", "",
              "| method | section | embed scale factor | option | default |", "|---|---|---|---|---|"]
    order = list(METHOD_SECTIONS)
    for name, cls in sorted(REGISTRY.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        factor = "none (scale 1)" if cls.embed_scale_factor is None else f"{cls.embed_scale_factor:g}"
        fields = [f for f in dataclasses.fields(cls.Options)]
        link = f"[§]({'#' + METHOD_SECTIONS[name]})" if name in METHOD_SECTIONS else "-"
        if not fields:
            lines.append(f"| `{name}` | {link} | {factor} | - | - |")
        for i, f in enumerate(fields):
            default = f.default
            text = f"{default:g}" if isinstance(default, float) and math.isfinite(default) else repr(default)
            lines.append(f"| {f'`{name}`' if i == 0 else ''} | {link if i == 0 else ''} | {factor if i == 0 else ''} "
                         f"| `{f.name}`{' *knob*' if f.metadata.get('ponderlm', {}).get('knob') else ''} | `{text}` |")
    return "\n".join(lines) + "\n"


def _quickstart(folder: Path) -> tuple[dict, dict, list] | None:
    if not (folder / "summary.json").is_file():
        return None
    return _json(folder / "summary.json"), _json(folder / "timing.json"), _json(folder / "tau.json")


def quickstart_row(folder: Path) -> str:
    """The README's quickstart row, from what `benchmarks/quickstart.py` recorded."""
    found = _quickstart(folder)
    if found is None:
        return ""
    q, timing, _ = found
    shares = q.get("depth_share") or []
    steps = f"; the router runs the latent step for {100 * shares[1]:.0f}% of those tokens" if len(shares) > 1 else ""
    return (f"| quickstart (`--recipe {q['settings']['recipe']}`: {q['settings']['method']}, K={q['max_steps_K']}, "
            f"{q['parameters'] / 1e6:.2f}M params, {q['steps']} steps, {q['tokens_seen']:,} tokens) | val ppl "
            f"{q['val_ppl']:.1f} vs unigram baseline {q['unigram_ppl']:.1f}, on {q['evaluation']['description']}"
            f"{steps}; {timing['wall_seconds'] / 60:.1f} min for the README's first command "
            f"{'on a fresh clone' if timing['fresh_clone'] else '(training only)'}, load "
            f"{timing['load_average_before']:.1f} at the start | [TRAINING.md](docs/TRAINING.md) |\n")


def quickstart_md(folder: Path) -> str:
    """docs/TRAINING.md's quickstart numbers: the run's summary, its timing and the threshold sweep."""
    found = _quickstart(folder)
    if found is None:
        return "Not measured yet: run `python benchmarks/quickstart.py`.\n"
    q, timing, taus = found
    diff = (q.get("settings") or {}).get("differs_from_defaults") or {}
    method_keys = [k for k in diff if k.startswith("model.")]
    shares = " / ".join(f"{k} step{'s' if k != 1 else ''} {100 * v:.0f}%" for k, v in enumerate(q["depth_share"]))
    lines = [
        f"Recipe `{q['settings']['recipe']}` ({q['settings']['method']}, K={q['max_steps_K']}, "
        f"{q['parameters']:,} parameters); its model settings that differ from the documented defaults: "
        + ", ".join(f"`{k[len('model.'):]}` {diff[k]['value']}" for k in method_keys) + ".",
        "",
        "| | measured |",
        "|---|---|",
        f"| command | `{timing['command']}`{' on a fresh clone' if timing['fresh_clone'] else ''} |",
        f"| wall time, end to end | {timing['wall_seconds'] / 60:.1f} min (training alone, from its metrics: "
        f"{(timing['train_seconds_from_metrics'] or 0) / 60:.1f} min), {timing['cpu_count']} CPU cores, load "
        f"average {timing['load_average_before']:.1f} before / {timing['load_average_after']:.1f} after, "
        f"{timing['date']} |",
        f"| training | {q['steps']} steps, {q['tokens_seen']:,} tokens |",
        f"| validation perplexity | {q['val_ppl']:.1f} vs the unigram baseline {q['unigram_ppl']:.1f}, on "
        f"{q['evaluation']['description']} |",
        f"| learned depth per token (same windows) | {shares} (avg {q['avg_executed_steps']:.2f} of "
        f"K={q['max_steps_K']}) |",
        f"| sample | `{q['sample']!r}` |",
        "",
        "The same final model scored by `ponderlm eval ppl` (its defaults: every window of the validation split) at "
        "three thresholds:",
        "",
        "| tau | avg executed steps | inference FLOPs vs vanilla | val ppl | scored tokens |",
        "|---|---|---|---|---|",
    ]
    for t in taus:
        lines.append(f"| {t['settings']['tau']:g} | {t['avg_steps']:.2f} | {t['flops_ratio']:.2f}x | {t['ppl']:.2f} | "
                     f"{t['tokens']:,} |")
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def decisive_planned(root: Path) -> list[str]:
    """The decisive grid's main runs that have no record yet, in the protocol's order (what did not fit so far)."""
    folder = root / "docs" / "results" / "decisive"
    return [job["run"] for job in decisive.Grid(root / "results" / "decisive", 1, docs=folder).main_jobs()]


def targets(root: Path = ROOT) -> tuple[dict[Path, str], dict[Path, dict]]:
    """(whole files and their rendered text, documents and their block renderers), all read from `root`."""
    study = _json(root / "docs" / "results" / "summary.json")
    reasoning = _json(root / "docs" / "results" / "reasoning" / "summary.json")
    reasoning_table = (root / "docs" / "results" / "reasoning" / "table.md").read_text(encoding="utf-8")
    n8_table = (root / "docs" / "results" / "reasoning" / "n8-hops12" / "table.md").read_text(encoding="utf-8")
    decisive_sweeps = decisive_report.load(root / "docs" / "results" / "decisive")[1]
    perf = root / "docs" / "results" / "perf" / "headline"
    whole = {root / "docs" / "RESULTS.md": study_document.render_results(study, decisive_sweeps),
             root / "docs" / "DECISIVE.md": decisive_report.render(root / "docs" / "results" / "decisive",
                                                                    planned=decisive_planned(root))}
    blocks = {
        root / "docs" / "REASONING.md": {
            "reasoning-settings": lambda: reasoning_report.settings_md(reasoning),
            "reasoning-tables": lambda: reasoning_table,  # table.md, which the report phase wrote
            "reasoning-claims": lambda: reasoning_report.claims_md(reasoning)
            + "\n" + reasoning_report.sweep_verdicts_md(reasoning_table),
            "reasoning-n8-tables": lambda: n8_table,
        },
        root / "docs" / "METHODS.md": {"methods-defaults": methods_defaults},
        root / "docs" / "PERFORMANCE.md": {"perf-headline": lambda: perf_report.headline_md(perf)},
        root / "docs" / "TRAINING.md": {
            "training-quickstart": lambda: quickstart_md(root / "docs" / "results" / "quickstart")},
        root / "README.md": {
            "readme-results": lambda: "| what | result | details |\n|---|---|---|\n"
            + quickstart_row(root / "docs" / "results" / "quickstart")
            + study_document.readme_row(study) + reasoning_report.readme_row(reasoning, reasoning_table)
            + decisive_report.readme_rows(root / "docs" / "results" / "decisive"),
            "readme-perf": lambda: perf_report.readme_md(perf),
        },
    }
    return whole, blocks


def check(root: Path = ROOT) -> list[str]:
    """Every difference between the committed reports and what the generators write from the committed data."""
    whole, blocks = targets(root)
    problems = []
    for path, text in whole.items():
        if path.read_text(encoding="utf-8") != text:
            old, new = path.read_text(encoding="utf-8").splitlines(), text.splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            problems.append(f"{path.relative_to(root)}: line {line + 1} is not what its generator renders from the "
                            "committed results (python benchmarks/render_reports.py)")
    for path, renderers in blocks.items():
        problems += report_blocks.check(path, renderers)
    # table.md is the report phase's output; its main table must be what summary.json aggregates to.
    reasoning = _json(root / "docs" / "results" / "reasoning" / "summary.json")
    head = reasoning_report.table_md(reasoning_report.aggregate(reasoning["runs"]))
    if not (root / "docs" / "results" / "reasoning" / "table.md").read_text(encoding="utf-8").startswith(head):
        problems.append("docs/results/reasoning/table.md: its main table is not what reasoning_report.py renders "
                        "from docs/results/reasoning/summary.json")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a report has drifted")
    args = p.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    whole, blocks = targets()
    for path, text in whole.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    for path, renderers in blocks.items():
        changed = report_blocks.update(path, renderers)
        print(f"{'updated' if changed else 'unchanged'} {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
