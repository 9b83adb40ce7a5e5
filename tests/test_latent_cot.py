"""Adaptive latent CoT: exact depth passes vs token-by-token decoding vs a dense full-grid reference,
forced routers, compute that falls with depth, the correctness-aware penalty, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import VOCAB, padded_batch, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.backbone.attention import slot_causal_mask
from ponderlm.inference import sequential_logits
from ponderlm.methods.base import padding_positions
from ponderlm.methods.fixed_pruning import fixed_depths


def make(K: int = 3, backbone: str = "llama", router_std: float = 0.5, router_bias: float = 0.5, tau: float = 0.3,
         **kw) -> PonderForCausalLM:
    model = tiny_model("latent_cot", backbone, max_steps=K, tau=tau, **kw)
    router = model.method.router
    with torch.no_grad():  # a router with real spread, so tokens halt at different depths
        router.weight.normal_(0.0, router_std)
        router.bias.fill_(router_bias)
    return model


def batch(side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch(side, seed=3)


def force_router(model: PonderForCausalLM, logit: float) -> None:
    with torch.no_grad():
        model.method.router.weight.zero_()
        model.method.router.bias.fill_(logit)


@torch.no_grad()
def dense_reference(model, ids, mask, depth_predicate: bool = True, depths: torch.Tensor | None = None):
    """Independent reference: K+1 passes over the FULL slot grid (nothing packed, no kv_hook) under the 2-D
    mask built by `slot_causal_mask(..., key_depth=...)`; after pass k, depths <= k are exact.
    `depths` [B,T], if given, replaces the reach > tau rule. Latent inputs follow `latent_feedback`: slot k's
    output after the final norm, or (pre_norm) its residual stream before it. Returns (logits, executed steps)."""
    cfg, K = model.config, model.config.max_steps
    B, T = ids.shape
    valid = mask.bool()
    pos = padding_positions(mask)[:, :, None].expand(B, T, K + 1).reshape(B, -1)
    depth_idx = torch.arange(K + 1).expand(B, T, K + 1).reshape(B, -1)
    grid = torch.zeros(B, T, K + 1, cfg.hidden_size)
    grid[:, :, 0] = model.embed(ids)
    executed = torch.zeros(B, T, K + 1, dtype=torch.bool)
    executed[:, :, 0] = valid
    reach, gates = torch.ones(B, T), []
    for k in range(K + 1):
        m = slot_causal_mask(executed.reshape(B, -1), key_depth=depth_idx if depth_predicate else None)
        stream = model.model(grid.reshape(B, -1, cfg.hidden_size), pos, m, apply_norm=False).reshape(B, T, K + 1, -1)
        hidden = model.model.norm(stream)
        if k < K:
            gates.append(model.method.router(hidden[:, :, k], k))
            reach = reach * gates[-1]
            keep = reach > cfg.tau if depths is None else depths > k
            executed[:, :, k + 1] = executed[:, :, k] & keep
            grid[:, :, k + 1] = (stream if cfg.latent_feedback == "pre_norm" else hidden)[:, :, k]
    depth = executed[:, :, 1:].sum(-1)
    fused = torch.zeros(B, T, cfg.hidden_size)
    r = torch.ones(B, T)
    for k in range(K + 1):
        last = depth == k
        p = torch.where(last, r, r * (1 - gates[k]) if k < K else torch.zeros_like(r)) * (k <= depth)
        fused += p[..., None] * hidden[:, :, k]
        if k < K:
            r = r * gates[k]
    return model.lm_head(fused), depth.float() * valid


# ---------------------------------------------------------------- 1. exact: parallel == decode == dense grid
@pytest.mark.parametrize("backbone,side,feedback", [(b, side, "post_norm") for b in ("llama", "gpt_neox")
                                                    for side in ("left", "right")] + [("gpt_neox", "left", "pre_norm")])
def test_parallel_equals_decode_and_dense_reference(backbone, side, feedback):
    model = make(3, backbone, latent_feedback=feedback)
    ids, mask = batch(side)
    valid = mask.bool()
    out = model(ids, attention_mask=mask)
    logits, steps, state = sequential_logits(model, ids, mask, return_state=True)
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(out.executed_steps, steps * valid)
    # Batched decode computes only the rows still thinking: one per real token + one per executed step.
    assert state.rows_computed == int(valid.sum()) + int(steps.sum())
    mix = set(steps[valid].tolist())
    assert {0.0, 3.0} <= mix and len(mix) >= 3, f"tokens must halt at different depths, got {mix}"
    assert torch.all(out.executed_steps[~valid] == 0)
    ref_logits, ref_steps = dense_reference(model, ids, mask)
    torch.testing.assert_close(out.logits[valid], ref_logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(ref_steps, out.executed_steps)
    # The comparison can fail: without the depth predicate (PonderLM-2's slot-causal mask) logits differ.
    loose, _ = dense_reference(model, ids, mask, depth_predicate=False)
    assert (loose[valid] - logits[valid]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["shared", "step", "mlp"])
def test_router_kinds_parallel_equals_decode(kind):
    model = make(2, cot_router=kind, router_std=1.0 if kind == "mlp" else 0.5)
    ids, mask = batch("left")
    valid = mask.bool()
    out = model(ids, attention_mask=mask)
    logits, steps = sequential_logits(model, ids, mask)
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(out.executed_steps, steps * valid)
    torch.testing.assert_close(out.logits[valid], dense_reference(model, ids, mask)[0][valid], atol=1e-4, rtol=0)


def test_halted_tokens_write_nothing_and_exit_weights_sum_to_one():
    model = make(3)
    ids, mask = batch("left")
    out = model.method(model.backbone, ids, mask)
    p = out.stats["exit_weights"]
    torch.testing.assert_close(p.sum(-1)[mask.bool()], torch.ones(int(mask.sum())))
    assert torch.all(p[..., 1:][torch.arange(1, 4) > out.executed_steps[..., None]] == 0)
    for row in range(ids.shape[0]):
        seq = ids[row : row + 1, mask[row].bool()]
        row_logits, row_steps, state = sequential_logits(model, seq, return_state=True)
        executed = int(row_steps.sum())
        assert state.backbone_calls == seq.shape[1] + executed
        assert state.cache.length == seq.shape[1] + executed
        depth_meta = state.cache.entry_view()["depth"][0]
        for k in range(1, 4):  # the cache holds exactly the executed slots of each depth, tagged with it
            assert int((depth_meta == k).sum()) == int((row_steps >= k).sum())
        full = model(ids, attention_mask=mask).logits[row, mask[row].bool()]
        torch.testing.assert_close(row_logits[0], full, atol=1e-4, rtol=0)


def test_fixed_depth_policy_replaces_learned_depth():
    model = make(3, depth_policy="uniform", depth_target=1.5, depth_seed=4)
    ids, mask = batch("right")
    valid = mask.bool()
    out = model(ids, attention_mask=mask)
    logits, steps = sequential_logits(model, ids, mask)
    rows = torch.arange(3)[:, None].expand_as(ids)
    expected = fixed_depths(model.config, rows, padding_positions(mask)).float() * valid
    assert torch.equal(out.executed_steps, expected) and torch.equal(steps * valid, expected)
    assert len(set(expected[valid].tolist())) > 1
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    ref_logits, ref_steps = dense_reference(model, ids, mask, depths=expected)
    torch.testing.assert_close(out.logits[valid], ref_logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(ref_steps, expected)


# ---------------------------------------------------------------- 2. forced routers
def test_router_forced_to_continue_runs_every_step():
    model = make(3, tau=1e-4)
    force_router(model, 30.0)
    ids, mask = batch("left")
    valid = mask.bool()
    out = model(ids, attention_mask=mask)
    assert torch.all(out.executed_steps[valid] == 3)
    logits, steps, state = sequential_logits(model, ids[:1], return_state=True)
    assert torch.all(steps == 3) and state.backbone_calls == 7 * 4 and state.cache.length == 7 * 4
    torch.testing.assert_close(out.logits[0], logits[0], atol=1e-4, rtol=0)
    # g = 1: all exit mass on the last slot, so the output is h^(K) of the dense 2-D-mask grid.
    torch.testing.assert_close(out.logits[valid], dense_reference(model, ids, mask)[0][valid], atol=1e-4, rtol=0)


def test_router_forced_to_stop_is_vanilla_with_the_same_embedding_scale():
    model = make(3, tau=1e-4)
    force_router(model, -30.0)
    ids, mask = batch("right")
    valid = mask.bool()
    out = model(ids, attention_mask=mask)
    assert torch.all(out.executed_steps == 0)
    logits, steps, state = sequential_logits(model, ids[:1], return_state=True)
    assert torch.all(steps == 0) and state.backbone_calls == 7 and state.cache.length == 7
    # Zero steps: p_0 = r_0 = 1, h^ = F(E[x] * sqrt(2.5 d)) under the causal mask. The independent
    # reference is a vanilla model with the same weights AND embed_scale = sqrt(2.5 d); vanilla's own
    # default scale (1) is a different function.
    cfg = {**model.config.to_dict(), "method": "vanilla", "max_steps": 0, "embed_scale": None}
    vanilla = PonderForCausalLM(PonderConfig(**{**cfg, "embed_scale": math.sqrt(2.5 * 32)})).eval()
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("method.router") for k in unexpected)
    reference = vanilla(ids, attention_mask=mask).logits
    torch.testing.assert_close(out.logits[valid], reference[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[0], reference[0], atol=1e-5, rtol=0)
    unscaled = PonderForCausalLM(PonderConfig(**cfg)).eval()
    unscaled.load_state_dict(model.state_dict(), strict=False)
    assert (unscaled(ids, attention_mask=mask).logits[valid] - reference[valid]).abs().max() > 1e-2


# ---------------------------------------------------------------- 3. training compute falls with depth
def test_training_compute_falls_with_average_depth():
    ids, mask = batch("left")
    rows = []
    for bias in (4.0, 1.0, 0.0, -1.0, -4.0):
        model = make(3, router_bias=bias, router_std=0.3).train()
        flops = FlopCounterMode(display=False)
        with flops:
            out = model.method(model.backbone, ids, mask, labels=ids)
            loss = model.lm_head(out.hidden).sum() + (out.aux_loss if out.aux_loss is not None else 0)
            loss.backward()
        single = model.method(model.backbone, ids[:1], torch.ones_like(ids[:1]))
        # Batch 1: exactly T + sum_t K^_t slots go through the backbone.
        assert single.stats["slots_computed"] == 7 + int(single.executed_steps.sum())
        assert out.stats["slots_computed"] >= out.stats["slots_executed"]
        rows.append((float(out.executed_steps.sum()), out.stats["slots_computed"], flops.get_total_flops()))
    depth, slots, total = zip(*rows)
    assert depth[0] == 3 * int(mask.sum()) and depth[-1] == 0
    assert list(depth) == sorted(depth, reverse=True) and len(set(depth)) == len(depth)
    assert list(slots) == sorted(slots, reverse=True) and len(set(slots)) == len(slots)
    assert list(total) == sorted(total, reverse=True) and len(set(total)) == len(total)
    assert total[0] > 2.5 * total[-1]  # K+1 = 4x the slots at full depth vs none (LM head costs the rest)


# ---------------------------------------------------------------- 4. the penalty
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_penalty_matches_formula_with_constant_router(beta):
    c, lam = 0.7, 0.3
    model = make(3, tau=0.0, cot_lambda=lam, cot_beta=beta)
    force_router(model, math.log(c / (1 - c)))
    ids, mask = batch("right")
    labels = ids.clone()
    labels[0, 4] = -100
    out = model.train()(ids, attention_mask=mask, labels=labels)
    model.eval()
    total, count = 0.0, 0
    for row in range(3):  # q_{t,k} from the decode path's slot states of each unpadded row
        n = int(mask[row].sum())
        seq = ids[row : row + 1, :n]
        _, _, state = sequential_logits(model, seq, return_state=True, trace=True)
        for t in range(n - 1):
            if labels[row, t + 1] == -100:
                continue
            probs = torch.softmax(model.lm_head(state.slot_trace[t][0]), -1)[:, seq[0, t + 1]]
            total += sum(c**k * float(probs[k - 1].detach()) ** beta for k in range(1, 4))
            count += 1
    torch.testing.assert_close(out.aux_loss, torch.tensor(lam * total / count), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)


def _expected_depth_after_training(cot_lambda: float, cot_beta: float, steps: int = 12) -> float:
    """Expected depth mean_t sum_k r_{t,k} on a fixed batch after `steps` Adam steps on CE + penalty."""
    model = make(3, tau=1e-4, router_std=0.05, router_bias=1.0, cot_lambda=cot_lambda, cot_beta=cot_beta,
                 initializer_range=0.1).train()
    ids, mask = batch("left")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(ids, attention_mask=mask, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.method(model.backbone, ids, mask)
    return float(out.stats["expected_steps"].sum() / mask.sum())


def test_penalty_lambda_prunes_and_beta_spares():
    no_penalty = _expected_depth_after_training(0.0, 1.0)
    small, large = _expected_depth_after_training(0.05, 0.0), _expected_depth_after_training(0.5, 0.0)
    assert large + 0.3 < small < no_penalty, (no_penalty, small, large)
    # q < 1, so q^beta shrinks with beta: the same lambda prunes less.
    low_beta, high_beta = _expected_depth_after_training(0.3, 0.0), _expected_depth_after_training(0.3, 2.0)
    assert high_beta > low_beta + 0.3, (low_beta, high_beta)


# ---------------------------------------------------------------- 5. gradients
@pytest.mark.parametrize("kind", ["shared", "step", "mlp"])
def test_every_parameter_gets_finite_gradient(kind):
    model = make(3, cot_router=kind, router_bias=3.0, router_std=0.1, tau=1e-4, cot_lambda=0.5).train()
    ids, mask = batch("right")
    out = model(ids, attention_mask=mask, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = batch("left")
    grads = []
    for checkpointing in (False, True):
        model = make(2).train()
        model.model.gradient_checkpointing = checkpointing
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_router_init_bias_survives_hf_init_and_save(tmp_path):
    cfg = PonderConfig(method="latent_cot", vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, max_steps=2,
                       cot_router="step", cot_router_init_bias=1.25)
    model = PonderForCausalLM(cfg)
    assert torch.all(model.method.router.bias == 1.25)
    with torch.no_grad():
        model.method.router.bias.fill_(-0.5)
    model.save_pretrained(tmp_path)
    assert torch.all(PonderForCausalLM.from_pretrained(tmp_path).method.router.bias == -0.5)


def test_greedy_generate_matches_sequential():
    model = make(2)
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    logits, steps = sequential_logits(model, out.sequences[:, :-1])
    assert torch.equal(out.sequences[:, 3:], logits[:, 2:].argmax(-1))
    assert torch.equal(out.executed_steps, steps)


def test_penalty_delay_turns_the_penalty_on_at_the_given_step():
    """cot_lambda_delay_steps: no penalty before the step, exactly the undelayed penalty from it on."""
    ids, mask = batch("right")
    delayed = make(3, tau=0.0, cot_lambda=0.3, cot_lambda_delay_steps=5).train()
    plain = make(3, tau=0.0, cot_lambda=0.3).train()
    plain.load_state_dict(delayed.state_dict())
    reference = plain(ids, attention_mask=mask, labels=ids)
    assert reference.aux_loss is not None and float(reference.aux_loss.detach()) > 0
    for step, on in ((0, False), (4, False), (5, True), (9, True)):
        delayed.set_training_progress(step)
        out = delayed(ids, attention_mask=mask, labels=ids)
        if on:
            torch.testing.assert_close(out.aux_loss, reference.aux_loss)
        else:
            assert out.aux_loss is None
            torch.testing.assert_close(out.loss, reference.lm_loss)
    with pytest.raises(ValueError, match="cot_lambda_delay_steps"):
        make(3, cot_lambda_delay_steps=-1)
