"""`forward` options of transformers' causal LMs: supported as a Llama supports them (compared with transformers'
own `LlamaForCausalLM` on the same weights) or refused with a one-line ValueError naming the option."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, padded_batch, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from ponderlm import PonderForCausalLM


@pytest.fixture(scope="module")
def llama_pair() -> tuple[LlamaForCausalLM, PonderForCausalLM]:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.2)).eval()
    return hf, PonderForCausalLM.from_backbone(hf).eval()


def test_hidden_states_equal_the_llamas_layer_by_layer(llama_pair):
    hf, ours = llama_pair
    ids, mask = padded_batch("none")
    ref = hf(ids, output_hidden_states=True).hidden_states
    out = ours(ids, output_hidden_states=True).hidden_states
    assert len(out) == len(ref) == hf.config.num_hidden_layers + 1
    for layer, (a, b) in enumerate(zip(out, ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"hidden_states[{layer}]")
    # The config's default is honoured as for any HF model.
    ours.config.output_hidden_states = True
    try:
        assert len(ours(ids).hidden_states) == len(ref)
    finally:
        ours.config.output_hidden_states = False
    assert ours(ids).hidden_states is None


def test_hidden_states_are_refused_for_pondering_methods():
    model = tiny_model("ponderlm3", max_steps=2)
    ids, _ = padded_batch("none")
    with pytest.raises(ValueError, match="output_hidden_states") as error:
        model(ids, output_hidden_states=True)
    assert "\n" not in str(error.value)


def test_return_dict_false_returns_the_llamas_tuple_layout(llama_pair):
    hf, ours = llama_pair
    ids, mask = padded_batch("right")
    labels = ids.masked_fill(mask == 0, -100)
    ref = hf(ids, attention_mask=mask, labels=labels, return_dict=False)
    out = ours(ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-4)  # loss first, then logits, as transformers
    valid = mask.bool()
    torch.testing.assert_close(out[1][valid], ref[1][valid], atol=1e-4, rtol=1e-4)
    assert isinstance(ours(ids, return_dict=False)[0], torch.Tensor)  # without labels: logits first
    torch.testing.assert_close(ours(ids, return_dict=False)[0], hf(ids, return_dict=False)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs,option", [
    (dict(output_attentions=True), "output_attentions"),
    (dict(use_cache=True), "use_cache"),
    (dict(inputs_embeds=torch.zeros(1, 3, 32)), "inputs_embeds"),
    (dict(past_key_values=object()), "past_key_values"),
    (dict(position_ids=torch.arange(3)[None]), "position_ids"),
    (dict(logits_to_keep=1), "logits_to_keep"),
])
def test_unsupported_options_are_named(kwargs, option):
    model = tiny_model("vanilla")
    with pytest.raises(ValueError, match=option) as error:
        model(torch.tensor([[5, 6, 7]]), **kwargs)
    assert "\n" not in str(error.value)


def test_defaults_transformers_passes_are_accepted():
    model = tiny_model("vanilla")
    ids = torch.tensor([[5, 6, 7]])
    expected = model(ids).logits
    out = model(ids, use_cache=False, output_attentions=False, position_ids=None, past_key_values=None,
                cache_position=None, logits_to_keep=0, return_dict=True)
    torch.testing.assert_close(out.logits, expected)
