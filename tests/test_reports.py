"""Reports a reader can trust: every generated report equals what its generator writes from the committed data,
and the check notices a hand-edited number or setting (benchmarks/render_reports.py)."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
render_reports = importlib.import_module("render_reports")
report_blocks = importlib.import_module("report_blocks")

INPUTS = ["README.md", "docs/RESULTS.md", "docs/DECISIVE.md", "docs/results/decisive", "docs/REASONING.md",
          "docs/METHODS.md", "docs/TRAINING.md", "docs/results/summary.json", "docs/results/reasoning",
          "docs/results/quickstart/summary.json", "docs/results/quickstart/timing.json",
          "docs/results/quickstart/tau.json", "docs/PERFORMANCE.md", "docs/results/perf/headline",
          "docs/protocols/DECISIVE.md"]


@pytest.fixture()
def copy(tmp_path) -> Path:
    """The reports and their data, copied so that a test can edit them."""
    for name in INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tmp_path / name)
        elif (REPO / name).exists():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, tmp_path / name)
    return tmp_path


def test_the_committed_reports_are_what_the_generators_write():
    assert render_reports.check(REPO) == []


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_hand_edited_number_fails_the_check(copy):
    assert render_reports.check(copy) == []
    results = copy / "docs" / "RESULTS.md"
    row = next(line for line in results.read_text().splitlines()
               if line.startswith("| vanilla_scaled | ") and " ± " in line)  # the main table's row
    number = row.split(" | ")[1].split(" ± ")[0]  # the control's mean perplexity
    _edit(results, row, row.replace(number, f"{float(number) - 1:.1f}", 1))
    problems = render_reports.check(copy)
    assert len(problems) == 1 and "docs/RESULTS.md" in problems[0]


def test_a_stale_setting_fails_the_check(copy):
    """A setting in the text that is not what the runs recorded (here: the evaluation tau of a REASONING.md row)."""
    reasoning = copy / "docs" / "REASONING.md"
    body = report_blocks.blocks(reasoning.read_text())["reasoning-settings"]
    row = next(line for line in body.splitlines() if line.startswith("| ponderlm3 K=1 |"))
    _edit(reasoning, row, row.replace("0.003", "0.0001"))
    problems = render_reports.check(copy)
    assert len(problems) == 1 and "reasoning-settings" in problems[0]


def test_a_readme_headline_edited_by_hand_fails_the_check(copy):
    readme = copy / "README.md"
    body = report_blocks.blocks(readme.read_text())["readme-results"]
    _edit(readme, body, body.replace("3 seeds", "5 seeds", 1))
    assert any("readme-results" in p for p in render_reports.check(copy))


def test_data_changed_without_rerendering_fails_the_check(copy):
    path = copy / "docs" / "results" / "summary.json"
    data = json.loads(path.read_text())
    first = next(iter(data["runs"]))
    data["runs"][first]["val_ppl"] *= 1.01
    path.write_text(json.dumps(data))
    assert any("RESULTS.md" in p for p in render_reports.check(copy))


def test_blocks_render_and_check():
    text = "intro\n<!-- generated: a (x) -->\nold\n<!-- /generated: a -->\nprose\n"
    renderers = {"a": lambda: "new"}
    rendered = report_blocks.render(text, renderers)
    assert rendered == "intro\n<!-- generated: a (x) -->\nnew\n<!-- /generated: a -->\nprose\n"
    with pytest.raises(KeyError, match="no renderer"):
        report_blocks.render(text, {})


def test_the_settings_of_every_study_arm_come_from_the_runs():
    """RESULTS.md's settings table is read from each run's own records: every arm's method options in force and
    its recipe (none: the documented defaults), never typed."""
    summary = json.loads((REPO / "docs" / "results" / "summary.json").read_text())
    for name, run in summary["runs"].items():
        settings = run["settings"]
        assert settings["recorded"] and settings["recipe"] is None, name
        assert run["K"] == 0 or settings["differs_from_defaults"]["model.max_steps"]["source"] == "override", name
    p3 = summary["runs"]["ponderlm3-s0"]["settings"]["method_options"]
    assert (p3["router_init"], p3["lambda_steps"]) == ("full_depth", 0.0)  # the documented defaults, not a preset's
