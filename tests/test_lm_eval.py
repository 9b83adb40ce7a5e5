"""`ponderlm lm-eval`: offline tasks scored by lm-evaluation-harness itself, and a clear error without it."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import single_thread

from ponderlm.cli import main


def lm_eval_missing() -> str | None:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as exc:
        return f"lm-eval with its hf backend is not importable ({exc}); pip install 'ponderlm[eval]'"
    return None


needs_lm_eval = pytest.mark.skipif(lm_eval_missing() is not None, reason=lm_eval_missing() or "")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # The offline tasks must never need the network, and the test must not write to the user's cache.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PONDERLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    with single_thread():
        yield


@needs_lm_eval
def test_offline_tasks_scored_by_the_harness(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["lm-eval", "--model", str(checkpoint), "--tasks", "ponder_nextsent,ponder_cloze", "--limit", "6",
                 "--batch-size", "4", "--bootstrap-iters", "0", "--tau", "0.2", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    for task in ("ponder_nextsent", "ponder_cloze"):
        acc = results["results"][task]["acc,none"]
        assert 0.0 <= acc <= 1.0
        assert results["n-samples"][task]["effective"] == 6
        assert task in printed
    assert results["results"]["ponder_cloze"]["perplexity,none"] > 1.0
    assert results["ponderlm"]["tau"] == 0.2 and results["ponderlm"]["method"] == "ponderlm3"


@needs_lm_eval
def test_rolling_perplexity_task(checkpoint):
    from ponderlm.eval.lm_eval_adapter import run_lm_eval
    from ponderlm.eval.perplexity import load_model

    model, tok = load_model(checkpoint, "cpu")
    results = run_lm_eval(model, tok, ["ponder_wikitext_style"], limit=1, batch_size=2, bootstrap_iters=0)
    metrics = results["results"]["ponder_wikitext_style"]
    assert metrics["bits_per_byte,none"] > 0 and metrics["word_perplexity,none"] > 1


@needs_lm_eval
def test_unknown_tasks_are_user_errors(checkpoint, capsys):
    code = main(["lm-eval", "--model", str(checkpoint), "--tasks", "ponder_nope"])
    assert code == 2 and "unknown offline task" in capsys.readouterr().err


def test_missing_lm_eval_is_one_clear_line(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    code = main(["lm-eval", "--model", str(checkpoint), "--tasks", "ponder_cloze"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'ponderlm[eval]'" in err[0]
