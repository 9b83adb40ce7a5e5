"""Baselines: pause tokens (METHODS.md §2) and the looped transformer (§3).

Each is checked against independent references: the token-by-token cached decode path, and for
the parallel path a hand-built computation (an explicit pause-token sequence; a vanilla model whose
layer stack is the looped stack unrolled).
"""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, assert_every_parameter_has_finite_gradient, padded_batch, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from ponderlm import PonderForCausalLM
from ponderlm.inference import sequential_logits

METHODS = ("pause", "looped")

def tiny(method: str, backbone: str = "llama", K: int = 2, **kw) -> PonderForCausalLM:
    return tiny_model(method, backbone, max_steps=K, **kw)


# --------------------------------------------------------------------------- 1. parallel == sequential decode
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_training_forward_equals_sequential_decode(method, backbone, side):
    model = tiny(method, backbone).train()  # the training forward itself (no dropout: deterministic)
    ids, mask = padded_batch(side)
    with torch.no_grad():
        parallel = model(ids, attention_mask=mask)
    seq_logits, seq_steps, state = sequential_logits(model, ids, mask, return_state=True)
    valid = mask.bool()
    torch.testing.assert_close(parallel.logits[valid], seq_logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(parallel.executed_steps, 2.0 * valid)
    assert torch.equal(seq_steps * valid, parallel.executed_steps)
    assert torch.all(seq_steps[~valid] == 0)
    # Decoding runs exactly K+1 single-slot passes per consumed token.
    assert state.backbone_calls == ids.shape[1] * 3
    lengths = [c.length for c in state.caches]
    assert lengths == ([ids.shape[1] * 3] if method == "pause" else [ids.shape[1]] * 3)
    # The comparison can fail: a different number of steps changes the logits.
    other = tiny(method, backbone, K=1)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if "pause_embeds" not in k}, strict=False)
    assert (other(ids, attention_mask=mask).logits[valid] - seq_logits[valid]).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("K", [1, 3])
def test_other_depths_equal_sequential_decode(method, K):
    model = tiny(method, K=K)
    ids, mask = padded_batch("left")
    valid = mask.bool()
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[valid],
                               sequential_logits(model, ids, mask)[0][valid], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- 2. independent parallel references
def test_pause_equals_explicit_pause_token_sequence():
    """A hand-built slot sequence: token embedding then P_1..P_K, all K+1 at the token's position."""
    K = 2
    model = tiny("pause", K=K)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    scale = model.config.resolved_embed_scale
    inputs, positions = [], []
    for t in range(ids.shape[1]):
        inputs.append(model.model.embed_tokens.weight[ids[0, t]] * scale)
        positions.append(t)
        for k in range(K):
            inputs.append(model.method.pause_embeds[k] * scale)
            positions.append(t)
    x = torch.stack(inputs)[None]
    n = x.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]

    def reference(pos: list[int]) -> torch.Tensor:
        hidden = model.model(x, torch.tensor([pos]), causal)
        return model.lm_head(hidden[:, K :: K + 1])  # the last slot of every token

    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(logits, reference(positions), atol=1e-5, rtol=0)
        # Can fail: giving every slot its own position (a plain longer sequence) is a different model.
        assert (logits - reference(list(range(n)))).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_looped_equals_unrolled_vanilla_stack(backbone):
    """Looping L layers K+1 times == a vanilla model of (K+1)L layers holding copies of them, one final norm."""
    K = 2
    model = tiny("looped", backbone, K=K)
    deep = tiny("vanilla", backbone, K=0, num_hidden_layers=2 * (K + 1),
                embed_scale=model.config.resolved_embed_scale)
    state = model.state_dict()
    deep_state = {}
    for name, tensor in deep.state_dict().items():
        if name.startswith("model.layers."):
            idx, rest = name[len("model.layers."):].split(".", 1)
            tensor = state[f"model.layers.{int(idx) % 2}.{rest}"]
        else:
            tensor = state[name]
        deep_state[name] = tensor
    deep.load_state_dict(deep_state)
    ids, mask = padded_batch("left")
    valid = mask.bool()
    with torch.no_grad():
        looped = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(looped[valid], deep(ids, attention_mask=mask).logits[valid], atol=1e-4, rtol=0)
        # Can fail: one loop is not the same model.
        single = tiny("vanilla", backbone, K=0, embed_scale=model.config.resolved_embed_scale)
        single.load_state_dict(state, strict=False)
        assert (looped[valid] - single(ids, attention_mask=mask).logits[valid]).abs().max() > 1e-3


# --------------------------------------------------------------------------- 3. gradients, init, save/load, generate
@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_gets_finite_gradient(method):
    model = tiny(method).train()
    ids, mask = padded_batch("right")
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    assert_every_parameter_has_finite_gradient(model)


def test_pause_vectors_are_initialised_like_embeddings():
    model = tiny("pause", K=3, hidden_size=64, initializer_range=0.2)
    p = model.method.pause_embeds.detach()
    assert p.shape == (3, 64) and torch.isfinite(p).all()
    assert 0.15 < float(p.std()) < 0.25 and abs(float(p.mean())) < 0.05
    # The same holds when a Hugging Face backbone is converted (method parameters are fresh).
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64, initializer_range=0.02))
    converted = PonderForCausalLM.from_backbone(hf, method="pause", max_steps=2).method.pause_embeds.detach()
    assert torch.isfinite(converted).all() and 0.01 < float(converted.std()) < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_save_pretrained_roundtrip(method, tmp_path):
    model = tiny(method, "gpt_neox")
    ids, mask = padded_batch("left")
    before = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    loaded = PonderForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.method == method and loaded.method.num_caches() == model.method.num_caches()
    assert torch.equal(loaded(ids, attention_mask=mask).logits, before)
    if method == "pause":
        assert torch.equal(loaded.method.pause_embeds, model.method.pause_embeds)


@pytest.mark.parametrize("method", METHODS)
def test_greedy_generate_equals_sequential_argmax_chain(method):
    model = tiny(method)
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    chain = prompt
    for _ in range(4):
        logits, _ = sequential_logits(model, chain)
        chain = torch.cat([chain, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, chain)
    assert torch.all(out.executed_steps == 2)
