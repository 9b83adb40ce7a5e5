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

from ponderlm.inference import continuous
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


def _choose(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if cfg.do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
    return scores.argmax(dim=-1)


def _generate_per_row(model, state, input_ids, logits, max_new, cfg, processors, eos_ids, pad_id, stops, tokenizer,
                      generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Batched generation with continuous batching (`ponderlm.inference.continuous`): each backbone call
    advances every unfinished row by one slot of its own token, so rows at different depths never wait
    for each other. Returns the padded sequences and the executed steps of each consumed new token."""
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    rows_new: list[list[int]] = [[] for _ in range(batch)]
    rows_steps: list[list[float]] = [[] for _ in range(batch)]
    open_rows = torch.ones(batch, dtype=torch.bool, device=device)

    def emit(row: int, row_logits: torch.Tensor) -> int | None:
        """Pick row's next token; return it if the row must consume it (not finished), else None."""
        seq = torch.cat([input_ids[row], torch.tensor(rows_new[row], dtype=input_ids.dtype, device=device)])
        token = int(_choose(processors(seq[None], row_logits[None].float()), cfg, generator)[0])
        rows_new[row].append(token)
        done = len(rows_new[row]) >= max_new or (len(eos_ids) and token in eos_ids.tolist())
        if stops and not done:
            done = any(stop in tokenizer.decode(rows_new[row]) for stop in stops)
        return None if done else token

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
            model.method.row_start(model, state, tokens, rows)

    if max_new > 0:
        start([(row, logits[row]) for row in range(batch)])
        while bool(open_rows.any()):
            done, done_logits, steps = continuous.run_row_slots(model, state)
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
    return torch.cat([input_ids, new], dim=1), list(steps_out.unbind(1))


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
            if streamer is not None:
                streamer.put(input_ids.cpu())
            sequences = input_ids
            if batch > 1 and streamer is None and continuous.supports(model):
                # Rows of different depths: continuous batching instead of the lockstep loop below.
                sequences, row_steps = _generate_per_row(model, state, input_ids, logits, max_new, cfg, processors,
                                                         eos_ids, pad_id, stops, tokenizer, generator)
                steps_log += row_steps
                max_new = 0
            finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
            for i in range(max_new):
                next_tokens = _choose(processors(sequences, logits.float()), cfg, generator)
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
