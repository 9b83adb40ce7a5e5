"""AdaPonderLM: gates, monotone halting and KV reuse, dense forward == token-by-token decoding with aliasing."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import VOCAB, padded_batch, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

import ponderlm.methods.ponderlm_v1 as v1
from ponderlm import PonderForCausalLM
from ponderlm.inference import sequential_logits
from ponderlm.methods.adaponder import freeze_backbone_for_gates
from ponderlm.methods.fixed_pruning import fixed_depths
from ponderlm.methods.ponderlm_v1 import _depth_window


def make(K: int = 3, backbone: str = "llama", method: str = "adaponder", **kw) -> PonderForCausalLM:
    return tiny_model(method, backbone, max_steps=K, **kw)


def set_gate(model: PonderForCausalLM, i: int, bias: float, std: float = 0.0, seed: int = 0) -> None:
    """Gate i (0-based): output bias `bias`, random output weights of scale `std` (0 = constant gate)."""
    gate = model.method.gates[i]
    with torch.no_grad():
        gate.out_weight.copy_(torch.randn(gate.out_weight.shape, generator=torch.Generator().manual_seed(seed)) * std)
        gate.out_bias.fill_(bias)


def mixed(backbone: str = "llama", **kw) -> PonderForCausalLM:
    """K=3, tau=0.5, spread gates: tokens halt after pass 1, 2, 3 or never (checked by the tests)."""
    model = make(3, backbone, tau=0.5, **kw)
    for i in range(3):
        set_gate(model, i, 1.0, std=4.0, seed=i)
    return model


def batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch(side, length=8)


def no_kv_reuse(active, kv_in, kv_out):
    return ORIGINAL_HOOK(None, kv_in, kv_out)


ORIGINAL_HOOK = v1._kv_reuse_hook


# ------------------------------------------------------------------ 1. dense == decode with mixed halting
@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_dense_equals_decode_with_mixed_halting(backbone, side, monkeypatch):
    model = mixed(backbone)
    ids, mask = batch(side)
    valid = mask.bool()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    logits, steps, batch_state = sequential_logits(model, ids, mask, return_state=True)
    assert {0.0, 1.0, 3.0} <= set(steps[valid].tolist()), steps  # halt after pass 1, after pass 2, never
    # Batched decoding computes each pass only for the rows still active (halted rows and padding never run).
    assert batch_state.rows_computed == int(valid.sum()) + int(steps.sum())
    assert torch.equal(out.executed_steps, steps) and torch.equal(steps[~valid], torch.zeros_like(steps[~valid]))
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)
    # Batch 1: halted passes are never run, and each row alone gives the batched result.
    for b in range(ids.shape[0]):
        row_ids, row_mask = ids[b : b + 1, valid[b]], mask[b : b + 1, valid[b]]
        row_logits, row_steps, state = sequential_logits(model, row_ids, row_mask, return_state=True)
        assert state.backbone_calls == row_ids.shape[1] + int(row_steps.sum())
        assert state.cache.length == state.backbone_calls
        torch.testing.assert_close(row_logits[0], logits[b, valid[b]], atol=1e-4, rtol=0)
    # The comparison can fail: the dense path without KV reuse gives other logits.
    monkeypatch.setattr(v1, "_kv_reuse_hook", no_kv_reuse)
    with torch.no_grad():
        assert (model(ids, attention_mask=mask).logits[valid] - logits[valid]).abs().max() > 1e-3


# ------------------------------------------------------------------ 2. independent references
def test_gates_open_equals_ponderlm_v1_exactly():
    base = make(2, method="ponderlm")
    model = PonderForCausalLM.from_backbone(base, method="adaponder").eval()
    for i in range(2):
        set_gate(model, i, 30.0)  # sigmoid(30) == 1.0 in float32
    ids, mask = batch("left")
    valid = mask.bool()
    with torch.no_grad():
        ref, out = base(ids, attention_mask=mask), model(ids, attention_mask=mask)
    assert torch.equal(out.logits[valid], ref.logits[valid])
    assert torch.equal(out.executed_steps, ref.executed_steps)
    assert torch.equal(sequential_logits(model, ids, mask)[0][valid], sequential_logits(base, ids, mask)[0][valid])
    # Gates that only scale (s = 0.5, never halting) change the result: the comparison can fail.
    set_gate(model, 0, 0.0)
    with torch.no_grad():
        assert (model(ids, attention_mask=mask).logits[valid] - ref.logits[valid]).abs().max() > 1e-3


def test_all_halted_after_first_pass_is_vanilla_at_vanilla_cost():
    model = make(3)
    set_gate(model, 0, -30.0)  # s ~ 1e-13 < tau for every token
    vanilla = make(0, method="vanilla", embed_scale=math.sqrt(32))
    vanilla.load_state_dict(model.state_dict(), strict=False)
    ids, mask = batch("right")
    valid = mask.bool()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        ref = vanilla(ids, attention_mask=mask).logits
    torch.testing.assert_close(out.logits[valid], ref[valid], atol=1e-5, rtol=0)
    assert out.executed_steps.abs().sum() == 0
    row = ids[:1]
    logits, steps, state = sequential_logits(model, row, return_state=True)
    torch.testing.assert_close(logits, ref[:1], atol=1e-4, rtol=0)
    assert steps.abs().sum() == 0 and state.backbone_calls == row.shape[1] and state.cache.length == row.shape[1]


# ------------------------------------------------------------------ 3. monotone mask, K/V of the last active pass
def _record_dense_kv(model, ids, mask) -> list[list[torch.Tensor]]:
    """Keys each dense pass really used, per pass and layer ([B,H,T,D])."""
    passes: list[list[torch.Tensor]] = []
    stack_forward = model.model.forward

    def forward(x, pos, m, cache=None, kv_hook=None, apply_norm=True):
        keys: list[torch.Tensor] = []
        passes.append(keys)

        def hook(layer, k, v):
            k, v = kv_hook(layer, k, v)
            keys.append(k.detach().clone())
            return k, v

        return stack_forward(x, pos, m, cache, hook, apply_norm)

    model.model.forward = forward
    try:
        with torch.no_grad():
            model(ids, attention_mask=mask)
    finally:
        del model.model.forward
    return passes


def test_mask_is_monotone_and_halted_kv_is_frozen():
    K = 3
    model = make(K, tau=0.5)
    set_gate(model, 0, 0.0, std=4.0, seed=5)  # gate 1 closes for some tokens
    set_gate(model, 1, 30.0)  # later gates wide open: a halted token must still never resume
    set_gate(model, 2, 30.0)
    ids, mask = batch("left")
    valid = mask.bool()
    logits, steps, state = sequential_logits(model, ids, mask, return_state=True)
    assert set(steps[valid].tolist()) == {0.0, float(K)}
    halted = valid & (steps == 0)
    # Dense: from pass 2 on, halted tokens use bit-identical keys of pass 1; active tokens' keys change.
    passes = _record_dense_kv(model, ids, mask)
    assert len(passes) == K + 1
    for j in range(1, K + 1):
        for layer in range(2):
            first, now = passes[0][layer].transpose(1, 2), passes[j][layer].transpose(1, 2)  # [B,T,H,D]
            assert torch.equal(now[halted], first[halted])
            assert not torch.equal(now[valid & ~halted], first[valid & ~halted])
    # Decode: a halted token's pass-1 entry is aliased (depth_last = K), never copied; every pass-j query
    # sees exactly one entry per earlier token, the one of depth min(j, its steps).
    meta = state.cache.entry_view()
    windows = [_depth_window(j)(state.cache)[:, 0] for j in range(K + 1)]
    for b in range(ids.shape[0]):
        real = torch.isfinite(meta["bias"][b])
        for t in torch.nonzero(valid[b]).flatten().tolist():
            p = int(valid[b, : t + 1].sum()) - 1
            mine = real & (meta["position"][b] == p)
            d = int(steps[b, t])
            assert sorted(meta["depth"][b, mine].tolist()) == list(range(d + 1))
            for j in range(K + 1):
                seen = mine & windows[j][b]
                assert seen.sum() == 1 and int(meta["depth"][b, seen]) == min(j, d)


# ------------------------------------------------------------------ 4. gates-only stage of continued pretraining
def _gates_only_step(model: PonderForCausalLM) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids, mask = batch("right")
    with freeze_backbone_for_gates(model):
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == n.startswith("method.gates."), n
        assert p.requires_grad, n  # restored on exit
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    optim.step()
    assert not torch.equal(model.lm_head.weight, before["lm_head.weight"])


def test_gates_only_stage_from_hf_backbone():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64)).eval()
    model = PonderForCausalLM.from_backbone(hf, method="adaponder", max_steps=2)
    assert all(g.out_bias.item() == model.config.gate_init_bias for g in model.method.gates)  # gates start open
    torch.testing.assert_close(model.lm_head.weight, hf.lm_head.weight)
    _gates_only_step(model)


def test_gates_only_stage_from_ponderlm_v1_checkpoint(tmp_path):
    make(2, method="ponderlm").save_pretrained(tmp_path)
    model = PonderForCausalLM.from_backbone(str(tmp_path), method="adaponder")
    assert model.config.max_steps == 2 and len(model.method.gates) == 2
    _gates_only_step(model)
    with pytest.raises(ValueError, match="adaponder"):
        freeze_backbone_for_gates(make(2, method="ponderlm"))


# ------------------------------------------------------------------ 5. loss: bottom-k of evaluated gates, ramp
def test_bottom_k_halting_loss_and_ramp():
    model = mixed(halt_lambda=0.5, halt_k_frac=0.2, halt_k_frac_ramp_steps=100).train()
    ids, mask = batch("left")
    valid = mask.bool()
    model.set_training_progress(0)
    assert model(ids, attention_mask=mask, labels=ids).aux_loss.item() == 0.0
    model.set_training_progress(50)  # half way: k_frac = 0.1
    out = model.method(model.backbone, ids, mask)
    # Independent count: gate i is evaluated for valid tokens that ran pass i, i.e. took >= i-1 steps.
    steps = out.executed_steps
    values = torch.cat([s[valid & (steps >= i)] for i, (s, _) in enumerate(out.stats["gates"])])
    assert values.numel() == sum(int((valid & (steps >= i)).sum()) for i in range(3))
    k = math.floor(0.1 * values.numel())
    assert k > 0
    torch.testing.assert_close(out.aux_loss, 0.5 * values.sort().values[:k].mean())
    model.set_training_progress(10_000)  # ramp saturates at halt_k_frac
    k_full = math.floor(0.2 * values.numel())
    aux_loss = model.method(model.backbone, ids, mask).aux_loss
    torch.testing.assert_close(aux_loss, 0.5 * values.sort().values[:k_full].mean())


def test_every_parameter_gets_finite_gradient():
    model = make(2, tau=1e-4, halt_k_frac_ramp_steps=0).train()  # default open gates: nobody halts
    ids, mask = batch("right")
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ 6. fixed pruning controls
@pytest.mark.parametrize("policy", ["uniform", "geometric"])
def test_fixed_pruning_follows_depths_in_both_paths(policy):
    model = mixed(depth_policy=policy, depth_target=1.5)
    ids, mask = batch("left")
    valid = mask.bool()
    rows = torch.arange(ids.shape[0])[:, None].expand_as(ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = fixed_depths(model.config, rows, positions).float() * valid
    assert len(set(expected[valid].tolist())) >= 3
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    logits, steps = sequential_logits(model, ids, mask)
    assert torch.equal(out.executed_steps, expected) and torch.equal(steps, expected)
    torch.testing.assert_close(out.logits[valid], logits[valid], atol=1e-4, rtol=0)


def test_save_load_keeps_trained_gates(tmp_path):
    model = mixed()
    model.save_pretrained(tmp_path)
    loaded = PonderForCausalLM.from_pretrained(tmp_path).eval()  # init_ponder_weights must not reopen the gates
    ids, mask = batch("left")
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
