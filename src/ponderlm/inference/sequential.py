"""The token-by-token, KV-cached reference path: exactly what decoding executes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ponderlm.methods.base import DecodeState, PonderMethod
from ponderlm.methods.options import DecodeOptions, current, scope


@contextmanager
def decode_options(model, **options) -> Iterator[DecodeOptions]:
    """Decode `model` in eval mode with inference options overridden (tau, alpha, depth_policy, depth_target,
    depth_seed, jacobi_iters_eval; None keeps the saved value). Validated once; the config itself is never
    changed, so scopes nest and concurrent threads / tasks do not see each other's options. The model's
    train / eval mode is restored on exit."""
    resolved = current(model.config).replace(model.config, **options)
    was_training = model.training
    model.eval()
    try:
        with scope(model.config, resolved):
            yield resolved
    finally:
        model.train(was_training)


def new_state(model, batch_size: int, num_tokens: int, trace: bool = False) -> DecodeState:
    param = next(model.parameters())
    state = model.method.new_decode_state(
        model.backbone, batch_size, model.method.decode_capacity(num_tokens), param.device, param.dtype
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
    tau: float | None = None,
    alpha: float | None = None,
    depth_policy: str | None = None,
    depth_target: float | None = None,
    return_state: bool = False,
    trace: bool = False,
):
    """Run `model` token by token through its KV-cached decode path.

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
    with decode_options(model, tau=tau, alpha=alpha, depth_policy=depth_policy, depth_target=depth_target):
        batch, length = input_ids.shape
        state = new_state(model, batch, length, trace=trace)
        # The base class's prefill is exactly one `decode_token` call per token (never a method's
        # parallel override): this function is the reference the parallel paths are tested against.
        logits, steps = PonderMethod.prefill(model.method, model.backbone, state, input_ids, attention_mask)
    if return_state:
        return logits, steps, state
    return logits, steps
