"""Acceptance test of the method interface: a method defined outside the package (the toy plugin "echo",
tests/plugin_pkg/ponder_echo/method.py) runs through training, `eval ppl`, FLOPs accounting and `plan` once registered,
with no edit anywhere in ponderlm. Its model paths (parallel == sequential, prefill, batched generate, FLOPs against
the counter, save / load, serving) are checked with every other method in tests/test_conformance.py, and installed
as a real plugin (entry point) in tests/test_plugins.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import single_thread, tiny_model, tiny_run

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.flops import flop_counter
from ponderlm.inference.sequential import new_state
from ponderlm.registry import REGISTRY, register_method

sys.path.insert(0, str(Path(__file__).parent / "plugin_pkg"))  # the plugin's sources, not installed here
from ponder_echo.method import Echo  # noqa: E402


@pytest.fixture(autouse=True)
def echo():
    register_method("echo")(Echo)
    try:
        with single_thread():
            yield
    finally:
        REGISTRY.pop("echo")


def test_declared_facts_and_option():
    model = tiny_model("echo", max_steps=2, echo_scale=0.25)
    assert isinstance(model.method, Echo) and model.config.echo_scale == 0.25
    assert model.config.num_slots_per_token == 1 and model.config.resolved_embed_scale == 1.0
    with pytest.raises(ValueError, match="echo_scale must be a finite number"):
        tiny_model("echo", max_steps=1, echo_scale=math.nan)
    with pytest.raises(ValueError, match="needs max_steps >= 1"):
        tiny_model("echo")
    with pytest.raises(ValueError, match="needs an adaptive method"):
        tiny_model("echo", max_steps=1, depth_policy="uniform", depth_target=0.5)


def test_train_eval_ppl_and_plan(data_dir, tmp_path, capsys):
    from ponderlm.cli import main
    from ponderlm.train import train

    run = tmp_path / "run"
    train(tiny_run(run, data_dir, "name=echo", "model.method=echo", "model.max_steps=1", "model.echo_scale=0.75"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["avg_executed_steps"] == 1.0 and math.isfinite(summary["val_loss"])
    capsys.readouterr()

    assert main(["eval", "ppl", "--model", str(run), "--seq-len", "16", "--batch-size", "2", "--max-batches", "1",
                 "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "echo" and result["avg_steps"] == 1.0 and math.isfinite(result["ppl"])
    # Its cost per decoded token relative to vanilla, against the FLOP counter on real decoding of 16 tokens by the
    # trained model and by a vanilla model of its backbone.
    model = PonderForCausalLM.from_pretrained(run / "final").eval()
    vanilla = PonderForCausalLM(PonderConfig(**{**model.config.to_dict(), "method": "vanilla", "max_steps": 0}))
    counted = decode_flops(model, 16) / decode_flops(vanilla.eval(), 16)
    assert result["flops_ratio"] == pytest.approx(counted, rel=0.01)
    assert counted > 1.05  # the check can fail: a second pass per token is visible next to the 4096-word LM head

    assert main(["plan", str(run / "config.yaml"), "--gpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "echo (K=1)" in out and "passes kept      2x1 (" in out


def decode_flops(model: PonderForCausalLM, T: int) -> int:
    """FLOPs torch counts for decoding T tokens of one sequence on the cached path."""
    ids = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    state, valid = new_state(model, 1, T), torch.ones(1, dtype=torch.bool)
    with torch.no_grad(), flop_counter() as counter:
        for t in range(T):
            model.method.decode_token(model.backbone, state, ids[:, t], valid)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- a knob of its own
# The acceptance check of issue 30: `echo_mix`, an inference knob declared only in the toy method's `Options`
# (`option(1.0, low=0, high=1, knob=True, sweep=...)`), reaches the method through generate, the CLI, the server and
# the Pareto sweep with no edit in ponderlm. Each check compares with what the method computes at that value (a
# model whose pass inputs ignore the fed-back state: echo_scale 0), so a knob that got lost would fail it.
def no_echo_logits(model: PonderForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits with `echo_mix` 0 computed another way: the same weights with `echo_scale` 0 (no feedback at all)."""
    twin = PonderForCausalLM(PonderConfig(**{**model.config.to_dict(), "echo_scale": 0.0})).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        return twin(ids).logits


def test_the_knob_reaches_generate_sequential_and_the_eval_forward():
    from ponderlm.inference import decode_options, sequential_logits

    model = tiny_model("echo", max_steps=2, echo_scale=1.0).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    reference = no_echo_logits(model, ids)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, reference, atol=1e-3)  # the knob's default changes the output
        parallel = model(ids, decode_options=decode_options(model, echo_mix=0.0)).logits
    torch.testing.assert_close(parallel, reference, atol=1e-5, rtol=0)
    sequential, _ = sequential_logits(model, ids, echo_mix=0.0)
    torch.testing.assert_close(sequential, reference, atol=1e-4, rtol=0)
    out = model.generate(ids, max_new_tokens=3, echo_mix=0.0, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    torch.testing.assert_close(out.logits[0], reference[:, -1], atol=1e-4, rtol=0)  # the first new token's logits
    with pytest.raises(ValueError, match=r"echo_mix must be a finite number in \[0, 1\], got 2"):
        model.generate(ids, max_new_tokens=1, echo_mix=2.0)
    with pytest.raises(ValueError, match="unknown decoding option 'echo_mixx'; method 'echo' takes echo_mix"):
        sequential_logits(model, ids, echo_mixx=0.5)
    # Only its method takes it: another method's model is told so, and its saved value is checked like any option.
    assert decode_options(tiny_model("vanilla"), echo_mix=0.5).notes == (
        "echo_mix has no effect on method 'vanilla' (only echo takes it)",)
    with pytest.raises(ValueError, match=r"PonderConfig: echo_mix must be a finite number in \[0, 1\], got -1"):
        tiny_model("vanilla", echo_mix=-1.0)


@pytest.fixture
def echo_checkpoint(tmp_path) -> Path:
    from helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path, method="echo", train_steps=0)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "echo_scale": 1.0}))  # a feedback that matters
    return path


def test_the_knob_is_a_cli_flag_that_reaches_the_method(echo_checkpoint, capsys, monkeypatch):
    from ponderlm.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "decoding knobs of echo:" in out and "--echo-mix X" in out and "the later passes read" in out
    seen = []
    inputs = Echo.inputs
    monkeypatch.setattr(Echo, "inputs", lambda self, e, h, options: (seen.append(options.echo_mix), inputs(
        self, e, h, options))[1])
    argv = ["generate", "--model", str(echo_checkpoint), "--prompt", "the cat", "--max-new-tokens", "2"]
    assert main([*argv, "--echo-mix", "0.25"]) == 0
    assert seen and set(seen) == {0.25}
    assert main([*argv, "--echo-mix", "2"]) == 2
    assert "error: --echo-mix must be a finite number in [0, 1], got 2.0" in capsys.readouterr().err


def test_the_knob_is_a_request_field_of_the_server(echo_checkpoint):
    for extra in ("fastapi", "uvicorn", "prometheus_client", "openai"):
        pytest.importorskip(extra)
    from serve_helpers import Server

    from ponderlm.loading import load_model

    model, tok = load_model(echo_checkpoint, "cpu")
    ids = tok("the cat sat", add_special_tokens=False)["input_ids"]

    def offline(mix: float) -> str:
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, echo_mix=mix)
        return tok.decode(out[0, len(ids):])

    assert offline(0.0) != offline(1.0)  # the knob changes what this model generates
    server = Server(echo_checkpoint, max_batch=4)
    try:
        def complete(**extra) -> str:
            return server.client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0.0,
                                                    extra_body=extra).choices[0].text

        assert complete(echo_mix=0.0) == offline(0.0) and complete() == offline(1.0)
        import openai

        with pytest.raises(openai.BadRequestError, match=r"echo_mix must be a finite number in \[0, 1\], got 1.5") \
                as error:
            complete(echo_mix=1.5)
        assert error.value.body["param"] == "echo_mix"
    finally:
        server.close()


def test_the_knob_is_the_pareto_sweep_axis(echo_checkpoint, tmp_path, capsys):
    from ponderlm.cli import main
    from ponderlm.eval.pareto import sweep_model
    from ponderlm.eval.perplexity import perplexity
    from ponderlm.loading import load_model

    model, _ = load_model(echo_checkpoint, "cpu")
    batches = [torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))]
    points = sweep_model(model, "echo", batches, progress=False)
    assert [(p.policy, p.knobs["echo_mix"]) for p in points] == [("learned", 0.0), ("learned", 0.5), ("learned", 1.0)]
    assert points[0].ppl == pytest.approx(perplexity(model, batches, echo_mix=0.0, progress=False).ppl)
    assert len({p.ppl for p in points}) == 3
    assert main(["pareto", "--model", str(echo_checkpoint), "--echo-mix", "0,1", "--seq-len", "12", "--max-batches",
                 "1", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == ["curve", "policy", "echo_mix"]
    result = json.loads((tmp_path / "p" / "pareto.json").read_text())
    assert [p["echo_mix"] for p in result["points"]] == [0.0, 1.0]


def test_the_knob_is_in_the_model_card():
    from ponderlm.hub import model_card

    card = model_card(tiny_model("echo", max_steps=1, echo_mix=0.5).config, {})
    assert "| echo_mix (share of the fed-back state the later passes read) | 0.5 |" in card
    assert "model.generate(**inputs, max_new_tokens=32, echo_mix=0.5, return_dict_in_generate=True)" in card
