"""Solver convergence: RMSE of the parallel solution to the sequential (decode) solution, per sweep."""

from __future__ import annotations

import torch

from ponderlm.inference.sequential import decode_options, eval_mode, sequential_logits


@torch.no_grad()
def jacobi_rmse(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_sweeps: int = 8
) -> list[float]:
    """RMSE between slot hidden states after each sweep of the method's parallel solver (`solver_trace`: PonderLM-2's
    Jacobi sweeps) and the token-by-token decode.

    Entry 0 is after stage building (no sweep), entry r after r sweeps. The reference is the sequential path, so
    this is an independent check of the parallel solver, not a comparison with itself. Both run every token at
    full depth (the method's constant fixed-depth control, if it decides depths).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    options = decode_options(model, **(model.method.fixed_depth_knobs("constant", model.config.max_steps) or {}))
    if model.method.solver_trace is None:
        raise ValueError(f"method {model.config.method!r} has no iterative parallel solver")
    with eval_mode(model):
        trace = model.method.solver_trace(model.backbone, input_ids, attention_mask, max_sweeps, options)
    _, _, state = sequential_logits(model, input_ids, attention_mask, options=options, return_state=True, trace=True)
    reference = torch.stack(state.slot_trace, dim=1)  # [B,T,K+1,D]
    valid = attention_mask.bool()
    return [float(((h - reference)[valid] ** 2).mean().sqrt()) for h in trace]
