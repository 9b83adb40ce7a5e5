"""Parallel prompt prefill must leave decoding exactly where token-by-token decoding would.

Reference: `sequential_logits`, which feeds the prompt one token at a time through `decode_token`.
"""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch, tiny_model
from test_adaponder import mixed as mixed_adaponder
from test_latent_cot import make as mixed_latent_cot
from test_ponderlm3 import make as mixed_ponderlm3

from ponderlm.inference.generate import generate
from ponderlm.inference.sequential import new_state, sequential_logits

BUILDERS = {  # backbone, **config overrides -> model
    "vanilla": lambda backbone, **kw: tiny_model("vanilla", backbone, **kw),
    "pause": lambda backbone, **kw: tiny_model("pause", backbone, max_steps=2, **kw),
    "looped": lambda backbone, **kw: tiny_model("looped", backbone, max_steps=2, **kw),
    "ponderlm": lambda backbone, **kw: tiny_model("ponderlm", backbone, max_steps=2, **kw),
    "adaponder": lambda backbone, **kw: mixed_adaponder(backbone, **kw),
    "latent_cot": lambda backbone, **kw: mixed_latent_cot(3, backbone, **kw),
    # The default prefill (token by token): PonderLM-3's depth depends on earlier tokens' latent slots.
    "ponderlm3": lambda backbone, **kw: mixed_ponderlm3(3, backbone, tau=0.15, **kw),
}
# Methods whose latent slots take a hidden state: also checked with latent_feedback="pre_norm".
PRE_NORM = ("latent_cot", "ponderlm3")
PARALLEL = ("vanilla", "pause", "looped", "ponderlm", "adaponder", "latent_cot")
EXTRA = 4  # tokens decoded after the prompt


@torch.no_grad()
def _continue(model, state, logits: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for _ in range(EXTRA):
        logits, _ = model.method.decode_token(model.backbone, state, logits.argmax(-1), valid)
        out.append(logits)
    return out


@pytest.mark.parametrize("method,side,backbone,feedback", [
    (m, side, b, "post_norm") for m in BUILDERS for side in ("left", "none") for b in ("llama", "gpt_neox")]
    + [(m, "left", b, "pre_norm") for m, b in zip(PRE_NORM, ("llama", "gpt_neox"))])
def test_prefill_equals_token_by_token_and_decoding_continues_identically(method, side, backbone, feedback):
    model = BUILDERS[method](backbone, latent_feedback=feedback)
    ids, mask = padded_batch(side, length=8)
    valid = mask.bool()
    ref_logits, ref_steps, ref_state = sequential_logits(model, ids, mask, return_state=True)
    with torch.no_grad():
        state = new_state(model, ids.shape[0], ids.shape[1] + EXTRA)
        logits, steps = model.method.prefill(model.backbone, state, ids, mask)
    torch.testing.assert_close(logits[valid], ref_logits[valid], atol=2e-5, rtol=1e-4)
    assert torch.equal(steps[valid], ref_steps[valid])
    assert torch.equal(state.next_position, ref_state.next_position)
    if method in ("adaponder", "latent_cot"):
        assert len(set(steps[valid].tolist())) >= 3, "the test model must mix depths"
    if method in PARALLEL:
        # A handful of passes over the whole prompt, not one call per token and step.
        assert state.backbone_calls <= model.config.max_steps + 1 < ids.shape[1]
    # Decoding on from either state gives the same logits: the caches hold the same visible entries.
    last = torch.ones(ids.shape[0], dtype=torch.bool)
    ours = _continue(model, state, logits[:, -1], last)
    theirs = _continue(model, ref_state, ref_logits[:, -1], last)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["adaponder", "latent_cot"])
def test_prefill_of_one_sequence_writes_only_executed_slots(method):
    """Batch 1: halted / skipped steps write no cache entry, exactly as in token-by-token decoding."""
    model = BUILDERS[method]("llama")
    ids, _ = padded_batch("none", length=8)
    ids, mask = ids[:1], torch.ones_like(ids[:1])
    _, ref_steps, ref_state = sequential_logits(model, ids, mask, return_state=True)
    with torch.no_grad():
        state = new_state(model, 1, ids.shape[1])
        _, steps = model.method.prefill(model.backbone, state, ids, mask)
    assert state.cache.length == ref_state.cache.length == ids.shape[1] + int(ref_steps.sum())
    assert state.rows_computed == ids.shape[1] + int(steps.sum())


def test_generate_with_left_padding_matches_each_prompt_alone():
    """Batched generate (parallel prefill of left-padded prompts) == each prompt generated on its own."""
    model = BUILDERS["adaponder"]("llama")
    ids, mask = padded_batch("left", length=8)
    batched = generate(model, ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    for row in range(ids.shape[0]):
        prompt = ids[row : row + 1, mask[row].bool()]
        alone = generate(model, prompt, max_new_tokens=5, do_sample=False)
        assert torch.equal(batched[row, -5:], alone[0, -5:])


ROW_SCHEDULE = ("ponderlm3", "adaponder", "latent_cot", "ponderlm")


@pytest.mark.parametrize("method,feedback", [(m, "post_norm") for m in ROW_SCHEDULE]
                         + [(m, "pre_norm") for m in PRE_NORM])
def test_continuous_batching_generates_what_each_row_alone_generates(method, feedback):
    """Rows decoupled (each call advances every row by one slot of its own token) == each prompt alone
    (batch 1: prefill and `decode_token`, not the per-row schedule), and every cache entry is a slot its row
    computed (no invisible entries for skipped steps)."""
    model = BUILDERS[method]("llama", latent_feedback=feedback)
    ids, mask = padded_batch("left", length=8)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    new_steps = out.executed_steps[:, ids.shape[1]:]
    if method != "ponderlm":
        assert len(set(new_steps.flatten().tolist())) >= 2, "the test model must mix depths while generating"
    for row in range(ids.shape[0]):
        prompt = ids[row : row + 1, mask[row].bool()]
        alone = generate(model, prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.new_tokens[row], alone.new_tokens[0])
        assert torch.equal(new_steps[row], alone.executed_steps[0, prompt.shape[1]:])
