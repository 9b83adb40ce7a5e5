"""Generation on the sequential decode path: real early exit, HF `GenerationConfig` conventions."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ponderlm.inference.sequential import decode_options, new_state

PONDER_OPTIONS = ("tau", "alpha", "depth_policy", "depth_target")


@dataclass
class PonderGenerateOutput:
    sequences: torch.Tensor  # [B, prompt + new]
    executed_steps: torch.Tensor  # [B, prompt + new - 1]: steps spent on each consumed token
    new_tokens: torch.Tensor  # [B, new]


def _logits_processors(cfg: GenerationConfig) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.do_sample:
        if cfg.temperature is not None and cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k is not None and cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer: Any = None,
    stop_strings: list[str] | str | None = None,
    tokenizer: Any = None,
    return_dict_in_generate: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
):
    """Greedy or sampled decoding; every consumed token runs only the steps its method decides.

    Left padding is supported through `attention_mask`. Returns the sequences (prompt + new tokens),
    or a `PonderGenerateOutput` with per-token executed steps if `return_dict_in_generate`.
    """
    if input_ids is None:
        raise ValueError("generate needs input_ids")
    ponder = {k: kwargs.pop(k) for k in PONDER_OPTIONS if k in kwargs}
    kwargs.pop("output_steps", None)
    cfg = copy.deepcopy(generation_config or model.generation_config)
    unused = cfg.update(**kwargs)
    unused = {k: v for k, v in (unused or {}).items() if k not in ("use_cache", "pad_token_id")}
    if unused:
        raise ValueError(f"unknown generate() arguments: {', '.join(sorted(unused))}")
    prompt_len = input_ids.shape[1]
    max_new = cfg.max_new_tokens if cfg.max_new_tokens is not None else max(cfg.max_length - prompt_len, 0)
    if prompt_len + max_new > model.config.max_position_embeddings:
        raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({max_new}) exceeds max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    eos = cfg.eos_token_id
    eos_ids = torch.tensor([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
                           device=input_ids.device)
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (int(eos_ids[0]) if len(eos_ids) else 0)
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    if stops and tokenizer is None:
        raise ValueError("stop_strings needs tokenizer=")
    processors = _logits_processors(cfg)

    was_training = model.training
    model.eval()
    try:
        with decode_options(model, **ponder):
            batch = input_ids.shape[0]
            state = new_state(model, batch, prompt_len + max_new)
            # The prompt in a few parallel passes where the method allows (see PonderMethod.prefill).
            prompt_logits, prompt_steps = model.method.prefill(model, state, input_ids, attention_mask)
            logits = prompt_logits[:, -1]
            steps_log = list(prompt_steps.unbind(1))
            sequences = input_ids
            finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
            if streamer is not None:
                streamer.put(input_ids.cpu())
            for i in range(max_new):
                scores = processors(sequences, logits.float())
                if cfg.do_sample:
                    probs = torch.softmax(scores, dim=-1)
                    next_tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
                else:
                    next_tokens = scores.argmax(dim=-1)
                next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_id), next_tokens)
                sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
                if streamer is not None:
                    streamer.put(next_tokens.cpu())
                if len(eos_ids):
                    finished |= torch.isin(next_tokens, eos_ids)
                if stops:
                    texts = tokenizer.batch_decode(sequences[:, prompt_len:])
                    finished |= torch.tensor([any(s in text for s in stops) for text in texts], device=finished.device)
                if bool(finished.all()) or i == max_new - 1:
                    break
                logits, steps = model.method.decode_token(model, state, next_tokens, ~finished)
                steps_log.append(steps)
    finally:
        model.train(was_training)
    if streamer is not None:
        streamer.end()
    if not return_dict_in_generate:
        return sequences
    steps = torch.stack(steps_log, dim=1) if steps_log else torch.zeros(input_ids.shape[0], 0)
    return PonderGenerateOutput(sequences=sequences, executed_steps=steps, new_tokens=sequences[:, prompt_len:])
