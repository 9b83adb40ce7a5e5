"""End to end: `ponderlm eval ppl | pareto | analyze ... | generate` on a tiny trained checkpoint (in process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY, page_text, split_tau, tiny_checkpoint

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.cli import main
from ponderlm.config import ADAPTIVE_METHODS
from ponderlm.methods import METHOD_REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--seq-len", "32", "--batch-size", "4", "--max-batches", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tau(checkpoint) -> str:
    """A threshold that splits the tiny checkpoint's tokens between depths (see test_eval.split_tau)."""
    from ponderlm.eval.perplexity import eval_batches, load_model

    model, tok = load_model(checkpoint, "cpu")
    return f"{split_tau(model, eval_batches('default', tok, seq_len=32, batch_size=4, max_batches=1)[0]):.6f}"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_commands_are_registered(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("eval", "pareto", "analyze", "lm-eval", "generate"):
        assert name in out
    for argv in (["eval", "ppl", "--help"], ["analyze", "gates", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0


def test_eval_ppl_json(checkpoint, tau, capsys):
    code, out, _ = run(capsys, "eval", "ppl", "--model", checkpoint, "--tau", tau, "--json", *FAST)
    assert code == 0
    result = json.loads(out)
    assert result["tokens"] == 2 * 4 * 31
    assert math.isclose(result["ppl"], math.exp(result["loss"]), rel_tol=1e-9) and result["ppl"] > 1
    assert 0.0 < result["avg_steps"] < 2.0  # the split threshold prunes some tokens, not all
    assert result["settings"]["tau"] == pytest.approx(float(tau))
    assert result["flops_ratio"] is None or 1.0 < result["flops_ratio"]
    code, out, _ = run(capsys, "eval", "ppl", "--model", checkpoint, "--tau", "0", "--json", *FAST)
    assert json.loads(out)["avg_steps"] == 2.0
    code, out, _ = run(capsys, "eval", "ppl", "--model", checkpoint, "--depth-policy", "geometric",
                       "--depth-target", "0", "--json", *FAST)
    assert code == 0 and json.loads(out)["avg_steps"] == 0.0
    code, out, _ = run(capsys, "eval", "ppl", "--model", checkpoint, *FAST)
    assert code == 0 and "perplexity" in out and "avg executed steps" in out


@pytest.mark.parametrize("method", sorted(METHOD_REGISTRY))
def test_eval_ppl_every_method(method, tmp_path, capsys):
    """Every registered method evaluates through its forward outputs; adaptive ones also under fixed pruning."""
    from ponderlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    cfg = PonderConfig(method=method, vocab_size=len(tok), max_steps=0 if method == "vanilla" else 2, **TINY)
    torch.manual_seed(0)
    PonderForCausalLM(cfg).save_pretrained(tmp_path / method)
    tok.save_pretrained(tmp_path / method)
    small = ["--seq-len", "16", "--batch-size", "2", "--max-batches", "1", "--no-progress", "--json"]
    code, out, err = run(capsys, "eval", "ppl", "--model", tmp_path / method, *small)
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == method and math.isfinite(result["ppl"]) and result["tokens"] == 30
    if method == "vanilla":
        assert result["avg_steps"] == 0.0
    elif method in ADAPTIVE_METHODS:
        assert 0.0 <= result["avg_steps"] <= 2.0
    else:
        assert result["avg_steps"] == 2.0
    policy = ["--depth-policy", "uniform", "--depth-target", "2"]
    code, out, err = run(capsys, "eval", "ppl", "--model", tmp_path / method, *small, *policy)
    if method in ADAPTIVE_METHODS:
        assert code == 0 and json.loads(out)["avg_steps"] == 2.0
    else:  # a clear one-line refusal
        assert code == 2 and "needs an adaptive method" in err and len(err.strip().splitlines()) == 1


def test_pareto_cli(checkpoint, tau, tmp_path, capsys):
    vanilla = tiny_checkpoint(tmp_path, method="vanilla", train_steps=0)
    out_dir = tmp_path / "pareto"
    code, out, err = run(capsys, "pareto", "--model", checkpoint, "--model", vanilla, "--alpha=-8,0,8", "--tau", tau,
                         "--targets", "0,0.5,1,1.5,2", "--out", out_dir, *FAST)
    assert code == 0, err
    result = json.loads((out_dir / "pareto.json").read_text())
    assert is_png(out_dir / "pareto.png")
    points = result["points"]
    learned = [p for p in points if p["policy"] == "learned"]
    assert [p["alpha"] for p in learned] == [-8.0, 0.0, 8.0]
    assert learned[0]["avg_steps"] <= learned[1]["avg_steps"] <= learned[2]["avg_steps"]
    for policy in ("uniform", "geometric"):
        steps = [p["avg_steps"] for p in points if p["policy"] == policy]
        assert len(steps) == 5 and all(b >= a for a, b in zip(steps, steps[1:])), steps
    (van,) = [p for p in points if p["method"] == "vanilla"]
    assert van["policy"] == "fixed" and van["avg_steps"] == 0.0
    assert len(result["curves"]) == 4  # learned, uniform, geometric, vanilla


@pytest.mark.parametrize("analysis", ["difficulty", "alpha", "gates", "jacobi"])
def test_analyze_cli(analysis, checkpoint, tau, tmp_path, capsys):
    extra = {"difficulty": ["--tau", tau, "--buckets", "3"], "alpha": ["--tau", tau, "--alpha=-4,4"],
             "gates": ["--tau", tau, "--min-count", "2"], "jacobi": ["--sweeps", "4", "--num-seqs", "1"]}[analysis]
    fast = FAST if analysis != "jacobi" else ["--seq-len", "12", "--no-progress"]
    code, out, err = run(capsys, "analyze", analysis, "--model", checkpoint, "--out", tmp_path, *fast, *extra)
    assert code == 0, err
    result = json.loads((tmp_path / f"{analysis}.json").read_text())
    assert result["analysis"] == analysis and result["method"] == "ponderlm3"
    assert is_png(tmp_path / f"{analysis}.png")
    if analysis == "gates":
        assert len(result["nll_by_steps"]) >= 2 and result["most_pondered"]
    if analysis == "jacobi":
        assert len(result["rmse"]) == 5 and result["rmse"][-1] < result["rmse"][0]


def test_analyze_refuses_unsupported_method(tmp_path, capsys):
    vanilla = tiny_checkpoint(tmp_path, method="vanilla", train_steps=0)
    code, _, err = run(capsys, "analyze", "gates", "--model", vanilla, "--out", tmp_path, *FAST)
    assert code == 2 and "halting method" in err


def test_generate_show_steps_and_html(checkpoint, tau, tmp_path, capsys):
    page = tmp_path / "view.html"
    code, out, err = run(capsys, "generate", "--model", checkpoint, "--prompt", "And the LORD said",
                         "--max-new-tokens", "8", "--tau", tau, "--html", page)
    assert code == 0, err
    assert out.startswith("And the LORD said") and len(out) > len("And the LORD said\n")
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "additional step(s)" in html
    assert page_text(html).replace("<|endoftext|>", "") == out[:-1]  # every token of the text is on the page
    code, out, _ = run(capsys, "generate", "--model", checkpoint, "--prompt", "And the LORD said",
                       "--max-new-tokens", "8", "--tau", tau, "--show-steps", "--temperature", "0.8", "--seed", "3",
                       "--color", "always")  # captured stdout is no terminal: colours only when forced
    assert code == 0 and "\x1b[38;5;" in out and "additional steps per token" in out and "avg executed steps" in out


def test_bad_inputs_fail_with_one_line(tmp_path, checkpoint, capsys):
    code, _, err = run(capsys, "eval", "ppl", "--model", tmp_path / "missing")
    assert code == 2 and err.startswith("error:") and "does not exist" in err
    code, _, err = run(capsys, "eval", "ppl", "--model", checkpoint, "--seq-len", "4096")
    assert code == 2 and "max_position_embeddings" in err
    code, _, err = run(capsys, "pareto", "--model", checkpoint, "--fixed", "cubic", "--out", tmp_path)
    assert code == 2 and "unknown --fixed policy" in err
