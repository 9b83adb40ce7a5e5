"""ponderlm.eval library functions: token statistics, agreement with decoding, sweeps, analyses, rendering, tasks.

The `checkpoint` fixture (tests/conftest.py) is a tiny ponderlm3 model trained for a few steps on bundled text.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, page_text, split_tau

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.errors import PonderError

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def loaded(checkpoint):
    from ponderlm.eval.perplexity import eval_batches, load_model

    model, tok = load_model(checkpoint, "cpu")
    batches = eval_batches("default", tok, seq_len=24, batch_size=3, max_batches=2)
    model.config.tau = split_tau(model, batches[0])  # the checkpoint's own tau in these tests
    return model, tok, batches


def test_load_model_accepts_run_dir(checkpoint, tmp_path):
    from ponderlm.eval.perplexity import resolve_model_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(checkpoint, target_is_directory=True)
    assert resolve_model_dir(run) == run / "final"
    with pytest.raises(PonderError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")


def test_token_stats_match_manual_cross_entropy(loaded):
    from ponderlm.eval.perplexity import collect_token_stats

    model, _, batches = loaded
    stats = collect_token_stats(model, batches, alpha=0.5, progress=False)
    n = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    assert stats.nll.shape == stats.steps.shape == stats.token_ids.shape == (n,)
    with torch.no_grad():
        after = model(input_ids=batches[0])  # the config's alpha (0.0): the settings held for that call only
        model.config.alpha = 0.5
        out = model(input_ids=batches[0])
        model.config.alpha = 0.0
    # alpha=0.5 changes this model's outputs (the stats below match them), and it did not outlive the call
    assert not torch.equal(after.logits, out.logits)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), batches[0][:, 1:],
                                            reduction="none").reshape(-1)
    np.testing.assert_allclose(stats.nll[: ref.numel()], ref.double().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.steps[: ref.numel()], out.executed_steps[:, :-1].reshape(-1).double().numpy())
    np.testing.assert_array_equal(stats.token_ids[: ref.numel()], batches[0][:, :-1].reshape(-1).numpy())
    assert 0.0 <= stats.avg_steps <= model.config.max_steps


def test_parallel_perplexity_agrees_with_sequential_decoding(loaded):
    """eval ppl uses the parallel (Jacobi, thresholded) forward; it must score what decoding would."""
    from ponderlm.eval.perplexity import collect_token_stats
    from ponderlm.inference import sequential_logits

    model, _, batches = loaded
    x = batches[0][:2, :16]
    stats = collect_token_stats(model, [x], jacobi_iters_eval=40, progress=False)
    logits, steps = sequential_logits(model, x)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), x[:, 1:], reduction="none")
    assert stats.steps.min() < stats.steps.max()  # split_tau gives a spread of depths
    np.testing.assert_array_equal(stats.steps, steps[:, :-1].reshape(-1).double().numpy())
    np.testing.assert_allclose(stats.nll, nll.reshape(-1).double().numpy(), atol=1e-3)


def test_perplexity_result_and_flops(loaded):
    from ponderlm.eval.perplexity import perplexity

    model, _, batches = loaded
    full = perplexity(model, batches, tau=0.0, progress=False)
    pruned = perplexity(model, batches, progress=False)
    assert math.isclose(full.ppl, math.exp(full.loss), rel_tol=1e-9)
    assert full.avg_steps == pytest.approx(2.0)
    assert pruned.avg_steps < full.avg_steps
    assert full.tokens == sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    assert full.flops_ratio > pruned.flops_ratio > 1.0


def test_fixed_pruning_sweep_is_monotone_and_iso_flops(loaded):
    from ponderlm.eval.pareto import iso_flops_targets, sweep_model

    model, _, batches = loaded
    tau = [model.config.tau]
    points = sweep_model(model, "tiny", batches, sweeps={"alpha": [0.0], "tau": tau}, fixed=("uniform", "geometric"),
                         targets=[0.0, 0.5, 1.0, 1.5, 2.0], progress=False)
    assert [p.policy for p in points].count("learned") == 1
    for policy in ("uniform", "geometric"):
        steps = [p.avg_steps for p in points if p.policy == policy]
        assert len(steps) == 5 and all(b >= a for a, b in zip(steps, steps[1:])), steps
        assert steps[0] == 0.0 and steps[-1] == 2.0
    # default targets: the learned points' measured averages, clipped to [0, K]
    assert iso_flops_targets([2.3, 0.5, 0.5, -1.0], 2) == [0.0, 0.5, 2.0]
    default = sweep_model(model, "tiny", batches, sweeps={"alpha": [0.0], "tau": tau}, fixed=("uniform",),
                          progress=False)
    learned, control = default
    assert control.depth_target == pytest.approx(learned.avg_steps, abs=1e-4)
    assert control.avg_steps == pytest.approx(learned.avg_steps, abs=0.35)  # random draws on few tokens


def test_forced_depth_gives_exact_depths(loaded):
    from ponderlm.eval.analysis import forced_depth_options
    from ponderlm.eval.perplexity import collect_token_stats

    model, _, batches = loaded
    for k in (0, model.config.max_steps):
        stats = collect_token_stats(model, batches, forced_depth_options(model.config, k), progress=False)
        assert np.all(stats.steps == k)


def test_analyses_on_tiny_checkpoint(loaded):
    from ponderlm.eval.analysis import difficulty_analysis, gates_analysis, jacobi_analysis, knob_analysis

    model, tok, batches = loaded
    diff = difficulty_analysis(model, batches, num_buckets=3, progress=False)
    assert diff["depths"] == [0, 1, 2] and len(diff["buckets"]) == 3
    assert all(b["gain_by_depth"]["0"] == 0.0 for b in diff["buckets"])
    assert sum(b["tokens"] for b in diff["buckets"]) == diff["tokens"]
    alpha = knob_analysis(model, batches, "alpha", [-8.0, 8.0], progress=False)
    easy = {r["alpha"]: r for r in alpha["subsets"]["easy"]}
    assert easy[0.0]["delta_loss"] == 0.0
    assert easy[-8.0]["avg_steps"] <= easy[0.0]["avg_steps"] <= easy[8.0]["avg_steps"]
    gates, raw = gates_analysis(model, tok, batches, top=5, min_count=2, progress=False)
    assert sum(v["count"] for v in gates["nll_by_steps"].values()) == gates["tokens"] == sum(map(len, raw.values()))
    means = [t["mean_steps"] for t in gates["most_pondered"]]
    assert means == sorted(means, reverse=True) and gates["most_pondered"][0]["count"] >= 2
    jac = jacobi_analysis(model, batches[0][:1, :12], max_sweeps=6)
    assert len(jac["rmse"]) == 7 and jac["rmse"][-1] < 1e-4 < jac["rmse"][0]


def test_analyses_refuse_unsupported_methods(tmp_path):
    from ponderlm.eval.analysis import gates_analysis, jacobi_analysis, knob_analysis, zero_step_stats

    cfg = PonderConfig(method="ponderlm2", vocab_size=300, max_steps=1, **TINY)
    model = PonderForCausalLM(cfg).eval()
    x = [torch.randint(0, 300, (1, 8))]
    with pytest.raises(PonderError, match="cannot be forced to 0 steps"):
        zero_step_stats(model, x, progress=False)
    with pytest.raises(PonderError, match="router bias"):
        knob_analysis(model, x, "alpha", [1.0], progress=False)
    with pytest.raises(PonderError, match="halting method"):
        gates_analysis(model, None, x, progress=False)
    vanilla = PonderForCausalLM(PonderConfig(method="vanilla", vocab_size=300, **TINY)).eval()
    with pytest.raises(PonderError, match="Jacobi"):
        jacobi_analysis(vanilla, x[0])


def test_spearman_and_buckets():
    from ponderlm.eval.analysis import difficulty_buckets, spearman

    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones(4)) == 0.0
    edges, index = difficulty_buckets(np.arange(10.0), 2)
    assert list(index) == [0] * 5 + [1] * 5 and edges[0] == 0.0 and edges[-1] == 9.0


def test_eval_batches_from_prepared_directory(tmp_path):
    from ponderlm.data.prepare import prepare_data
    from ponderlm.data.tokenizer import load_tokenizer
    from ponderlm.eval.perplexity import eval_batches

    tok = load_tokenizer("default")
    src = tmp_path / "text.txt"
    src.write_text("\n\n".join(f"Paragraph {i} says something about the number {i}." for i in range(40)))
    prepare_data([str(src)], tok, tmp_path / "data", val_fraction=0.5, num_proc=1, progress=False)
    from_dir = eval_batches(tmp_path / "data", tok, split="val", seq_len=8, batch_size=4)
    from_text = eval_batches(str(src), tok, seq_len=8, batch_size=4)
    assert from_dir[0].shape == (4, 8) and from_text[0].shape == (4, 8)
    with pytest.raises(PonderError, match="unknown split"):
        eval_batches(tmp_path / "data", tok, split="test", seq_len=8)
    with pytest.raises(PonderError, match="fewer than seq_len"):
        eval_batches(str(src), tok, seq_len=10**6)


def test_depth_view_rendering():
    from ponderlm.data.tokenizer import load_tokenizer
    from ponderlm.inference.render import depth_view, legend_ansi, render_ansi, render_html

    tok = load_tokenizer("default")
    text = "Naïve <b>café</b> & 日本"  # multi-byte characters split across byte-level tokens, HTML specials
    ids = tok(text, add_special_tokens=False)["input_ids"]
    view = depth_view(tok, ids, [k % 3 for k in range(len(ids) - 1)], prompt_len=2)
    assert "".join(t.text for t in view) == text
    assert view[-1].steps is None and view[1].generated is False and view[2].generated is True
    coloured = render_ansi(view, 2)
    assert "\x1b[38;5;" in coloured and "\x1b[0m" in coloured and "2" in legend_ansi(2)
    page = render_html(view, 2)
    assert page.startswith("<!DOCTYPE html>") and "<b>" not in page and page_text(page) == text
    assert 'title="2 additional step(s)"' in page


def test_offline_task_builder_is_deterministic(tmp_path):
    import json

    import yaml

    from ponderlm.eval.tasks import TASK_NAMES, build_tasks

    a, b = build_tasks(tmp_path / "a"), build_tasks(tmp_path / "b")
    assert build_tasks(tmp_path / "a") == a  # cached
    for name in TASK_NAMES:
        assert (a / f"{name}.jsonl").read_bytes() == (b / f"{name}.jsonl").read_bytes()
        cfg = yaml.safe_load((a / f"{name}.yaml").read_text().replace("!function", ""))
        assert cfg["task"] == name and cfg["dataset_path"] == "json"
        assert Path(cfg["dataset_kwargs"]["data_files"]["test"]) == a / f"{name}.jsonl"
    items = [json.loads(line) for line in (a / "ponder_nextsent.jsonl").read_text().splitlines()]
    assert len(items) >= 50 and all(len(i["choices"]) == 4 and 0 <= i["label"] < 4 for i in items)
    assert len({i["label"] for i in items}) == 4  # the gold answer is not always in one place
    cloze = [json.loads(line)["text"] for line in (a / "ponder_cloze.jsonl").read_text().splitlines()]
    assert len(cloze) >= 50 and all(c.split(" ")[-1].isalpha() for c in cloze)
