"""The decisive grid's bookkeeping (benchmarks/decisive.py, decisive_report.py): the protocol's learning-rate rule,
the FLOP-matched controls, and the claim verdicts, on synthetic run records (no training)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
decisive = importlib.import_module("decisive")
decisive_report = importlib.import_module("decisive_report")


def _record(folder: Path, run: str, arm: str, seed: int, loss: float, phase: str = "main", rate: float = 4e-3,
            heldout: float | None = None) -> None:
    path = folder / "runs" / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run": run, "arm": arm, "seed": seed, "phase": phase, "lr": rate, "steps": 10, "seq_len": 128,
              "tokens_seen": 1280, "parameters": 1, "wall_seconds": 1.0, "load_average": {"start": 0.0, "end": 0.0},
              "val": {"loss": loss, "ppl": 2.0, "avg_steps": 0.0, "tokens": 1},
              "heldout": None if heldout is None else {"loss": heldout, "ppl": 2.0, "avg_steps": 0.0, "tokens": 1},
              "curve": [{"step": 10, "tokens": 1280, "train_flops": 1.0, "val_loss": loss}]}
    path.write_text(json.dumps(record))


def test_the_rate_range_is_extended_past_a_winning_end_then_closed(tmp_path):
    grid = decisive.Grid(tmp_path / "work", workers=1, docs=tmp_path)
    losses = {1e-3: 3.0, 2e-3: 2.5, 4e-3: 2.2, 8e-3: 2.0, 1.6e-2: 1.9, 3.2e-2: 1.8}  # keeps improving upwards
    for rate in decisive.RATES:
        _record(tmp_path, f"lr{decisive.rate_name(rate)}-ponderlm2-s0", "ponderlm2", 0, losses[rate], "lr", rate)
    grid.close_sweep("ponderlm2")
    first = grid.sweep_result("ponderlm2")
    assert not first.get("final") and first["extensions"] == 1 and max(first["rates"]) == pytest.approx(1.6e-2)
    assert [j["rate"] for j in grid.sweep_jobs("ponderlm2")] == [pytest.approx(1.6e-2)]  # only the new rate runs
    assert [decisive.rate_name(r) for r in (1e-3, 8e-3, 1.6e-2, 5e-4)] == ["1e-3", "8e-3", "1.6e-2", "5e-4"]
    _record(tmp_path, "lr1.6e-2-ponderlm2-s0", "ponderlm2", 0, losses[1.6e-2], "lr", 1.6e-2)
    grid.close_sweep("ponderlm2")
    _record(tmp_path, f"lr{decisive.rate_name(3.2e-2)}-ponderlm2-s0", "ponderlm2", 0, losses[3.2e-2], "lr", 3.2e-2)
    grid.close_sweep("ponderlm2")
    final = grid.sweep_result("ponderlm2")
    # two extensions at most: the best is still the top end, and the sweep says so instead of running forever
    assert final["final"] and final["edge"] and final["best"] == pytest.approx(3.2e-2) and final["extensions"] == 2
    assert grid.best_rate("vanilla_deep") is None  # it takes vanilla_scaled's rate, which is not known yet


def test_an_interior_best_closes_the_sweep(tmp_path):
    grid = decisive.Grid(tmp_path / "work", workers=1, docs=tmp_path)
    for rate, loss in zip(decisive.RATES, (3.0, 2.1, 2.0, 2.4)):
        _record(tmp_path, f"lr{decisive.rate_name(rate)}-vanilla_scaled-s0", "vanilla_scaled", 0, loss, "lr", rate)
    grid.close_sweep("vanilla_scaled")
    assert grid.best_rate("vanilla_scaled") == pytest.approx(4e-3)
    assert grid.best_rate("vanilla_deep") == pytest.approx(4e-3)  # the FLOP-matched controls share it
    runs = [j["run"] for j in grid.main_jobs()]
    assert runs[:2] == ["vanilla_scaled-s0", "vanilla_deep-s0"]  # arms with a known rate, in the protocol's order


def test_flop_matched_controls_match_the_cost_model():
    from ponderlm import PonderConfig
    from ponderlm.flops import flops

    layers = decisive.deep_layers()
    shape = dict(backbone="llama", hidden_size=decisive.D, num_attention_heads=decisive.HEADS, vocab_size=4096,
                 max_position_embeddings=512)
    target = flops(PonderConfig(method="ponderlm2", max_steps=1, num_hidden_layers=decisive.LAYERS, **shape),
                   decisive.SEQ_LEN)["forward"]
    cost = {n: flops(PonderConfig(method="vanilla", num_hidden_layers=n, **shape), decisive.SEQ_LEN)["forward"]
            for n in (layers - 1, layers, layers + 1)}
    assert abs(cost[layers] - target) <= min(abs(cost[layers - 1] - target), abs(cost[layers + 1] - target))
    assert decisive.train_ratio("ponderlm2") > decisive.train_ratio("latent_cot") > 1.0


def test_claims_follow_the_protocols_rule(tmp_path):
    """A1 needs the whole interval below 0 on both splits; one seed gives no interval; missing runs are 'not yet
    run', never a verdict."""
    for seed, (ours, control) in enumerate(((5.00, 5.10), (5.01, 5.12), (4.99, 5.11))):
        _record(tmp_path, f"ponderlm2-s{seed}", "ponderlm2", seed, ours, heldout=ours + 0.5)
        _record(tmp_path, f"vanilla_scaled-s{seed}", "vanilla_scaled", seed, control, heldout=control + 0.5)
    runs, _ = decisive_report.load(tmp_path)
    p = decisive_report.paired(runs, "ponderlm2", "vanilla_scaled")
    assert p["verdict"] == "better" and p["seeds"] == [0, 1, 2] and p["high"] < 0
    text = decisive_report.claims(runs)
    assert "| ponderlm2 |" in text and text.split("| ponderlm2 |")[1].split("\n")[0].rstrip().endswith("| met |")
    assert "| ponderlm3 | not yet run | not yet run | not yet run |" in text
    (tmp_path / "runs" / "ponderlm2-s1.json").unlink()
    (tmp_path / "runs" / "ponderlm2-s2.json").unlink()
    one = decisive_report.paired(decisive_report.load(tmp_path)[0], "ponderlm2", "vanilla_scaled")
    assert one["verdict"] == "not resolved" and "1 seed (no interval)" in decisive_report._ci(one)


def test_exploratory_rows_pair_each_window_length_with_itself(tmp_path):
    """A sequence-length row pairs runs of that length only: the main (128-token) runs of the same arms, whose losses
    are not comparable with a 64-token window's, must not leak into it, and a row without records says so."""
    for seed in (0, 1):
        _record(tmp_path, f"ponderlm2-s{seed}", "ponderlm2", seed, 4.0)
        _record(tmp_path, f"vanilla_scaled-s{seed}", "vanilla_scaled", seed, 4.1)
        _record(tmp_path, f"ponderlm2-seq64-s{seed}", "ponderlm2", seed, 4.5 + 0.01 * seed)
        _record(tmp_path, f"vanilla_scaled-seq64-s{seed}", "vanilla_scaled", seed, 4.3)
    runs, _ = decisive_report.load(tmp_path)
    short = decisive_report.paired(runs, "ponderlm2-seq64", "vanilla_scaled-seq64")
    assert short["seeds"] == [0, 1] and short["mean"] == pytest.approx(0.205) and short["verdict"] == "worse"
    assert decisive_report.paired(runs, "ponderlm2", "vanilla_scaled")["mean"] == pytest.approx(-0.1)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in decisive_report.exploratory(runs).splitlines()
            if line.startswith("| PonderLM-2")}
    assert "+0.205" in rows["PonderLM-2 vs `vanilla_scaled`, 64-token windows"]
    assert "-0.100" in rows["PonderLM-2 vs `vanilla_scaled`, 128-token windows (the main runs)"]
    assert "not yet run" in rows["PonderLM-2 vs `vanilla_scaled`, 256-token windows"]


def test_part_b_settings_follow_the_protocol():
    """Part B's grids (benchmarks/reasoning.py): every task has the equal-FLOP and equal-parameter controls and the
    documented recipes; the chains task runs its validity check and positive control first, on 64-token examples;
    the two-stage PonderLM-3 comes after the PonderLM-2 run of the same seed it starts from."""
    reasoning = importlib.import_module("reasoning")
    for setting in ("nomarker-n12", "chains-closed", "hops-n10", "hops-n14"):
        names = [reasoning.run_name(*r) for r in reasoning.plan(setting)]
        assert len(names) == len(set(names)) and len(names) == 3 * len(reasoning.SETTINGS[setting]["core"])
        for seed in (0, 1, 2):
            assert names.index(f"ponderlm2-k1-s{seed}") < names.index(f"ponderlm3-k1-from-p2-s{seed}")
            assert {f"vanilla-k0-layers2-s{seed}", f"vanilla-k0-layers3-s{seed}", f"looped-k1-s{seed}",
                    f"latent_cot-k1-delay2000-s{seed}"} <= set(names)
    chains = [reasoning.run_name(*r) for r in reasoning.plan("chains-closed")]
    assert chains[:2] == ["vanilla-k0-s0", "vanilla-k0-layers4-s0"]
    assert "data.seq_len=64" in reasoning.SETTINGS["chains-closed"]["train"]
    assert "--no-hop-marker" in reasoning.SETTINGS["nomarker-n12"]["data"]
    assert reasoning.VARIANTS["from-p2"][0].format(runs="R", seed=2) == "model.init_from=R/ponderlm2-k1-s2/final"


def _reasoning_run(method: str, k: int, seed: int, accuracy_by_depth: dict[int, float], variant: str = "",
                   steps: float = 0.0) -> dict:
    per = [{"difficulty": d, "count": 100, "accuracy": a, "avg_steps": steps} for d, a in accuracy_by_depth.items()]
    return {"run": f"{method}-k{k}{'-' + variant if variant else ''}-s{seed}", "method": method, "K": k,
            "seed": seed, "variant": variant,
            "learned": {"per_difficulty": per, "accuracy": sum(accuracy_by_depth.values()) / len(per),
                        "avg_steps": steps, "spearman_steps_difficulty": None}}


def test_part_b_validity_gate_and_claims():
    """Task 2 is judged against the best context-only reader and its positive control before any claim; R1 needs
    a paired lower bound >= 30 points over 1-layer vanilla, R3 a Spearman >= 0.5 at tau 0.5 on 2 of 3 seeds."""
    at_chance = {1: 1.0, 2: 0.15, 3: 0.14, 4: 0.16}
    summary = {"floors": {"elimination": 0.151, "uniform": 0.143},
               "runs": [_reasoning_run("vanilla", 0, s, at_chance) for s in range(3)],
               "extra_runs": [_reasoning_run("vanilla", 0, s, {1: 1.0, 2: 0.95, 3: 0.2, 4: 0.15}, "layers4")
                              for s in range(3)]}
    _, verdict = decisive_report.validity(summary)
    assert verdict == "valid"
    summary["extra_runs"][1]["learned"]["per_difficulty"][1]["accuracy"] = 0.5  # one seed misses the 90 % bar
    assert decisive_report.validity(summary)[1] == "not testable"
    leaking = dict(summary, floors={"uniform": 0.05})  # 1-layer vanilla 10 points above this chance: a shortcut
    assert decisive_report.validity(leaking)[1] == "leaking"
    assert decisive_report.validity({"runs": []})[1] == "not yet run"

    weak = {1: 1.0, 2: 0.3, 3: 0.3}  # 1-layer vanilla; PonderLM-3 below is ~57 points above it, PonderLM v1 ~12
    hops = {"runs": [_reasoning_run("vanilla", 0, s, weak) for s in range(3)]
            + [_reasoning_run("ponderlm3", 1, s, {1: 1.0, 2: 0.9 - 0.01 * s, 3: 0.85}, steps=0.5) for s in range(3)]
            + [_reasoning_run("ponderlm", 1, s, {1: 1.0, 2: 0.45, 3: 0.3 + 0.1 * s}) for s in range(3)],
            "sweeps": {f"ponderlm3-k1-s{s}": [{"alpha": None, "tau": 0.5, "fixed": {"uniform": {"accuracy": 0.5}},
                                              "learned": {"spearman_steps_difficulty": rho, "avg_steps": 0.5,
                                                          "accuracy": 0.8}}]
                       for s, rho in enumerate((0.7, 0.6, 0.1))}}
    table = decisive_report.reasoning_claims(hops)
    p3 = table.split("| ponderlm3 K=1 |")[1].split("\n")[0]
    v1 = table.split("| ponderlm K=1 |")[1].split("\n")[0]
    assert "-> met" in p3.split("|")[0] and "not met" in v1.split("|")[0]
    assert "s0: 0.70, s1: 0.60, s2: 0.10 -> met" in p3  # 2 of 3 seeds at >= 0.5
    assert "+30.0" in p3.split("|")[3] and "-> met (0 excluded" in p3.split("|")[3]  # R4: 80 vs 50 points
    assert "n/a (fixed depth)" in v1
    assert "R1-R4 **not yet run**" in decisive_report.reasoning_claims({"runs": []})
    # before the protocol's third seed no interval criterion is judged, however large the gain
    two = dict(hops, runs=[r for r in hops["runs"] if r["seed"] < 2])
    p3 = decisive_report.reasoning_claims(two).split("| ponderlm3 K=1 |")[1].split("\n")[0].split("|")
    assert "pending (2 of 3 seeds)" in p3[0] and "-> met" in p3[2]  # R3: 2 seeds at >= 0.5 already meet it
    two["sweeps"] = {k: [dict(v[0], learned=dict(v[0]["learned"], spearman_steps_difficulty=0.1))]
                     for k, v in hops["sweeps"].items()}
    assert "-> not met" in decisive_report.reasoning_claims(two).split("| ponderlm3 K=1 |")[1].split("|")[2]


def test_train_seconds_counts_every_stretch(tmp_path):
    """A run resumed after a kill has step rows from both stretches (step 3 twice here): the training time is the
    sum of every step's own time, not the finishing stretch's wall time."""
    rows = [{"kind": "train", "step": s, "tokens_seen": 100 * s, "tokens_per_s": rate}
            for s, rate in ((1, 100.0), (2, 50.0), (3, 100.0), (3, 25.0), (4, 100.0))]
    rows.insert(2, {"kind": "eval", "step": 2, "val_loss": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert decisive.train_seconds(tmp_path) == pytest.approx(1 + 2 + 1 + 4 + 1)


def test_post_hoc_runs_are_listed_as_such_and_never_judged():
    """A task's investigation runs (reasoning.EXTRA) appear under 'Post hoc'; the protocol's own variant runs (the
    2-layer control) do not, and a post-hoc variant never replaces the protocol's control in R2."""
    reasoning = importlib.import_module("reasoning")
    variant = reasoning.EXTRA["nomarker-n12"][0][3]
    runs = [_reasoning_run("vanilla", 0, s, {1: 1.0, 2: 0.3, 3: 0.3}) for s in range(3)]
    runs += [_reasoning_run("ponderlm", 1, s, {1: 1.0, 2: 0.9, 3: 0.8}) for s in range(3)]
    extra = [_reasoning_run("vanilla", 0, s, {1: 1.0, 2: 0.3, 3: 0.3}, "layers2") for s in range(3)]
    extra.append(_reasoning_run("vanilla", 0, 0, {1: 1.0, 2: 1.0, 3: 1.0}, variant))
    summary = {"runs": runs, "extra_runs": extra}
    text = decisive_report.post_hoc(summary, "nomarker-n12")
    assert f"vanilla-k0-{variant}-s0 100.0 %" in text and "layers2-s0 " not in text
    assert decisive_report.post_hoc(summary, "hops-n10") == ""
    r2 = decisive_report.reasoning_claims(summary).split("| ponderlm K=1 |")[1].split("|")[1]
    assert "+55.0 [+55.0, +55.0], 3 seeds -> met" in r2  # against the protocol's 2-layer runs (30 %), not the post-hoc


def test_the_looped_control_is_compared_without_a_criterion():
    """The equal-parameter looped K = 1 runs give every arm a paired column and one summary line by verdict."""
    runs = [_reasoning_run("vanilla", 0, s, {1: 1.0, 2: 0.3, 3: 0.3}) for s in range(3)]
    runs += [_reasoning_run("looped", 1, s, {1: 1.0, 2: 0.9, 3: 0.8 + 0.01 * s}) for s in range(3)]
    runs += [_reasoning_run("ponderlm2", 1, s, {1: 1.0, 2: 0.9, 3: 0.8 + 0.02 * s}) for s in range(3)]  # level
    runs += [_reasoning_run("ponderlm", 1, s, {1: 1.0, 2: 0.5, 3: 0.4 + 0.01 * s}) for s in range(3)]  # 40 below
    text = decisive_report.reasoning_claims({"runs": runs})
    assert "worse: ponderlm K=1" in text and "not resolved: ponderlm2 K=1" in text
    assert "Against looped" not in decisive_report.reasoning_claims({"runs": runs[:3] + runs[6:]})


def test_the_readme_rows_name_the_arms_that_meet_each_claim(tmp_path):
    """The README's decisive rows come from the same verdicts as DECISIVE.md: an arm is named only where its claim
    is met, and an unmet claim reads 'none of N'."""
    for seed, (ours, control) in enumerate(((5.00, 5.10), (5.01, 5.12))):
        _record(tmp_path, f"ponderlm2-s{seed}", "ponderlm2", seed, ours, heldout=ours + 0.5)
        _record(tmp_path, f"vanilla_scaled-s{seed}", "vanilla_scaled", seed, control, heldout=control + 0.5)
    row = decisive_report.readme_rows(tmp_path, reasoning_docs=tmp_path / "none").splitlines()
    assert len(row) == 1 and "held-out text: ponderlm2 (3 not yet judged);" in row[0]
    assert "A3 better than the official unscaled vanilla: none of 4 (4 not yet judged)" in row[0]
    assert decisive_report.readme_rows(tmp_path / "empty") == ""


def test_the_report_opens_with_the_same_verdicts_as_the_readme(tmp_path):
    for seed, (ours, control) in enumerate(((5.00, 5.10), (5.01, 5.12))):
        _record(tmp_path, f"ponderlm2-s{seed}", "ponderlm2", seed, ours, heldout=ours + 0.5)
        _record(tmp_path, f"vanilla_scaled-s{seed}", "vanilla_scaled", seed, control, heldout=control + 0.5)
    report = decisive_report.render(tmp_path, reasoning_docs=tmp_path / "none")
    short = report.split("## In short")[1].split("## ")[0]
    assert "**LM grid (Part A)**" in short and "held-out text: ponderlm2 (3 not yet judged);" in short
    assert "Reasoning" not in short  # no reasoning task has results here
    empty = decisive_report.render(tmp_path / "empty", reasoning_docs=tmp_path / "none")
    assert "no main run recorded yet" in empty


def test_the_report_lists_every_dated_amendment_and_marks_post_hoc_seeds(tmp_path):
    protocol = tmp_path / "protocols" / "DECISIVE.md"
    protocol.parent.mkdir(parents=True)
    protocol.write_text("# Protocol\n\n**2026-01-01, not an amendment.** Body.\n\n## Amendments\n\n"
                        "**2026-02-03, before the runs.** Why.\n\nText **2026-02-04, inline** is not one.\n\n"
                        "**2026-02-05, after them (post hoc).** Why.\n")
    assert decisive_report.amendments(protocol) == ["2026-02-03, before the runs", "2026-02-05, after them (post hoc)"]
    assert decisive_report.amendments(tmp_path / "missing.md") == []
    folder = tmp_path / "results" / "decisive"
    for seed in (0, 1):
        _record(folder, f"looped_k3-s{seed}", "looped_k3", seed, 5.0 + seed / 100)
        _record(folder, f"vanilla_scaled-s{seed}", "vanilla_scaled", seed, 5.1)
    report = decisive_report.render(folder, reasoning_docs=tmp_path / "none")
    assert "Its dated amendments (read from its text): 2026-02-03, before the runs; 2026-02-05" in report
    row = next(line for line in report.splitlines() if line.startswith("| the official K = 3 looped LM"))
    assert "seed 1 post hoc (amendment 2026-12-08)" in row and "2 seeds" in row
    pause = next(line for line in report.splitlines() if line.startswith("| the official K = 3 pause"))
    assert "post hoc" not in pause  # no seed-1 record: nothing to mark
