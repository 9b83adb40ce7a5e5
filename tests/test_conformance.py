"""One conformance suite, run on every registered method (installed plugins included, and the toy plugin "echo" of
tests/plugin_pkg when it is not installed): what any method must satisfy, each against an independent reference.

- parallel == sequential: the parallel forward's logits and executed steps are token-by-token decoding's;
- prefill == token by token: a prompt prefilled leaves the decode state where T `decode_token` calls leave it;
- batched == alone: a left-padded batch generates, and is charged, what each prompt generates / costs alone;
- FLOPs == the FLOP counter: the analytic cost model (parallel forward, training step, decoding) against torch's
  FlopCounterMode on real calls, and the decoding ledger against both;
- save / load round trip: `save_pretrained` -> `from_pretrained` computes the same;
- served == offline: `ponderlm serve`'s completions and per-token steps are `generate`'s, under concurrency.

A method is asked, never named, for what changes the checks: its facts (adaptive, interleaved, takes_steps), its
declared knobs (an eval Jacobi sweep count), whether it overrides `prefill`, and its stand-in (`stand_in_options`,
`spread_stand_in`, as for `ponderlm bench decode`). Adaptive methods must decide varied depths on these tiny
untrained models, or the checks would only see full depth; MIXED says how for the built-ins whose stand-in does not
spread.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import padded_batch, single_thread, tiny_model

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.backbone.attention import slot_causal_mask
from ponderlm.flops import ComputeLedger, count_flops, flop_counter, flops
from ponderlm.inference.generate import generate
from ponderlm.inference.sequential import new_state, sequential_logits
from ponderlm.methods.base import PonderMethod
from ponderlm.registry import REGISTRY, method_class, method_names, register_method

PLUGIN = Path(__file__).parent / "plugin_pkg"
sys.path.insert(0, str(PLUGIN))  # the toy plugin's sources (not installed here; tests/test_plugins.py installs it)
from ponder_echo.method import Echo  # noqa: E402

CLASSES = {"echo": Echo, **{m: method_class(m) for m in method_names()}}  # an installed echo plugin wins
METHODS = sorted(CLASSES)
T, EXTRA, K_FIXED, K_ADAPTIVE = 8, 4, 2, 3  # prompt length, tokens decoded after it, K of each kind of method
SPREAD = 2.8  # `spread_stand_in` scale: a router with real spread on d=32 (std 0.5 per weight)


def _spread_gates(model: PonderForCausalLM) -> None:  # AdaPonderLM: tokens halt after pass 1, 2, 3 or never
    for i, gate in enumerate(model.method.gates):
        gate.out_weight.copy_(torch.randn(gate.out_weight.shape, generator=torch.Generator().manual_seed(i)) * 4)
        gate.out_bias.fill_(1.0)


def _spread_router(model: PonderForCausalLM) -> None:  # latent CoT: a continue router with real spread
    model.method.router.weight.normal_(0.0, 0.5)
    model.method.router.bias.fill_(0.5)


# Options and weights that make a built-in adaptive method mix depths where its stand-in alone does not.
MIXED: dict[str, tuple[dict, Callable[[PonderForCausalLM], None] | None]] = {
    "ponderlm3": ({"tau": 0.15}, None),
    "adaponder": ({"tau": 0.5}, _spread_gates),
    "latent_cot": ({"tau": 0.3}, _spread_router),
}


@pytest.fixture(scope="module", autouse=True)
def _toy_plugin_and_one_thread() -> Iterator[None]:
    ours = REGISTRY.get("echo") is not Echo  # an installed echo plugin registered itself through its entry point
    if ours:
        register_method("echo")(Echo)
    try:
        with single_thread():
            yield
    finally:
        if ours:
            REGISTRY.pop("echo")


def build(method: str, backbone: str = "llama", **overrides) -> PonderForCausalLM:
    """A seeded tiny model of `method` (K by kind) that, if adaptive, decides varied depths."""
    cls = CLASSES[method]
    K = (K_ADAPTIVE if cls.adaptive else K_FIXED) if cls.takes_steps else 0
    options, spread = MIXED.get(method, ({}, None))
    options = {**cls.stand_in_options, **options}
    if "jacobi_iters_eval" in cls.knobs():  # enough sweeps that the parallel solve is the sequential solution, up
        # to rounding; one training draw, so the analytic expectation is the count of every training step
        options.update(jacobi_iters_eval=T * (K + 1) + EXTRA, jacobi_iters_train=[2])
    model = tiny_model(method, backbone, max_steps=K, **{**options, **overrides})
    with torch.no_grad():
        model.method.spread_stand_in(SPREAD)
        if spread is not None:
            spread(model)
    return model


def feedbacks(method: str) -> tuple[str, ...]:
    """Latent feedback settings to check: pre_norm too where the method's latent slots take a hidden state."""
    return ("post_norm", "pre_norm") if CLASSES[method].interleaved else ("post_norm",)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


CASES = [(m, b, side, f) for m in METHODS for b, side in (("llama", "left"), ("gpt_neox", "right"))
         for f in feedbacks(m) if f == "post_norm" or b == "llama"]


# ---------------------------------------------------------------------------------------------- model paths
@pytest.mark.parametrize("method", [m for m in METHODS if CLASSES[m].adaptive])
def test_adaptive_test_models_mix_depths(method):
    ids, mask = padded_batch("left", length=T)
    steps = build(method)(ids, attention_mask=mask).executed_steps[mask.bool()]
    assert len(set(steps.tolist())) >= 3, f"{method}: the conformance model must mix depths, got {steps.tolist()}"


@pytest.mark.parametrize("method,backbone,side,feedback", CASES)
def test_parallel_equals_sequential(method, backbone, side, feedback):
    model = build(method, backbone, latent_feedback=feedback)
    ids, mask = padded_batch(side, length=T)
    valid = mask.bool()
    with torch.no_grad():
        parallel = model(ids, attention_mask=mask)
    logits, steps = sequential_logits(model, ids, mask)
    assert_close(parallel.logits[valid], logits[valid])
    assert torch.equal(parallel.executed_steps, steps * valid)


@torch.no_grad()
def _continue(model, state, logits: torch.Tensor) -> list[torch.Tensor]:
    out, valid = [], torch.ones(logits.shape[0], dtype=torch.bool)
    for _ in range(EXTRA):
        logits, _ = model.method.decode_token(model.backbone, state, logits.argmax(-1), valid)
        out.append(logits)
    return out


@pytest.mark.parametrize("method,backbone,side,feedback", CASES)
def test_prefill_equals_token_by_token_and_decoding_continues_identically(method, backbone, side, feedback):
    model = build(method, backbone, latent_feedback=feedback)
    ids, mask = padded_batch("left" if side == "left" else "none", length=T)
    valid = mask.bool()
    ref_logits, ref_steps, ref_state = sequential_logits(model, ids, mask, return_state=True)
    with torch.no_grad():
        state = new_state(model, ids.shape[0], T + EXTRA)
        logits, steps = model.method.prefill(model.backbone, state, ids, mask)
    assert_close(logits[valid], ref_logits[valid])
    assert torch.equal(steps[valid], ref_steps[valid])
    assert torch.equal(state.next_position, ref_state.next_position)
    if type(model.method).prefill is not PonderMethod.prefill:  # its own prefill: a few passes over the whole prompt
        assert state.backbone_calls <= model.config.max_steps + 1 < T
    # Decoding on from either state gives the same logits: the caches hold the same visible entries.
    for a, b in zip(_continue(model, state, logits[:, -1]), _continue(model, ref_state, ref_logits[:, -1])):
        assert_close(a, b)


@pytest.mark.parametrize("method,feedback", [(m, f) for m in METHODS for f in feedbacks(m)])
def test_batched_generate_and_its_cost_equal_each_prompt_alone(method, feedback):
    """A left-padded batch (continuous batching for methods with a per-row schedule) generates what each prompt
    generates alone (batch 1: prefill and `decode_token`), with the same executed steps; the ledger charges each row
    of a batched decode what decoding it alone costs."""
    model = build(method, latent_feedback=feedback)
    ids, mask = padded_batch("left", length=T)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    for row in range(ids.shape[0]):
        prompt = ids[row : row + 1, mask[row].bool()]
        alone = generate(model, prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.new_tokens[row], alone.new_tokens[0])
        assert torch.equal(out.executed_steps[row, T:], alone.executed_steps[0, prompt.shape[1]:])
    if feedback == "post_norm":
        batch, _, _ = decode_with_ledger(model, ids, mask, count=False)
        alone = [decode_with_ledger(model, ids[r : r + 1, mask[r].bool()], count=False)[0] for r in range(3)]
        assert sum(batch.flops) == pytest.approx(sum(sum(a.flops) for a in alone), rel=1e-12)
        assert sorted(batch.steps) == sorted(s for a in alone for s in a.steps) and len(batch.steps) == mask.sum()


# ---------------------------------------------------------------------------------------------- FLOPs
@pytest.fixture
def dense_key_bias(monkeypatch):
    """The analytic counts are the algorithm's (model FLOPs). A folded-bias attention kernel (`CausalKeyBias`,
    PonderLM-3's training path) also multiplies padding head dims (docs/COMPUTE.md), so counts are taken on the
    equivalent dense-mask path in every method module that uses it."""
    for name in METHODS:
        module = sys.modules[CLASSES[name].__module__]
        if hasattr(module, "CausalKeyBias"):
            monkeypatch.setattr(module, "CausalKeyBias",
                                lambda bias: slot_causal_mask(torch.ones(bias.shape, dtype=torch.bool), bias))


def counted_ids() -> torch.Tensor:
    # One row: a method that packs each row's active slots (latent CoT) pads rows of unequal depth in the pack,
    # which the per-token analytic count does not model (docs/COMPUTE.md).
    return torch.randint(0, 61, (1, T), generator=torch.Generator().manual_seed(3))


def close(analytic: float, counted: float, tol: float = 0.05) -> bool:
    return abs(analytic / counted - 1) < tol


def analytic(model: PonderForCausalLM, steps: torch.Tensor, **kw) -> dict:
    adaptive = model.config.method_class.adaptive
    return flops(model.config, T, avg_steps=steps if adaptive else None, **kw)


@pytest.mark.usefixtures("dense_key_bias")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_parallel_forward_flops_equal_the_flop_counter(method, backbone):
    model, ids = build(method, backbone), counted_ids()
    with torch.no_grad():
        steps = model(ids).executed_steps
    counted = count_flops(model, ids) / ids.numel()
    f = analytic(model, steps)
    assert close(f["parallel"], counted), (f["parallel"], counted)
    assert f["parallel_useful"] < f["parallel"]  # the counter sees dense attention; causal keys are fewer
    # Can fail: the same formula for a deeper backbone is far off.
    deeper = PonderConfig(**{**model.config.to_dict(), "num_hidden_layers": 3})
    assert not close(flops(deeper, T, avg_steps=steps if model.config.method_class.adaptive else None)["parallel"],
                     counted)


@pytest.mark.usefixtures("dense_key_bias")
@pytest.mark.parametrize("method", METHODS)
def test_training_step_flops_equal_the_flop_counter(method):
    """Forward + backward of one training step (backward ~ 2x forward per differentiated pass)."""
    model, ids = build(method).train(), counted_ids()
    with flop_counter() as counter:
        out = model(ids, labels=ids)
        out.loss.backward()
    counted = counter.get_total_flops() / ids.numel()
    f = analytic(model, out.executed_steps, training=True)
    assert close(f["training_executed"], counted), (f["training_executed"], counted)
    assert f["training"] < f["training_executed"]


def decode_with_ledger(model, ids, mask=None, count: bool = True):
    """Run the cached decode path (under the FLOP counter if `count`), recording every call in a ledger."""
    mask = torch.ones_like(ids) if mask is None else mask
    ledger, state, steps = ComputeLedger(model.config), new_state(model, ids.shape[0], ids.shape[1]), []
    with torch.no_grad(), flop_counter() if count else contextlib.nullcontext() as counter:
        for t in range(ids.shape[1]):
            before, valid = ledger.snapshot(state), mask[:, t].bool()
            _, s = model.method.decode_token(model.backbone, state, ids[:, t], valid)
            ledger.add_decode(state, before, s, valid, seconds=1e-3)
            steps.append(s)
    return ledger, torch.stack(steps, 1), counter.get_total_flops() if count else None


@pytest.mark.parametrize("method", METHODS)
def test_decode_flops_equal_the_flop_counter_and_the_ledger(method):
    model, ids = build(method), counted_ids()  # batch 1: real early exit, what per-token accounting describes
    ledger, steps, counted = decode_with_ledger(model, ids)
    counted /= ids.numel()
    summary = ledger.summary(vanilla_seconds_per_token=5e-4)
    f = analytic(model, steps)
    assert close(f["forward"], counted), (f["forward"], counted)
    assert close(summary["flops_per_token"], counted), (summary["flops_per_token"], counted)
    assert summary["avg_steps"] == pytest.approx(float(steps.mean())) and summary["tokens"] == T
    assert summary["seconds_per_token"] == pytest.approx(1e-3) and summary["seconds_ratio"] == pytest.approx(2.0)
    if not model.config.method_class.adaptive:  # every token runs the same slots: the ledger is the formula exactly
        assert summary["flops_per_token"] == pytest.approx(f["forward"], rel=1e-12)
        assert summary["flops_ratio"] == pytest.approx(f["forward_ratio"], rel=1e-12)
    if float(steps.mean()) >= 0.5:  # can fail: a vanilla model's cost of the same tokens is far off
        assert not close(summary["vanilla_flops_per_token"], counted)


# ---------------------------------------------------------------------------------------------- checkpoints, serving
@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, tmp_path):
    model = build(method)
    model.save_pretrained(tmp_path)
    loaded = PonderForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded.method) is type(model.method)
    where = {"_name_or_path", "auto_map"}  # where it was loaded from, and the remote code's entry (tests/test_hub.py)
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in where} == \
        {k: v for k, v in model.config.to_dict().items() if k not in where}
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids, mask = padded_batch("left", length=T)
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.executed_steps, b.executed_steps)


@pytest.mark.parametrize("method", METHODS)
def test_served_equals_offline(method, tmp_path):
    """Concurrent greedy completions of prompts of several lengths through the OpenAI client: each the tokens and
    per-token executed steps of `model.generate` on that prompt alone."""
    for extra in ("fastapi", "uvicorn", "prometheus_client", "openai"):
        pytest.importorskip(extra, reason="the serve extra is not installed: pip install 'ponderlm[serve,test]'")
    from serve_helpers import NAME, TEXT, Server

    from ponderlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    build(method, vocab_size=len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = PonderForCausalLM.from_pretrained(tmp_path).eval()
    words = tok(TEXT)["input_ids"]
    prompts = [words[: 2 + 4 * i] for i in range(3)]
    server = Server(tmp_path, max_batch=2)
    try:
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda p: server.client.completions.create(
                model=NAME, prompt=p, max_tokens=5, temperature=0, logprobs=0), prompts))
    finally:
        server.close()
    for ids, out in zip(prompts, outs, strict=True):
        ref = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
        new = ref.new_tokens[0].tolist()
        assert out.choices[0].logprobs.tokens == [tok.decode([t]) for t in new]
        # consuming token t produces token t+1: the steps of the last prompt token onwards
        assert out.choices[0].model_extra["ponder_steps"] == ref.executed_steps[0, len(ids) - 1:][: len(new)].tolist()
