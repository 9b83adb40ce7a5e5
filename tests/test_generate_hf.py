"""`generate` with Hugging Face options: vanilla against transformers' own Llama generate on the same weights,
adaptive methods against transformers' own generation loops run over our token-by-token reference logits."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import VOCAB, split_tau, tiny_model
from packaging.version import Version
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM
from transformers.generation import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import CausalLMOutputWithPast

from ponderlm import PonderForCausalLM
from ponderlm.inference import sequential_logits

EOS, PAD = 3, 0
# transformers 5.24 changed beam sampling (the sampled candidates are sorted by score before the first num_beams are
# taken as the best); generate owns its beam loop and follows 5.24+ on every release, so on older ones transformers'
# own beam sampling is no reference for it.
SAME_BEAM_SAMPLING = Version(transformers.__version__) >= Version("5.24")


class BoostToken(LogitsProcessor):
    """A user processor: adds a bias to one token (changes the greedy path visibly)."""

    def __init__(self, token: int, bias: float) -> None:
        self.token, self.bias = token, bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.token] += self.bias
        return scores


class StopAfterToken(StoppingCriteria):
    """A user criterion (no eos_token_id attribute): a row is done once its last token is `token`."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        return input_ids[:, -1] == self.token


@pytest.fixture(scope="module")
def llama_pair():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3, bos_token_id=1, eos_token_id=EOS,
                                      pad_token_id=PAD)).eval()
    ours = PonderForCausalLM.from_backbone(hf).eval()
    assert ours.generation_config.eos_token_id == EOS and ours.generation_config.pad_token_id == PAD
    return hf, ours


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts (row 0 has two pads)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, VOCAB, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = PAD, 0
    return ids, mask


def greedy_tokens(model, ids, mask, n=12):
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None)[:, ids.shape[1]:]


def options(ids, mask, greedy):
    """Option sets exercising each HF feature; token choices come from the plain greedy continuation so every
    option changes the output (checked below)."""
    first, second, third = (int(greedy[1, i]) for i in range(3))
    return {
        "greedy": dict(max_new_tokens=10),
        "max_length": dict(max_length=ids.shape[1] + 7),
        "eos": dict(max_new_tokens=10, eos_token_id=third),
        "min_new_tokens": dict(max_new_tokens=10, eos_token_id=third, min_new_tokens=6),
        "bad_words_ids": dict(max_new_tokens=10, bad_words_ids=[[first], [second, third]]),
        "no_repeat_ngram_size": dict(max_new_tokens=14, no_repeat_ngram_size=2),
        "repetition_penalty": dict(max_new_tokens=10, repetition_penalty=1.5),
        "logits_processor": dict(max_new_tokens=10, logits_processor=LogitsProcessorList([BoostToken(7, 4.0)])),
        "stopping_criteria": dict(max_new_tokens=10, eos_token_id=None,
                                  stopping_criteria=StoppingCriteriaList([StopAfterToken(second)])),
        "scores": dict(max_new_tokens=6, return_dict_in_generate=True, output_scores=True, output_logits=True),
        "beams": dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, return_dict_in_generate=True,
                      output_scores=True, output_logits=True),
        "beams_eos": dict(max_new_tokens=8, num_beams=4, eos_token_id=third, length_penalty=0.5,
                          early_stopping=True, return_dict_in_generate=True, output_scores=True),
        "sample": dict(max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=1.3,
                       num_return_sequences=3, return_dict_in_generate=True, output_scores=True),
        "beam_sample": dict(max_new_tokens=6, do_sample=True, num_beams=3, return_dict_in_generate=True,
                            output_scores=True),
    }


def run(model, ids, mask, kwargs, seed=11):
    torch.manual_seed(seed)  # sampling draws from the global generator in both implementations
    return model.generate(ids, attention_mask=mask, **kwargs)


def assert_same(ours, ref, ids, model, name, atol=1e-4):
    sequences = ours.sequences if hasattr(ours, "sequences") else ours
    ref_sequences = ref.sequences if hasattr(ref, "sequences") else ref
    assert torch.equal(sequences, ref_sequences), name
    if not hasattr(ref, "sequences"):
        return
    for field in ("scores", "logits"):
        if getattr(ref, field, None) is not None:
            assert len(getattr(ours, field)) == len(getattr(ref, field)), (name, field)
            for a, b in zip(getattr(ours, field), getattr(ref, field)):
                finite = torch.isfinite(b)
                assert torch.equal(finite, torch.isfinite(a)), (name, field)
                torch.testing.assert_close(a[finite], b[finite], atol=atol, rtol=0)
    if getattr(ref, "sequences_scores", None) is not None:
        torch.testing.assert_close(ours.sequences_scores, ref.sequences_scores, atol=atol, rtol=0)
    if ref.scores is not None:  # transition scores work on our output exactly as on transformers'
        beam_indices = getattr(ref, "beam_indices", None)
        torch.testing.assert_close(
            model.compute_transition_scores(ours.sequences, ours.scores, getattr(ours, "beam_indices", None)),
            model.compute_transition_scores(ref.sequences, ref.scores, beam_indices), atol=atol, rtol=0)
    assert ours.executed_steps.shape == (ours.sequences.shape[0], ours.sequences.shape[1] - 1), name


def test_vanilla_generate_matches_hf_llama_option_by_option(llama_pair, one_thread):
    hf, ours = llama_pair
    ids, mask = prompts()
    greedy = greedy_tokens(ours, ids, mask)
    assert torch.equal(greedy, greedy_tokens(hf, ids, mask))
    outputs = {}
    for name, kwargs in options(ids, mask, greedy).items():
        if name == "beam_sample" and not SAME_BEAM_SAMPLING:
            continue
        ref = run(hf, ids, mask, kwargs)
        out = run(ours, ids, mask, kwargs)
        assert_same(out, ref, ids, hf, name)
        outputs[name] = out.sequences if hasattr(out, "sequences") else out
    # Every option changed the output of plain greedy decoding (so the comparisons above test something).
    plain = outputs["greedy"]
    for name in ("eos", "min_new_tokens", "bad_words_ids", "no_repeat_ngram_size", "repetition_penalty",
                 "logits_processor"):
        other = outputs[name]
        width = min(plain.shape[1], other.shape[1])
        assert not torch.equal(plain[:, :width], other[:, :width]) or plain.shape != other.shape, name
    assert outputs["beams"].shape[0] == 4 and outputs["sample"].shape[0] == 6


class SequentialReference(PonderForCausalLM):
    """transformers' own generation loops, uncached, over our token-by-token reference logits
    (`sequential_logits` of the whole sequence at every step): an independent reference for `generate`."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        logits, _ = sequential_logits(self, input_ids, attention_mask)
        return CausalLMOutputWithPast(logits=logits)

    generate = GenerationMixin.generate


def reference_of(model: PonderForCausalLM) -> SequentialReference:
    ref = SequentialReference(model.config).eval()
    ref.load_state_dict(model.state_dict())
    ref.generation_config = model.generation_config
    return ref


def adaptive_model(method: str):
    if method == "adaponder":  # spread halting gates (tokens halt after pass 1, 2, 3 or never)
        from test_adaponder import mixed

        return mixed(eos_token_id=EOS, pad_token_id=PAD)
    model = tiny_model(method, max_steps=2, eos_token_id=EOS, pad_token_id=PAD)
    model.config.tau = split_tau(model, prompts()[0])  # a threshold that mixes depths on these prompts
    return model


@pytest.mark.parametrize("method", ["ponderlm3", "adaponder"])
def test_adaptive_generate_matches_hf_loops_over_sequential_reference(method, one_thread):
    model = adaptive_model(method)
    ref = reference_of(model)
    ids, mask = prompts()
    greedy = greedy_tokens(model, ids, mask)
    names = ("eos", "min_new_tokens", "bad_words_ids", "no_repeat_ngram_size", "stopping_criteria", "scores",
             "beams", "sample")
    all_options = options(ids, mask, greedy)
    mixed = set()
    for name in names:
        kwargs = dict(all_options[name], return_dict_in_generate=True)
        out = run(model, ids, mask, kwargs)
        expected = run(ref, ids, mask, dict(kwargs, use_cache=False))
        assert_same(out, expected, ids, model, name)
        # Executed steps equal the reference's for every consumed token up to the row's end (EOS padding aside).
        rows = out.sequences.shape[0]
        full_mask = torch.cat([mask.repeat_interleave(rows // ids.shape[0], 0),
                               torch.ones_like(out.sequences[:, ids.shape[1]:])], dim=1)
        _, ref_steps = sequential_logits(model, out.sequences, full_mask)
        eos = kwargs.get("eos_token_id", EOS)
        for r in range(rows):
            new = out.sequences[r, ids.shape[1]:].tolist()
            end = ids.shape[1] + (new.index(eos) + 1 if eos in new else len(new))
            assert torch.equal(out.executed_steps[r, : end - 1], ref_steps[r, : end - 1]), (name, r)
            mixed |= set(out.executed_steps[r, ids.shape[1]: end - 1].tolist())
    assert len(mixed) >= 2, "the test model must mix depths while generating"


def test_beam_search_batch_equals_each_prompt_alone(one_thread):
    """Beams of a left-padded batch (the slot cache reordered per beam) == each prompt searched alone."""
    model = adaptive_model("ponderlm3")
    ids, mask = prompts()
    kwargs = dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, return_dict_in_generate=True,
                  output_scores=True)
    out = model.generate(ids, attention_mask=mask, **kwargs)
    for row in range(ids.shape[0]):
        prompt = ids[row: row + 1, mask[row].bool()]
        alone = model.generate(prompt, **kwargs)
        new = out.sequences[2 * row: 2 * row + 2, ids.shape[1]:]
        assert torch.equal(new[:, : alone.sequences.shape[1] - prompt.shape[1]], alone.sequences[:, prompt.shape[1]:])
        torch.testing.assert_close(out.sequences_scores[2 * row: 2 * row + 2], alone.sequences_scores)
        pads = ids.shape[1] - prompt.shape[1]
        steps = out.executed_steps[2 * row: 2 * row + 2, pads: pads + alone.executed_steps.shape[1]]
        assert torch.equal(steps, alone.executed_steps)


def test_beam_search_keeps_real_early_exit(monkeypatch):
    """Pruned steps are not computed under beam search either: fewer backbone rows than full depth."""
    import importlib

    gen_module = importlib.import_module("ponderlm.inference.generate")
    model = adaptive_model("ponderlm3")
    ids = prompts()[0][1:]
    calls = []
    original = gen_module.new_state

    def counting(*args, **kwargs):
        state = original(*args, **kwargs)
        calls.append(state)
        return state

    monkeypatch.setattr(gen_module, "new_state", counting)
    out = model.generate(ids, max_new_tokens=6, num_beams=3, return_dict_in_generate=True)
    state = calls[0]
    consumed = ids.shape[1] + out.sequences.shape[1] - ids.shape[1] - 1
    full_depth_rows = 3 * consumed * (model.config.max_steps + 1)
    assert 0 < state.rows_computed < full_depth_rows
    assert float(out.executed_steps.mean()) < model.config.max_steps


@pytest.mark.parametrize("kwargs,option", [
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0), "num_beam_groups"),
    (dict(dola_layers="low"), "dola_layers"),
    (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions"),
    (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states"),
    (dict(guidance_scale=2.0), "guidance_scale"),
    (dict(cache_implementation="static"), "cache_implementation"),
    (dict(num_beam=2), "num_beam"),  # a typo: transformers' own check names it
    (dict(synced_gpus=True), "synced_gpus"),
])
def test_options_without_an_implementation_are_named(kwargs, option):
    model = tiny_model("vanilla")
    with pytest.raises(ValueError, match=option):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, **kwargs)


def test_streamer_with_beams_and_inputs_embeds_are_rejected():
    from transformers import TextStreamer

    model = tiny_model("vanilla")
    with pytest.raises(ValueError, match="streamer"):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, num_beams=2, streamer=TextStreamer(None))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model.generate(torch.tensor([[5, 6, 7]]), inputs_embeds=torch.zeros(1, 3, 32), max_new_tokens=3)
