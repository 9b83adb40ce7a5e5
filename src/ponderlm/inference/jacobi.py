"""Jacobi convergence: RMSE of the parallel solution to the sequential (decode) solution, per sweep."""

from __future__ import annotations

import torch

from ponderlm.inference.sequential import decode_options, sequential_logits


@torch.no_grad()
def jacobi_rmse(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_sweeps: int = 8
) -> list[float]:
    """RMSE between slot hidden states after each Jacobi sweep and the token-by-token decode.

    Entry 0 is after stage building (no sweep), entry r after r sweeps. Only methods with a Jacobi
    solver (ponderlm2, ponderlm3) are supported. The reference is the sequential path, so this is
    an independent check of the parallel solver, not a comparison with itself.
    """
    method = model.method
    if not hasattr(method, "jacobi"):
        raise ValueError(f"method {model.config.method!r} has no Jacobi solver")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _, _, state = sequential_logits(model, input_ids, attention_mask, tau=0.0, alpha=0.0, return_state=True,
                                    trace=True)
    reference = torch.stack(state.slot_trace, dim=1)  # [B,T,K+1,D]
    trace: list[torch.Tensor] = []
    # tau = 0 and alpha = 0 so the parallel solve keeps every slot, like the traced decode above.
    with decode_options(model, tau=0.0, alpha=0.0):
        method.jacobi(model.backbone, input_ids, attention_mask, max_sweeps, trace=trace)
    valid = attention_mask.bool()
    return [float(((h - reference)[valid] ** 2).mean().sqrt()) for h in trace]

