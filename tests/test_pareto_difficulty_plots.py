"""Pareto and difficulty figures that say what they show (issue 28 item 8): each learned point labelled with
its alpha / tau, the table on stdout, uniform and geometric pruning run once where they coincide (K = 1),
and binomial (Wilson) or standard-error intervals with a title naming model, data and n."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import VOCAB, tiny_model

from ponderlm.cli import main
from ponderlm.eval import plots
from ponderlm.eval.analysis import difficulty_analysis, mean_interval, wilson_interval
from ponderlm.eval.pareto import identical_policies, sweep_model
from ponderlm.eval.perplexity import collect_token_stats

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib figures the plot functions draw (captured instead of reading back a PNG)."""
    drawn: list = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    return drawn


def batches(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (4, 24), generator=g) for _ in range(n)]


# ------------------------------------------------------------------ uniform = geometric at K = 1
def test_uniform_and_geometric_coincide_only_at_k1():
    assert identical_policies(("uniform", "geometric"), [0.1, 0.5, 0.9], 1) == [("uniform", ("geometric",))]
    assert identical_policies(("uniform", "geometric"), [0.5, 1.0], 2) == [("uniform", ()), ("geometric", ())]
    assert identical_policies(("geometric",), [0.5], 1) == [("geometric", ())]


def test_k1_policies_draw_the_same_depth_for_every_token():
    # The reason they are run once: not just the same average, the same depth token by token.
    model = tiny_model("ponderlm3", max_steps=1)
    steps = {policy: collect_token_stats(model, batches(), depth_policy=policy, depth_target=0.4,
                                         progress=False).steps for policy in ("uniform", "geometric")}
    assert 0 < steps["uniform"].mean() < 1 and np.array_equal(steps["uniform"], steps["geometric"])


def test_k1_sweep_runs_the_coinciding_policies_once(monkeypatch, capsys):
    import ponderlm.eval.pareto as pareto

    calls = []
    real = pareto.collect_token_stats
    monkeypatch.setattr(pareto, "collect_token_stats", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    model = tiny_model("ponderlm3", max_steps=1)
    points = sweep_model(model, "p3", batches(1), sweeps={"alpha": [0.0]}, fixed=("uniform", "geometric"),
                         targets=[0.25, 0.75], progress=False)
    assert len(calls) == 1 + 2  # one learned point, one control per target (not two)
    controls = [p for p in points if p.policy != "learned"]
    assert [p.same_as for p in controls] == [("geometric",)] * 2
    assert {p.curve for p in controls} == {"p3 uniform = geometric (same depths at K=1)"}
    assert "draw the same depth for every token" in capsys.readouterr().err


# ------------------------------------------------------------------ pareto labels and table
def _point(curve: str, policy: str, alpha, tau, steps: float, ppl: float) -> dict:
    return {"curve": curve, "policy": policy, "alpha": alpha, "tau": tau, "avg_steps": steps, "ppl": ppl}


def test_every_learned_point_is_labelled_with_its_knob(tmp_path, figures):
    points = [_point("p3", "learned", a, 0.1, s, 30 - s) for a, s in ((-2.0, 0.2), (0.0, 0.9), (2.0, 1.6))]
    points += [_point("ada", "learned", None, t, s, 31 - s) for t, s in ((0.2, 1.2), (0.8, 0.4))]
    points += [_point("p3 uniform", "uniform", None, None, s, 32 - s) for s in (0.2, 0.9)]
    points += [_point("p3x", "learned", 1.0, t, s, 33 - s) for t, s in ((0.1, 0.5), (0.3, 0.7))]
    plots.plot_pareto(points, tmp_path / "p.png")
    (ax,) = figures[0].axes
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(["α=-2", "α=0", "α=2", "τ=0.2", "τ=0.8", "α=1 τ=0.1", "α=1 τ=0.3"])


def test_pareto_prints_its_table_to_stdout(checkpoint, tmp_path, capsys):
    code = main(["pareto", "--model", str(checkpoint), "--alpha=-4,4", "--fixed", "uniform", "--out",
                 str(tmp_path), "--seq-len", "32", "--batch-size", "4", "--max-batches", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["curve", "policy", "alpha", "tau"]
    rows = [line for line in lines[1:] if " learned " in line]
    assert len(rows) == 2 and rows[0].split()[2] == "-4" and rows[1].split()[2] == "4"
    assert " learned " not in err  # only progress bars and notes on stderr
    result = json.loads((tmp_path / "pareto.json").read_text())
    assert len(lines) == 1 + len(result["points"]) + 1  # header, one line per point, "wrote ..."


# ------------------------------------------------------------------ difficulty intervals and title
def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    lo, hi = mean_interval(np.array([0.0, 1.0, 1.0, 1.0]), binary=True)
    assert 0.0 < lo < 0.75 < hi < 1.0  # a +-std bar would reach above 1
    lo, hi = mean_interval(np.array([1.0, 2.0, 3.0]), binary=False)
    assert (lo, hi) == pytest.approx((2 - 1.959964 / np.sqrt(3), 2 + 1.959964 / np.sqrt(3)))


def test_difficulty_at_k1_uses_wilson_intervals_and_a_full_title(tmp_path, figures):
    model = tiny_model("ponderlm3", max_steps=1, tau=0.5, router_init="uniform")  # about half take the step
    result = difficulty_analysis(model, batches(), num_buckets=3, progress=False)
    assert result["learned_steps_interval"] == "wilson"
    assert all(0.2 < b["learned_steps_mean"] < 0.8 for b in result["buckets"])
    for b in result["buckets"]:
        lo, hi = b["learned_steps_ci95"]
        assert 0.0 <= lo <= b["learned_steps_mean"] <= hi <= 1.0
        assert set(b["gain_ci95_by_depth"]) == {"0", "1"} and b["gain_ci95_by_depth"]["0"] == [0.0, 0.0]
        lo, hi = b["gain_ci95_by_depth"]["1"]
        assert lo < b["gain_by_depth"]["1"] < hi
    result = {"model": "tiny-p3", "data": "default:test", **result}
    plots.plot_difficulty(result, tmp_path / "d.png")
    fig = figures[0]
    ax_a, ax_b = fig.axes
    assert "95% Wilson CI" in ax_b.get_ylabel() and "1.96 SE" in ax_a.get_ylabel()
    title = fig._suptitle.get_text()
    assert "tiny-p3" in title and "default:test" in title and f"n = {result['tokens']:,} tokens" in title
    # the drawn bars are the intervals, so none leaves [0, 1]
    caps = [seg for coll in ax_b.collections for seg in coll.get_segments()]
    assert caps and all(0.0 <= y <= 1.0 for seg in caps for _, y in seg)


def test_difficulty_with_counts_uses_standard_errors(tmp_path, figures):
    # K = 2: steps are counts 0..2 (here all 1), not a proportion, even when every value happens to be 0 or 1.
    model = tiny_model("ponderlm3", max_steps=2, tau=0.4, router_init="uniform")
    result = difficulty_analysis(model, batches(), num_buckets=2, progress=False)
    assert result["learned_steps_interval"] == "sem"
    plots.plot_difficulty(result, tmp_path / "d.png")
    assert figures[0].axes[1].get_ylabel() == "executed additional steps (learned)\nmean ± 1.96 SE"
