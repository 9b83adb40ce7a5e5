"""PonderLM-3: router, tail-CDF mask, fused output, hard pruning that matches the parallel evaluation."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, padded_batch, tiny_model

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.inference import sequential_logits
from ponderlm.methods.ponderlm3 import tail_cdf


def make(K: int = 2, backbone: str = "llama", router_scale: float = 0.5, **kw) -> PonderForCausalLM:
    cfg = dict(max_steps=K, jacobi_iters_eval=8 * (K + 1), router_init="uniform")
    cfg.update(kw)
    model = tiny_model("ponderlm3", backbone, **cfg)
    # A router with real spread so tokens get different depths.
    torch.nn.init.normal_(model.method.router.net[0].weight, std=router_scale)
    return model


def batch(side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch(side, seed=3)


def force_router(model: PonderForCausalLM, k: int) -> None:
    """All router mass on exactly k extra steps."""
    out = model.method.router.net[-1]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.fill_(-30.0)
        out.bias[k] = 30.0


def test_tail_cdf():
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(tail_cdf(s), torch.tensor([1.0, 0.9, 0.7, 0.4]))


# ---------------------------------------------------------------- 1. tau = 0: decode == Jacobi-converged forward
@pytest.mark.parametrize("K,side,feedback", [(K, side, "post_norm") for K in (1, 2, 3) for side in ("left", "right")]
                         + [(2, "right", "pre_norm")])
def test_no_pruning_sequential_equals_jacobi(K, side, feedback):
    model = make(K, tau=0.0, latent_feedback=feedback)
    ids, mask = batch(side)
    out = model(ids, attention_mask=mask)
    logits, steps = sequential_logits(model, ids, mask, tau=0.0, alpha=0.0)
    valid = mask.bool()
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(steps[valid], torch.full_like(steps[valid], float(K)))
    # The soft mask matters: the same weights without the log-w bias give different logits.
    assert (out.logits[valid] - _without_mask_bias(model, ids, mask)[valid]).abs().max() > 1e-3


def _without_mask_bias(model, ids, mask):
    original = model.method.latent_key_bias
    model.method.latent_key_bias = lambda h, options: torch.zeros_like(original(h, options))
    try:
        return model(ids, attention_mask=mask).logits
    finally:
        model.method.latent_key_bias = original


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_no_pruning_both_backbones(backbone):
    model = make(2, backbone, tau=0.0)
    ids, mask = batch("left")
    out = model(ids, attention_mask=mask)
    logits, _ = sequential_logits(model, ids, mask, tau=0.0)
    torch.testing.assert_close(out.logits[mask.bool()], logits[mask.bool()], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- 2. tau > 0: pruned slots never computed
@pytest.mark.parametrize("tau,full_batch_from,feedback", [
    (tau, full, "post_norm") for tau in (0.15, 0.3) for full in (0.0, 2.0)] + [(0.15, 2.0, "pre_norm")],
    ids=lambda v: {0.0: "attend-whole-batch", 2.0: "gather-active-rows"}.get(v, str(v)))
def test_pruned_slots_are_never_computed_and_match_parallel(tau, full_batch_from, feedback, monkeypatch):
    # Both ways of attending for a subset of rows: over the whole batch's K/V, or over gathered rows.
    # pre_norm: pruned slots (a thresholded Jacobi solve) and skipped rows carry the residual stream.
    monkeypatch.setattr(SlotKVCache, "full_batch_attention_min_fraction", full_batch_from)
    model = make(3, tau=tau, latent_feedback=feedback)
    ids, mask = batch("left")
    out = model(ids, attention_mask=mask)
    valid = mask.bool()
    logits, steps, batch_state = sequential_logits(model, ids, mask, tau=tau, return_state=True)
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(out.executed_steps, steps * valid)
    # Mixed depths in one batch: each slot is computed only for the rows that execute it (padding never runs).
    assert batch_state.rows_computed == int(valid.sum()) + int(steps.sum())
    assert 0 < steps[valid].mean() < 3, "the threshold should prune some but not all slots"
    # Batch 1: every backbone call is a computed slot, and the cache holds exactly the executed ones.
    for row in range(ids.shape[0]):
        seq = ids[row : row + 1, mask[row].bool()]
        row_logits, row_steps, state = sequential_logits(model, seq, tau=tau, return_state=True)
        executed = int(row_steps.sum())
        assert state.backbone_calls == seq.shape[1] + executed
        assert state.cache.length == seq.shape[1] + executed
        assert int((state.cache.entry_view()["depth"] > 0).sum()) == executed
        torch.testing.assert_close(row_logits[0], logits[row, valid[row]], atol=1e-4, rtol=0)


def test_kept_latent_keys_carry_log_w_bias():
    model = make(2, tau=0.0)
    ids = torch.randint(0, VOCAB, (1, 4))
    _, _, state = sequential_logits(model, ids, tau=0.0, return_state=True)
    meta = state.cache.entry_view()
    latent = meta["depth"] > 0
    assert torch.all(meta["bias"][~latent] == 0)
    assert torch.all(meta["bias"][latent] < 0)  # log w_k < 0 for k >= 1 with a spread router


# ---------------------------------------------------------------- 3. forced routers: PonderLM-2 and vanilla cost
def test_router_forced_to_full_depth_reproduces_ponderlm2():
    model = make(2)
    force_router(model, 2)
    twin = PonderForCausalLM(PonderConfig(**{**model.config.to_dict(), "method": "ponderlm2"})).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("method.router") for k in unexpected)
    ids, mask = batch("right")
    valid = mask.bool()
    # Padding positions are unspecified (the pruning eval removes padding slots, PonderLM-2 masks them).
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[valid],
                               twin(ids, attention_mask=mask).logits[valid], atol=1e-5, rtol=0)
    a, steps = sequential_logits(model, ids, mask)
    b, _ = sequential_logits(twin, ids, mask)
    torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=0)
    assert torch.all(steps[valid] == 2)


def test_router_forced_to_zero_steps_is_vanilla_cost():
    model = make(3)
    force_router(model, 0)
    ids = torch.randint(0, VOCAB, (1, 6))
    logits, steps, state = sequential_logits(model, ids, return_state=True)
    assert torch.all(steps == 0)
    assert state.backbone_calls == 6 and state.cache.length == 6
    # Reference: a vanilla model with the same weights and the same embedding scale.
    vanilla = PonderForCausalLM(PonderConfig(**{**model.config.to_dict(), "method": "vanilla", "max_steps": 0,
                                                "embed_scale": model.config.resolved_embed_scale})).eval()
    vanilla.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(logits, vanilla(ids).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- 4. gradients reach the router through mask and fusion
def test_router_gets_gradient_through_mask_and_fusion():
    model = make(2, jacobi_iters_train=[2]).train()  # fixed R: the three backward passes see one graph
    ids, mask = batch("left")
    router_w = model.method.router.net[0].weight

    def router_grad(disable_mask: bool, disable_fusion: bool) -> torch.Tensor:
        model.zero_grad()
        method = model.method
        orig_bias, orig_fuse = method.latent_key_bias, method.fuse
        if disable_mask:
            method.latent_key_bias = lambda h, options: orig_bias(h, options).detach()
        if disable_fusion:
            method.fuse = lambda hid, s, d: orig_fuse(hid, s.detach(), d)
        try:
            model(ids, attention_mask=mask, labels=ids).loss.backward()
        finally:
            method.latent_key_bias, method.fuse = orig_bias, orig_fuse
        return router_w.grad.clone()

    through_mask_only = router_grad(disable_mask=False, disable_fusion=True)
    through_fusion_only = router_grad(disable_mask=True, disable_fusion=False)
    both = router_grad(False, False)
    assert through_mask_only.abs().sum() > 0
    assert through_fusion_only.abs().sum() > 0
    # Paths that cross both (fusion -> h^(0) -> earlier sweep's mask) make the sum non-additive, but
    # each route carries a substantial part of the full gradient.
    assert (both - through_mask_only).abs().max() > 1e-3 * both.abs().max()
    assert (both - through_fusion_only).abs().max() > 1e-3 * both.abs().max()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_lambda_steps_penalty_adds_expected_steps():
    model = make(2, lambda_steps=0.5).train()
    ids, mask = batch("left")
    torch.manual_seed(0)
    out = model(ids, attention_mask=mask, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)


# ---------------------------------------------------------------- 5. alpha is monotone on a trained model
def test_alpha_monotone_on_trained_model():
    torch.manual_seed(0)
    cfg = PonderConfig(method="ponderlm3", vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       max_steps=3, max_position_embeddings=64, lambda_steps=0.05, jacobi_iters_train=[1])
    model = PonderForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # a learnable pattern: token t+1 = (token t * 3 + noise) mod 16
        start = torch.randint(0, 16, (8, 1), generator=g)
        seq = [start]
        for _ in range(11):
            seq.append((seq[-1] * 3 + torch.randint(0, 2, (8, 1), generator=g)) % 16)
        ids = torch.cat(seq, dim=1)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids = torch.cat(seq, dim=1)
    averages = []
    for alpha in [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]:
        model.config.alpha = alpha
        averages.append(float(model(ids).executed_steps.mean()))
    model.config.alpha = 0.0
    assert all(b >= a for a, b in zip(averages, averages[1:])), averages
    assert averages[0] < averages[-1]


def test_generate_reports_steps_and_matches_sequential():
    model = make(2, tau=0.2)
    prompt = torch.randint(0, VOCAB, (1, 3))
    out = model.generate(prompt, max_new_tokens=5, return_dict_in_generate=True)
    logits, steps = sequential_logits(model, out.sequences[:, :-1], tau=0.2)
    assert torch.equal(out.sequences[:, 3:], logits[:, 2:].argmax(-1))
    assert torch.equal(out.executed_steps, steps)


def test_folded_key_bias_attention_equals_the_dense_soft_mask(monkeypatch):
    """Training without padding folds log w into the attention heads (CausalKeyBias); loss and every
    gradient must equal the dense float-mask formulation."""
    from ponderlm.backbone.attention import slot_causal_mask
    from ponderlm.methods import ponderlm2

    model = make(3, jacobi_iters_train=[2]).train()  # a fixed sweep count: both runs solve the same grid
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    original = ponderlm2.CausalKeyBias
    monkeypatch.setattr(ponderlm2, "CausalKeyBias", lambda bias: calls.append(1) or original(bias))
    folded_loss, folded = loss_and_grads()
    assert calls, "the folded path must be taken when there is no padding"
    monkeypatch.setattr(ponderlm2, "CausalKeyBias",
                        lambda bias: slot_causal_mask(torch.ones(bias.shape, dtype=torch.bool), bias))
    dense_loss, dense = loss_and_grads()
    torch.testing.assert_close(folded_loss, dense_loss, atol=1e-5, rtol=1e-5)
    assert folded.keys() == dense.keys() and any("router" in n for n in folded)
    for name in folded:
        torch.testing.assert_close(folded[name], dense[name], atol=1e-5, rtol=1e-4, msg=name)
