"""The token-by-token, KV-cached reference path: exactly what decoding executes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ponderlm.methods.base import DecodeState, PonderMethod
from ponderlm.methods.options import DecodeOptions


def decode_options(model, options: DecodeOptions | None = None, **knobs: Any) -> DecodeOptions:
    """The knob values to decode `model` with: its saved ones (or `options`) with `knobs` overridden (None keeps
    a value; the names are the knobs the methods declare, e.g. tau, alpha, depth_policy), validated by the
    declarations. The config itself is never changed."""
    return DecodeOptions.resolve(model.config, options, **knobs)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """The model in eval mode for a block; its train / eval mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def new_state(model, batch_size: int, num_tokens: int, trace: bool = False,
              options: DecodeOptions | None = None) -> DecodeState:  # options: the knob values, None: the saved
    param = next(model.parameters())
    state = model.method.new_decode_state(
        model.backbone, batch_size, model.method.decode_capacity(num_tokens), param.device, param.dtype, options
    )
    if trace:
        state.slot_trace = []
    return state


@torch.no_grad()
def sequential_logits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    options: DecodeOptions | None = None,
    return_state: bool = False,
    trace: bool = False,
    **knobs: Any,
):
    """Run `model` token by token through its KV-cached decode path, with `options` / `knobs` (tau=, alpha=, ...:
    see `decode_options`).

    Returns (logits [B,T,V], executed_steps [B,T]) — and the final `DecodeState` if `return_state`
    (cache, backbone call count, per-token slot states when `trace`). Padding (attention_mask == 0)
    may be on either side; padded positions produce unspecified logits and 0 steps.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > model.config.max_position_embeddings:
        raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    options = decode_options(model, options, **knobs)
    with eval_mode(model):
        batch, length = input_ids.shape
        state = new_state(model, batch, length, trace=trace, options=options)
        # The base class's prefill is exactly one `decode_token` call per token (never a method's
        # parallel override): this function is the reference the parallel paths are tested against.
        logits, steps = PonderMethod.prefill(model.method, model.backbone, state, input_ids, attention_mask)
    if return_state:
        return logits, steps, state
    return logits, steps
