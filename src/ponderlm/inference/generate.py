"""Generation on the sequential decode path: real early exit with Hugging Face `generate` semantics.

`generate` hands the call to transformers' own `GenerationMixin.generate` with a custom decoding loop
(`custom_generate=`): transformers merges the generation config with the kwargs (and rejects typos), expands
the batch for beams / num_return_sequences, and builds the logits processors and stopping criteria exactly as
for a Llama (min_new_tokens, bad_words_ids, no_repeat_ngram_size, repetition penalty, temperature / top-k /
top-p, max_length, EOS, max_time, and the user's `logits_processor` / `stopping_criteria`). Only the model
calls differ: every consumed token runs on the KV-cached sequential path, computing only executed steps.

- greedy / sampling: `_sample`, step for step as transformers' `_sample` (lockstep over the batch);
- batches of adaptive methods with row-wise options only: continuous batching (`_generate_per_row`);
- beam search and beam sampling: `_beam_search`, transformers' vectorised beam search written out here (only
  public transformers API is used), with the slot cache reordered per beam (`DecodeState.reorder`).
Whatever this path cannot honour raises a ValueError naming the option; nothing is silently ignored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

# Public transformers API only (tests/test_generate_api.py checks it): private helpers change between releases.
from transformers import GenerationConfig, GenerationMixin
from transformers.generation import (
    GenerateBeamDecoderOnlyOutput,
    GenerateDecoderOnlyOutput,
    GenerationMode,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from ponderlm.inference.sequential import decode_options, eval_mode, new_state
from ponderlm.methods.options import DecodeOptions, knob_table


def _special_tokens(cfg: GenerationConfig, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(pad, eos [n]) as transformers resolves them for a decoder-only model: eos as a 1-D tensor, pad defaulting
    to the first eos. Read from the public config fields (the prepared config's tensor copies are private)."""
    eos = cfg.eos_token_id
    eos = None if eos is None else torch.as_tensor(eos, dtype=torch.long, device=device).view(-1)
    if cfg.pad_token_id is not None:
        return torch.as_tensor(cfg.pad_token_id, dtype=torch.long, device=device), eos
    return (eos[0] if eos is not None else None), eos


def _choose(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if cfg.do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
    return scores.argmax(dim=-1)


@dataclass
class PonderGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` (sequences, scores, logits) plus the executed steps of every consumed token.

    executed_steps [B, prompt + new - 1]: additional steps run when each token was consumed (the last token is
    never consumed; 0 at padding and after a row finished). new_tokens [B, new]: the generated part."""

    executed_steps: torch.Tensor | None = None
    new_tokens: torch.Tensor | None = None


@dataclass
class PonderGenerateBeamOutput(GenerateBeamDecoderOnlyOutput):
    """`GenerateBeamDecoderOnlyOutput` (sequences, sequences_scores, scores, logits, beam_indices) plus the
    executed steps along each returned beam's own history (same layout as `PonderGenerateOutput`)."""

    executed_steps: torch.Tensor | None = None
    new_tokens: torch.Tensor | None = None


# Generation modes run here, and the options that select the others (named in the error).
SUPPORTED_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH,
                   GenerationMode.BEAM_SAMPLE)
MODE_OPTIONS = {
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha (contrastive search)",
    GenerationMode.ASSISTED_GENERATION: "assistant_model / prompt_lookup_num_tokens (assisted generation)",
    GenerationMode.DOLA_GENERATION: "dola_layers (DoLa decoding)",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constraints / force_words_ids (constrained beam search)",
    GenerationMode.GROUP_BEAM_SEARCH: "num_beam_groups / diversity_penalty (group beam search)",
}
# generate() arguments the sequential path cannot honour.
UNSUPPORTED_ARGS = {
    "inputs_embeds": "generation starts from token ids",
    "past_key_values": "the slot KV cache is built by generate itself",
    "cache": "the slot KV cache is built by generate itself",
    "assistant_model": "assisted generation would run the model in parallel over draft tokens",
    "negative_prompt_ids": "classifier-free guidance is not supported",
    "negative_prompt_attention_mask": "classifier-free guidance is not supported",
    "custom_generate": "generate already runs its own decoding loop",
}


def _unsupported_config(cfg: GenerationConfig, model_kwargs: dict[str, Any]) -> str | None:
    """The first option of a prepared generation config / model kwargs that this path would otherwise ignore."""
    mode = cfg.get_generation_mode()
    if mode not in SUPPORTED_MODES:
        return MODE_OPTIONS.get(mode, mode.value)
    checks = {
        "output_attentions": bool(cfg.output_attentions or model_kwargs.get("output_attentions")),
        "output_hidden_states": bool(cfg.output_hidden_states or model_kwargs.get("output_hidden_states")),
        "guidance_scale": cfg.guidance_scale is not None and cfg.guidance_scale != 1.0,
        "token_healing": bool(cfg.token_healing),
        "low_memory": bool(cfg.low_memory),
        "cache_implementation": cfg.cache_implementation is not None,
    }
    return next((name for name, bad in checks.items() if bad), None)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer: Any = None,
    stop_strings: list[str] | str | None = None,
    tokenizer: Any = None,
    return_dict_in_generate: bool | None = None,
    generator: torch.Generator | None = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    **kwargs: Any,
):
    """Hugging Face `generate` on the sequential decode path: every consumed token runs only the steps its
    method decides (real early exit).

    Accepts what `GenerationMixin.generate` accepts for a decoder-only LM — a `GenerationConfig` and/or its
    fields as kwargs (greedy, sampling, beam search and beam sampling, num_return_sequences, min_new_tokens,
    bad_words_ids, no_repeat_ngram_size, repetition_penalty, max_time, ...), `logits_processor`,
    `stopping_criteria`, `prefix_allowed_tokens_fn`, `streamer` — plus the knobs the methods declare (tau=, alpha=,
    depth_policy=, ...) or `decode_options=` (a `DecodeOptions`), `stop_strings` with `tokenizer`, and a `generator`
    for sampling. Options it cannot honour
    raise a ValueError naming them. Returns the sequences (prompt + new tokens), or with
    `return_dict_in_generate` a `PonderGenerateOutput` / `PonderGenerateBeamOutput` that also carries
    `executed_steps` (so `model.compute_transition_scores` works as for any HF model).
    """
    input_ids = input_ids if input_ids is not None else kwargs.pop("inputs", None)
    if input_ids is None:
        raise ValueError("generate needs input_ids")
    for name, why in UNSUPPORTED_ARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"generate: {name} is not supported by PonderForCausalLM ({why})")
    if kwargs.get("synced_gpus"):
        raise ValueError("generate: synced_gpus is not supported by PonderForCausalLM (single-process decoding)")
    kwargs.pop("synced_gpus", None)
    num_beams = kwargs.get("num_beams") or getattr(generation_config or model.generation_config, "num_beams", 1) or 1
    if streamer is not None and num_beams > 1:  # checked before transformers streams the expanded prompt
        raise ValueError("generate: streamer cannot be used with beam search (num_beams > 1), as in transformers")
    options = decode_options(model, kwargs.pop("decode_options", None),
                             **{k: kwargs.pop(k) for k in knob_table() if k in kwargs})
    kwargs.pop("output_steps", None)  # steps are always in the dict output
    if return_dict_in_generate is not None:
        kwargs["return_dict_in_generate"] = return_dict_in_generate
    # Stop strings are checked on the decoded new text (any tokenizer works); transformers would look for the
    # tokenizer where a custom loop does not pass it.
    stops = stop_strings if stop_strings is not None else kwargs.pop("stop_strings", None)
    if generation_config is not None and generation_config.stop_strings is not None:
        generation_config = copy.deepcopy(generation_config)
        stops = stops if stops is not None else generation_config.stop_strings
        generation_config.stop_strings = None
    stops = [stops] if isinstance(stops, str) else list(stops or [])
    if stops and tokenizer is None:
        raise ValueError("stop_strings needs tokenizer=")
    criteria = StoppingCriteriaList(stopping_criteria or [])
    if stops:
        criteria.append(StopStringsInNewText(tokenizer, stops, input_ids.shape[1]))
    custom_lists = bool(logits_processor) or bool(stopping_criteria) or kwargs.get("prefix_allowed_tokens_fn")

    def decode_loop(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    **model_kwargs):
        return _decode(model, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs,
                       streamer=streamer, generator=generator, row_wise=not custom_lists and not stops, options=options)

    with eval_mode(model):
        # transformers prepares the config, the expanded batch, the processors and the stopping criteria
        # exactly as for any causal LM, then runs `decode_loop` instead of its own loops.
        return GenerationMixin.generate(
            model, input_ids, generation_config=generation_config, logits_processor=logits_processor,
            stopping_criteria=criteria, streamer=streamer, custom_generate=decode_loop,
            attention_mask=attention_mask, **kwargs)


class StopStringsInNewText(StoppingCriteria):
    """Finished once the decoded generated text (after the prompt) contains one of `stops`."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:])
        return torch.tensor([any(s in text for s in self.stops) for text in texts], device=input_ids.device)


def _decode(model, input_ids: torch.Tensor, processors: LogitsProcessorList, criteria: StoppingCriteriaList,
            cfg: GenerationConfig, model_kwargs: dict[str, Any], *, streamer: Any, generator: torch.Generator | None,
            row_wise: bool, options: DecodeOptions):
    """The decoding loop `GenerationMixin.generate` calls with its prepared batch, config, processors and criteria."""
    attention_mask = model_kwargs.pop("attention_mask", None)
    for ignored in ("cache", "past_key_values", "use_cache"):  # HF's own cache is never used; results are equal
        model_kwargs.pop(ignored, None)
    bad = _unsupported_config(cfg, model_kwargs)
    if bad is None and model_kwargs:
        bad = sorted(model_kwargs)[0]
    if bad is not None:
        raise ValueError(f"generate: {bad} is not supported by PonderForCausalLM")
    beams = cfg.num_beams > 1
    if beams and cfg.do_sample and generator is not None:
        raise ValueError("generate: generator= is not supported with beam sampling; seed with torch.manual_seed")
    batch, prompt_len = input_ids.shape
    if cfg.max_length > model.config.max_position_embeddings:
        raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({cfg.max_length - prompt_len}) exceeds "
                         f"max_position_embeddings ({model.config.max_position_embeddings})")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    state = new_state(model, batch, cfg.max_length, options=options)
    # The prompt in a few parallel passes where the method allows (see PonderMethod.prefill).
    prompt_logits, prompt_steps = model.method.prefill(model.backbone, state, input_ids, attention_mask)
    logits = prompt_logits[:, -1]
    if beams:
        return _beam_search(model, state, input_ids, logits, prompt_steps, processors, criteria, cfg)
    has_eos = any(hasattr(c, "eos_token_id") for c in criteria)
    per_row = (row_wise and batch > 1 and streamer is None and model.method.supports_row_schedule
               and cfg.max_time is None and cfg.watermarking_config is None
               and not (cfg.return_dict_in_generate and (cfg.output_scores or cfg.output_logits)))
    if per_row:
        # Rows of different depths: continuous batching instead of the lockstep loop.
        sequences, new_steps = _generate_per_row(model, state, input_ids, logits, processors, criteria, cfg,
                                                 generator)
        scores = raw = None
        steps = torch.cat([prompt_steps, new_steps], dim=1)
    else:
        sequences, scores, raw, steps_log = _sample(model, state, input_ids, logits, processors, criteria, cfg,
                                                    has_eos, streamer, generator)
        steps = torch.cat([prompt_steps, *[s[:, None] for s in steps_log]], dim=1)
    if streamer is not None:
        streamer.end()
    if not cfg.return_dict_in_generate:
        return sequences
    return PonderGenerateOutput(sequences=sequences, scores=scores, logits=raw, executed_steps=steps.float(),
                                new_tokens=sequences[:, prompt_len:])


def _sample(model, state, input_ids, logits, processors, criteria, cfg, has_eos, streamer, generator):
    """Greedy or multinomial sampling in lockstep, step for step as `GenerationMixin._sample`."""
    pad, _ = _special_tokens(cfg, input_ids.device)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    scores = () if (cfg.return_dict_in_generate and cfg.output_scores) else None
    raw = () if (cfg.return_dict_in_generate and cfg.output_logits) else None
    sequences, steps_log = input_ids, []
    while True:
        next_logits = logits.float()
        next_scores = processors(sequences, next_logits)
        if scores is not None:
            scores += (next_scores,)
        if raw is not None:
            raw += (next_logits,)
        tokens = _choose(next_scores, cfg, generator)
        if has_eos:  # finished rows only receive padding
            tokens = torch.where(unfinished, tokens, pad.to(tokens.dtype))
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~criteria(sequences, scores).to(unfinished.device)
        if not bool(unfinished.any()):
            break
        # Rows padded after their EOS are not computed. Without an EOS criterion transformers keeps generating
        # real tokens for rows another criterion stopped, and so does this loop.
        valid = unfinished if has_eos else torch.ones_like(unfinished)
        logits, steps = model.method.decode_token(model.backbone, state, tokens, valid)
        steps_log.append(steps)
    return sequences, scores, raw, steps_log


def _generate_per_row(model, state, input_ids, logits, processors, criteria, cfg, generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched generation with continuous batching (`PonderMethod.step_rows`): each backbone call
    advances every unfinished row by one slot of its own token, so rows at different depths never wait
    for each other. Processors and stopping criteria (row-wise ones only) run per row. Returns the padded
    sequences and the executed steps [B, new - 1] of each consumed new token."""
    batch = input_ids.shape[0]
    device = input_ids.device
    pad, _ = _special_tokens(cfg, device)
    pad_id = int(pad) if pad is not None else 0
    rows_new: list[list[int]] = [[] for _ in range(batch)]
    rows_steps: list[list[float]] = [[] for _ in range(batch)]
    open_rows = torch.ones(batch, dtype=torch.bool, device=device)

    def emit(row: int, row_logits: torch.Tensor) -> int | None:
        """Pick row's next token; return it if the row must consume it (not finished), else None."""
        seq = torch.cat([input_ids[row], torch.tensor(rows_new[row], dtype=input_ids.dtype, device=device)])
        token = int(_choose(processors(seq[None], row_logits[None].float()), cfg, generator)[0])
        rows_new[row].append(token)
        seq = torch.cat([seq, seq.new_tensor([token])])
        return None if bool(criteria(seq[None], None)[0]) else token

    def start(candidates: list[tuple[int, torch.Tensor]]) -> None:
        tokens = torch.full((batch,), pad_id, dtype=input_ids.dtype, device=device)
        rows = torch.zeros(batch, dtype=torch.bool, device=device)
        for row, row_logits in candidates:
            token = emit(row, row_logits)
            if token is None:
                open_rows[row] = False
            else:
                tokens[row], rows[row] = token, True
        if bool(rows.any()):
            model.method.row_start(model.backbone, state, tokens, rows)

    start([(row, logits[row]) for row in range(batch)])
    while bool(open_rows.any()):
        done, done_logits, steps = model.method.step_rows(model.backbone, state)
        finished = done.nonzero()[:, 0].tolist()
        for row in finished:
            rows_steps[row].append(float(steps[row]))
        start([(row, done_logits[row]) for row in finished])
    width = max(len(r) for r in rows_new)
    new = torch.full((batch, width), pad_id, dtype=input_ids.dtype, device=device)
    steps_out = torch.zeros(batch, max(width - 1, 0), device=device)
    for row in range(batch):
        new[row, : len(rows_new[row])] = torch.tensor(rows_new[row], dtype=input_ids.dtype)
        steps_out[row, : len(rows_steps[row])] = torch.tensor(rows_steps[row])
    return torch.cat([input_ids, new], dim=1), steps_out


def _beam_search(model, state, input_ids, logits, prompt_steps, processors, criteria, cfg):
    """Beam search / beam sampling with transformers' semantics (the vectorised `GenerationMixin._beam_search`:
    the same candidates, scores, length penalty, early-stopping heuristic and outputs), written out here so only
    public transformers API is used. The model step is one sequential `decode_token` per beam, and the slot cache
    follows the beams (`DecodeState.reorder`).

    Per prompt it keeps `num_beams` running beams (scores are summed log-probabilities) and the `num_beams` best
    finished ones (scores divided by length ** length_penalty). Each step takes the best `beams_to_keep`
    continuations over all beams x vocabulary (sampled without replacement for beam sampling); those that hit a
    stopping criterion may become finished beams (only among the top `num_beams`), the best others run on."""
    pad_token_id, eos_token_id = _special_tokens(cfg, input_ids.device)
    num_beams, num_return, max_length = cfg.num_beams, cfg.num_return_sequences, cfg.max_length
    early_stopping, length_penalty, do_sample = cfg.early_stopping, cfg.length_penalty, cfg.do_sample
    flat, cur_len = input_ids.shape
    batch = flat // num_beams
    prompt_len = cur_len
    device = input_ids.device
    # Enough candidates that num_beams of them are still running even if the best ones all end in an EOS.
    n_eos = eos_token_id.shape[0] if eos_token_id is not None else 0
    beams_to_keep = max(2, 1 + n_eos) * num_beams
    top_num_beam_mask = torch.cat((torch.ones(num_beams, dtype=torch.bool),
                                   torch.zeros(beams_to_keep - num_beams, dtype=torch.bool))).to(device)
    all_scores = () if (cfg.return_dict_in_generate and cfg.output_scores) else None
    raw_logits = () if (cfg.return_dict_in_generate and cfg.output_logits) else None

    fill = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1  # (sic) as transformers
    running_sequences = torch.full((batch, num_beams, max_length), fill_value=fill, dtype=torch.int64, device=device)
    running_sequences[:, :, :cur_len] = _unflatten(input_ids, batch, num_beams)
    sequences = running_sequences.detach().clone()
    running_beam_scores = torch.zeros((batch, num_beams), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9  # only the first beam's continuations are candidates at the first step
    beam_scores = torch.full((batch, num_beams), fill_value=-1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((batch, num_beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)  # the early-stop heuristic not yet met
    # beam_indices[b, j, i]: the flat running beam that new token i of beam j extended.
    running_beam_indices = torch.full((batch, num_beams, max_length - cur_len), fill_value=-1, dtype=torch.int32,
                                      device=device)
    beam_indices = running_beam_indices.detach().clone()
    flat_running_sequences = input_ids
    steps_log: list[torch.Tensor] = []  # per decode call: steps [flat] in that call's beam layout
    valid = torch.ones(flat, dtype=torch.bool, device=device)
    vocab = logits.shape[-1]

    while True:
        logits = logits.float()
        log_probs = processors(flat_running_sequences, torch.nn.functional.log_softmax(logits, dim=-1))
        if raw_logits is not None:
            raw_logits += (logits.clone(),)
        if all_scores is not None:
            all_scores += (log_probs.clone(),)
        log_probs = _unflatten(log_probs, batch, num_beams) + running_beam_scores[:, :, None]
        log_probs = torch.reshape(log_probs, (batch, -1))

        # The best (or sampled) `beams_to_keep` continuations of each prompt over all its beams.
        if do_sample:
            topk_indices = torch.multinomial(torch.softmax(log_probs, dim=-1), num_samples=beams_to_keep)
            topk_log_probs = torch.gather(log_probs, dim=1, index=topk_indices)
            topk_log_probs, order = topk_log_probs.sort(dim=-1, descending=True)
            topk_indices = topk_indices.gather(dim=-1, index=order)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)
        topk_beams = topk_indices // vocab
        topk_running_beam_indices = _gather_beams(running_beam_indices, topk_beams)
        topk_running_sequences = _gather_beams(running_sequences, topk_beams)
        topk_running_sequences[:, :, cur_len] = topk_indices % vocab
        batch_offset = torch.arange(batch, device=device).view(-1, 1) * num_beams
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beams + batch_offset
        hits = criteria(_flatten(topk_running_sequences[:, :, : cur_len + 1]), all_scores)
        hits = _unflatten(hits, batch, beams_to_keep)

        # Running beams for the next step: the best continuations that did not just finish.
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=num_beams)[1]
        running_sequences = _gather_beams(topk_running_sequences, next_topk)
        running_beam_scores = _gather_beams(topk_running_log_probs, next_topk)
        running_beam_indices = _gather_beams(topk_running_beam_indices, next_topk)

        # Finished beams: merge the ones that just finished among the top num_beams (length-penalised) with the
        # finished ones so far, unless the prompt is complete (early_stopping=True) or cannot improve any more.
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1 - prompt_len) ** length_penalty)
        full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores = finished_scores + full.to(torch.float32) * -1.0e9
        finished_scores = finished_scores + (~improvable).to(torch.float32) * -1.0e9
        finished_scores = finished_scores + (~just_finished) * -1.0e9
        merged_scores = torch.cat((beam_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=num_beams)[1]
        sequences = _gather_beams(torch.cat((sequences, topk_running_sequences), dim=1), best)
        beam_scores = _gather_beams(merged_scores, best)
        beam_indices = _gather_beams(torch.cat((beam_indices, topk_running_beam_indices), dim=1), best)
        is_sent_finished = _gather_beams(torch.cat((is_sent_finished, just_finished), dim=1), best)

        # Each surviving beam continues the slot cache of the beam it extends.
        state.reorder(_flatten(running_beam_indices[..., cur_len - prompt_len]).long())
        cur_len += 1
        improvable = improvable & _can_improve(running_beam_scores, beam_scores, is_sent_finished, cur_len,
                                               max_length, prompt_len, early_stopping, length_penalty)
        exists_open_beam = ~(torch.all(is_sent_finished) & (early_stopping is True))
        if not bool(torch.any(improvable) & exists_open_beam & ~torch.all(hits)):
            break
        flat_running_sequences = _flatten(running_sequences[:, :, :cur_len])
        logits, steps = model.method.decode_token(model.backbone, state, flat_running_sequences[:, -1], valid)
        steps_log.append(steps)

    sequences = _flatten(sequences[:, :num_return, :])
    beam_scores = _flatten(beam_scores[:, :num_return])
    beam_indices = _flatten(beam_indices[:, :num_return, :])
    max_generated = int(((beam_indices + 1).bool()).sum(dim=1).max())
    sequences = sequences[:, : prompt_len + max_generated]
    beam_indices = beam_indices[:, :max_generated]
    if not cfg.return_dict_in_generate:
        return sequences
    steps = _beam_steps(prompt_steps, steps_log, beam_indices, num_beams, num_return)
    return PonderGenerateBeamOutput(
        sequences=sequences, sequences_scores=beam_scores if cfg.output_scores else None, scores=all_scores,
        logits=raw_logits, beam_indices=beam_indices, executed_steps=steps, new_tokens=sequences[:, prompt_len:])


def _can_improve(running_beam_scores: torch.Tensor, beam_scores: torch.Tensor, is_sent_finished: torch.Tensor,
                 cur_len: int, max_length: int, prompt_len: int, early_stopping: bool | str,
                 length_penalty: float) -> torch.Tensor:
    """[batch, 1]: whether the best running beam could still beat the worst finished one (transformers' heuristic:
    the best running score at the current length, or at max_length for early_stopping="never" with a positive
    length penalty)."""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_length - prompt_len
    else:
        best_length = cur_len - prompt_len
    best_running = running_beam_scores[:, :1] / (best_length ** length_penalty)
    worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
    return torch.any(best_running > worst_finished, dim=-1, keepdim=True)


def _flatten(tensor: torch.Tensor) -> torch.Tensor:
    """[batch, beams, ...] -> [batch * beams, ...]"""
    return tensor.reshape(tensor.shape[0] * tensor.shape[1], *tensor.shape[2:])


def _unflatten(tensor: torch.Tensor, batch: int, beams: int) -> torch.Tensor:
    """[batch * beams, ...] -> [batch, beams, ...]"""
    return tensor.reshape(batch, beams, *tensor.shape[1:])


def _gather_beams(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor [batch, beams, ...] at beams `indices` [batch, k] -> [batch, k, ...]"""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)


def _beam_steps(prompt_steps: torch.Tensor, steps_log: list[torch.Tensor], beam_indices: torch.Tensor,
                num_beams: int, num_return: int) -> torch.Tensor:
    """Executed steps along each returned beam's history: new token j-1 was consumed by the decode call that
    produced token j, in the running beam `beam_indices[:, j]` of that call's layout."""
    rows = beam_indices.shape[0]
    item_row = torch.arange(rows, device=beam_indices.device) // num_return * num_beams  # same prompt per item
    new = torch.zeros(rows, max(beam_indices.shape[1] - 1, 0), device=prompt_steps.device)
    for j in range(1, beam_indices.shape[1]):
        index = beam_indices[:, j].long()
        new[:, j - 1] = torch.where(index >= 0, steps_log[j - 1][index.clamp(min=0)].float(), 0.0)
    return torch.cat([prompt_steps[item_row].float(), new], dim=1)
