"""Plot labels that say something, the depth policy on `generate --html`, and help text on every option."""

from __future__ import annotations

import argparse
import html

import numpy as np
import pytest

from ponderlm.cli import build_parser, main
from ponderlm.commands.generate import depth_policy_text
from ponderlm.eval.pareto import curve_label
from ponderlm.eval.plots import bucket_labels, label_positions, plot_alpha, plot_difficulty


def test_difficulty_buckets_of_an_undertrained_model_get_distinct_labels(tmp_path):
    # Every bucket within 0.05 nats: one decimal would print "8.3-8.3" five times.
    edges = [8.301, 8.312, 8.318, 8.327, 8.339, 8.350]
    buckets = [{"bucket": b, "lo": edges[b], "hi": edges[b + 1], "mean_difficulty": (edges[b] + edges[b + 1]) / 2,
                "gain_by_depth": {"0": 0.0, "1": 0.01 * b}, "learned_steps_mean": 0.5, "learned_steps_std": 0.1}
               for b in range(5)]
    labels = bucket_labels(buckets)
    assert len(set(labels.values())) == 5
    assert labels[0] == "Q1: NLL0 8.30-8.31" and labels[4] == "Q5: NLL0 8.34-8.35"
    result = {"depths": [0, 1], "buckets": buckets, "depth_source": {"0": "exact", "1": "exact"},
              "spearman_difficulty_steps": 0.1, "max_steps": 1}
    assert plot_difficulty(result, tmp_path / "d.png").stat().st_size > 0


@pytest.mark.parametrize("name,method,extra,label", [
    ("ponderlm3", "ponderlm3", "", "ponderlm3"),
    ("runs/ponderlm3-seed1", "ponderlm3", "", "runs/ponderlm3-seed1"),
    ("small", "ponderlm3", "", "small (ponderlm3)"),
    ("vanilla", "vanilla", "K=0", "vanilla (K=0)"),
    ("base", "pause", "K=2", "base (pause, K=2)"),
])
def test_pareto_legend_does_not_repeat_the_method(name, method, extra, label):
    assert curve_label(name, method, extra) == label


def test_alpha_labels_do_not_collide(tmp_path):
    rng = np.random.default_rng(0)
    # A crowd of alphas with almost the same effect, and a few spread out.
    xs = [0.50, 0.501, 0.502, 0.503, 0.8, 1.2, 1.6]
    ys = [0.0, 0.0005, 0.001, 0.0002, 0.05, 0.12, 0.3]
    chosen = label_positions(xs, ys)
    assert 0 in chosen and {4, 5, 6} <= set(chosen) and not {1, 2, 3} & set(chosen)
    scaled = np.stack([(np.array(v) - min(v)) / (max(v) - min(v)) for v in (xs, ys)], axis=1)
    for i in chosen:
        for j in chosen:
            if i < j:
                assert np.abs(scaled[i] - scaled[j]).max() >= 0.07
    rows = [{"alpha": a, "avg_steps": x, "delta_loss": y} for a, x, y in zip([-4, -2, -1, 0, 1, 2, 4], xs, ys)]
    result = {"subsets": {"easy": rows, "hard": [dict(r, delta_loss=r["delta_loss"] + rng.normal() * 0.01)
                                                 for r in rows]}}
    assert plot_alpha(result, tmp_path / "a.png").stat().st_size > 0


def test_depth_policy_text_names_what_decided_the_depths():
    from ponderlm import PonderConfig
    from ponderlm.methods.options import DecodeOptions

    cfg = PonderConfig(method="ponderlm3", max_steps=3, tau=0.1, alpha=0.0)
    text = depth_policy_text(cfg, DecodeOptions.resolve(cfg, alpha=2.0))
    assert text == "ponderlm3, K=3, depth policy: learned (tau=0.1, alpha=2)"
    text = depth_policy_text(cfg, DecodeOptions.resolve(cfg, depth_policy="uniform", depth_target=1.5))
    assert text == "ponderlm3, K=3, depth policy: uniform fixed pruning, target 1.5 additional steps per token"
    cfg = PonderConfig(method="ponderlm2", max_steps=2, tau=0.1)
    assert "depth policy: fixed" in depth_policy_text(cfg, DecodeOptions.resolve(cfg))


def test_generate_html_shows_the_depth_policy_used(checkpoint, tmp_path):
    page = tmp_path / "view.html"
    assert main(["generate", "--model", str(checkpoint), "--prompt", "Once upon a time", "--max-new-tokens", "4",
                 "--depth-policy", "geometric", "--depth-target", "0.5", "--html", str(page), "--device", "cpu"]) == 0
    text = html.unescape(page.read_text())
    assert "depth policy: geometric fixed pruning, target 0.5 additional steps per token" in text


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("path", [("bench", "decode"), ("bench", "train"), ("lm-eval",), ("analyze", "difficulty"),
                                  ("analyze", "alpha"), ("analyze", "gates"), ("analyze", "jacobi"), ("generate",)])
def test_every_option_has_help(path):
    parser = build_parser()
    for name in path:
        parser = _subcommands(parser)[name]
    if parser.get_default("late_arguments") is not None:  # the knob flags, from the methods' declarations
        parser.get_default("late_arguments")(parser)
    bare = [a.option_strings for a in parser._actions
            if a.option_strings and not a.help and not isinstance(a, argparse._HelpAction)]
    assert bare == []
