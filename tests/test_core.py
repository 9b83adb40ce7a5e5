"""Core model: backbones against Hugging Face, PonderLM-2 parallel (Jacobi) against sequential decode."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, assert_every_parameter_has_finite_gradient, padded_batch, tiny_model
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.inference import sequential_logits
from ponderlm.inference.jacobi import jacobi_rmse


def tiny(method: str = "vanilla", backbone: str = "llama", **kw) -> PonderForCausalLM:
    return tiny_model(method, backbone, **kw)


# --------------------------------------------------------------------------- 1. vanilla == HF
def test_vanilla_matches_hf_llama():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.1)).eval()
    ours = PonderForCausalLM.from_backbone(hf).eval()
    ids = torch.randint(0, VOCAB, (2, 11))
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    # Sequential (cached) vanilla decoding must give the same logits too.
    torch.testing.assert_close(sequential_logits(ours, ids)[0], hf(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_vanilla_matches_hf_gpt_neox(parallel_residual):
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                          rotary_pct=0.25, use_parallel_residual=parallel_residual,
                                          initializer_range=0.1)).eval()
    ours = PonderForCausalLM.from_backbone(hf).eval()
    assert ours.config.rotary_pct == 0.25 and ours.config.use_parallel_residual == parallel_residual
    ids = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_from_backbone_initialises_method_and_keeps_weights():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64)).eval()
    ours = PonderForCausalLM.from_backbone(hf, method="ponderlm2", max_steps=2)
    assert ours.config.method == "ponderlm2" and ours.config.max_steps == 2
    torch.testing.assert_close(ours.model.layers[1].mlp.up_proj.weight, hf.model.layers[1].mlp.up_proj.weight)
    torch.testing.assert_close(ours.lm_head.weight, hf.lm_head.weight)


# --------------------------------------------------------------------------- 2. Jacobi == sequential
# Every shape with the papers' post_norm feedback; pre_norm (residual stream fed back) on one shape per
# backbone and padding side, which exercises the same code with the other flag.
JACOBI_CASES = [(b, K, s, "post_norm") for b in ("llama", "gpt_neox") for K in (1, 2, 3) for s in ("left", "right")]
JACOBI_CASES += [("llama", 2, "left", "pre_norm"), ("gpt_neox", 3, "right", "pre_norm")]


@pytest.mark.parametrize("backbone,K,side,feedback", JACOBI_CASES)
def test_ponderlm2_jacobi_equals_sequential(backbone, K, side, feedback):
    model = tiny("ponderlm2", backbone, max_steps=K, jacobi_iters_eval=7 * (K + 1), latent_feedback=feedback)
    ids, mask = padded_batch(side)
    parallel = model(ids, attention_mask=mask)
    seq_logits, seq_steps = sequential_logits(model, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(parallel.logits[valid], seq_logits[valid], atol=1e-4, rtol=0)
    assert torch.equal(seq_steps[valid], torch.full_like(seq_steps[valid], float(K)))
    assert torch.equal(parallel.executed_steps, seq_steps * valid)
    # The comparison can fail: without sweeps the parallel solution is measurably off.
    model.config.jacobi_iters_eval = 0
    rough = model(ids, attention_mask=mask).logits
    assert (rough[valid] - seq_logits[valid]).abs().max() > 1e-3


@pytest.mark.parametrize("feedback", ["post_norm", "pre_norm"])
def test_latent_slot_input_is_the_configured_feedback(feedback):
    """Slot (1,1) takes slot (1,0)'s output after (post_norm) or before (pre_norm) the final norm, in decoding
    and in the parallel pass. The two candidates differ, so feeding back the wrong one fails."""
    model = tiny("ponderlm2", max_steps=1, latent_feedback=feedback)
    ids = torch.tensor([[5]])
    inputs: list[torch.Tensor] = []
    hook = model.model.layers[0].register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    try:
        with torch.no_grad():
            sequential_logits(model, ids)  # two single-slot calls: slot (1,0), then slot (1,1)
            model(ids)  # stage building, sweeps, then the final pass over the grid [(1,0), (1,1)]
    finally:
        hook.remove()
    with torch.no_grad():  # by hand: slot (1,0) alone, one token at position 0
        stream = model.model.run_layers(model.embed(ids), torch.zeros_like(ids), None)[0, 0]
        normed = model.model.norm(stream)
    expected, other = (stream, normed) if feedback == "pre_norm" else (normed, stream)
    assert (expected - other).abs().max() > 0.1
    torch.testing.assert_close(inputs[1][0, 0], expected, atol=1e-5, rtol=1e-5)  # decoding
    torch.testing.assert_close(inputs[-1][0, 1], expected, atol=1e-5, rtol=1e-5)  # parallel final pass


# --------------------------------------------------------------------------- 3. Jacobi RMSE shrinks
def test_jacobi_rmse_shrinks_with_sweeps():
    model = tiny("ponderlm2", max_steps=2)
    ids, mask = padded_batch("left")
    rmse = jacobi_rmse(model, ids, mask, max_sweeps=16)
    assert len(rmse) == 17
    assert rmse[0] > 1e-3
    assert rmse[-1] < 1e-5
    assert rmse[8] < rmse[0] and rmse[16] <= rmse[8]


# --------------------------------------------------------------------------- 4. grads, save/load, Auto*
@pytest.mark.parametrize("method,K", [("vanilla", 0), ("ponderlm2", 2)])
def test_every_parameter_gets_finite_gradient(method, K):
    model = tiny(method, max_steps=K).train()
    ids, mask = padded_batch("right")
    out = model(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    assert_every_parameter_has_finite_gradient(model)


def test_save_pretrained_roundtrip_and_auto(tmp_path):
    model = tiny("ponderlm2", "gpt_neox", max_steps=2)
    ids, mask = padded_batch("left")
    before = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = PonderForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(ids, attention_mask=mask).logits, before)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, PonderForCausalLM)
    assert torch.equal(auto(ids, attention_mask=mask).logits, before)


def test_tied_embeddings_roundtrip(tmp_path):
    model = tiny("vanilla", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = PonderForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 5))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


# --------------------------------------------------------------------------- 5. generate
@pytest.mark.parametrize("method,K", [("vanilla", 0), ("ponderlm2", 2)])
def test_greedy_generate_equals_sequential_argmax_chain(method, K):
    model = tiny(method, max_steps=K)
    prompt = torch.randint(0, VOCAB, (2, 4))
    out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (2, 10)
    # Independent chain: re-run the full sequence through sequential_logits each step.
    chain = prompt
    for _ in range(6):
        logits, _ = sequential_logits(model, chain)
        chain = torch.cat([chain, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, chain)


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny("vanilla")
    prompt = torch.randint(0, VOCAB, (1, 3))
    a = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0))
    greedy = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, greedy)  # top_k=1 sampling is greedy
    b = model.generate(prompt, max_new_tokens=8, do_sample=True, temperature=2.0,
                       generator=torch.Generator().manual_seed(5))
    c = model.generate(prompt, max_new_tokens=8, do_sample=True, temperature=2.0,
                       generator=torch.Generator().manual_seed(5))
    assert torch.equal(b, c)


# --------------------------------------------------------------------------- config validation and bad input
@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(method="nope"), "unknown method"),
        (dict(method="ponderlm2", max_steps=-1), "max_steps"),
        (dict(hidden_size=30, num_attention_heads=4), "must divide hidden_size"),
        (dict(backbone="gpt2"), "unknown backbone"),
        (dict(method="vanilla", max_steps=2), "vanilla"),
        (dict(method="ponderlm2", max_steps=0), "max_steps >= 1"),
        (dict(tau=1.5), "tau"),
        (dict(method="ponderlm2", max_steps=1, depth_policy="uniform", depth_target=0.5), "adaptive method"),
        (dict(method="ponderlm2", max_steps=1, latent_feedback="raw"), "latent_feedback"),
        (dict(method="looped", max_steps=1, latent_feedback="pre_norm"), "interleaved method"),
        (dict(method="adaponder", max_steps=1, latent_feedback="pre_norm"), "interleaved method"),
    ],
)
def test_config_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PonderConfig(**kwargs)


def test_sequence_longer_than_model_allows_is_rejected():
    model = tiny("vanilla", max_position_embeddings=8)
    ids = torch.randint(0, VOCAB, (1, 9))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sequential_logits(model, ids)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids[:, :4], max_new_tokens=10)
