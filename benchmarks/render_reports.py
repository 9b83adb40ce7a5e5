"""Render every generated report from the committed result JSON, or check that the committed text still matches.

    python benchmarks/render_reports.py           # rewrite docs/RESULTS.md and the generated blocks
    python benchmarks/render_reports.py --check   # exit 1 and name each drifted block (what tests/test_reports.py does)

Sources (committed): docs/results/summary.json (the study, benchmarks/study.py), docs/results/reasoning/summary.json
(the reasoning testbed, benchmarks/reasoning.py). Targets: docs/RESULTS.md (whole file), the generated blocks of
docs/REASONING.md and README.md (`<!-- generated: NAME -->`, see report_blocks.py). Prose outside the blocks may
quote a number only where a block of the same document holds it; `--check` lists the numbers that break this
in README.md's results section and REASONING.md's claims summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reasoning_report  # noqa: E402
import report_blocks  # noqa: E402
import study_document  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def targets(root: Path = ROOT) -> tuple[dict[Path, str], dict[Path, dict]]:
    """(whole files and their rendered text, documents and their block renderers), all read from `root`."""
    study = _json(root / "docs" / "results" / "summary.json")
    reasoning = _json(root / "docs" / "results" / "reasoning" / "summary.json")
    reasoning_table = (root / "docs" / "results" / "reasoning" / "table.md").read_text(encoding="utf-8")
    n8_table = (root / "docs" / "results" / "reasoning" / "n8-hops12" / "table.md").read_text(encoding="utf-8")
    whole = {root / "docs" / "RESULTS.md": study_document.render_results(study)}
    blocks = {
        root / "docs" / "REASONING.md": {
            "reasoning-settings": lambda: reasoning_report.settings_md(reasoning),
            "reasoning-tables": lambda: reasoning_table,  # table.md, which the report phase wrote
            "reasoning-claims": lambda: reasoning_report.claims_md(reasoning)
            + "\n" + reasoning_report.sweep_verdicts_md(reasoning_table),
            "reasoning-n8-tables": lambda: n8_table,
        },
        root / "README.md": {
            "readme-results": lambda: study_document.readme_row(study)
            + reasoning_report.readme_row(reasoning, reasoning_table),
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
            problems.append(f"{path.relative_to(root)}: line {line + 1} is not what benchmarks/study_document.py "
                            f"renders from docs/results/summary.json")
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
