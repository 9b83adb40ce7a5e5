"""Continuous batching of mixed per-token depths: every backbone call advances each row by one slot.

Lockstep decoding (`decode_token`) runs a token's step k whenever *any* row of the batch needs it,
computing only the rows that do. That saves FLOPs but not calls, and at small and medium sizes a
call's fixed cost dominates, so a batch whose rows want different depths runs about as many calls
as full depth. Here the rows are decoupled instead: each call computes exactly one slot per busy row
(its token's next step, or the first slot of its next token), so the number of calls is the largest
per-row slot count, close to T(1 + average steps), and every cache entry belongs to its row — no
invisible entries for skipped steps.

The per-row schedule is implemented by the adaptive methods' `row_start` / `row_slot` / `row_finish`
hooks (`PonderMethod.supports_row_schedule`); results equal each sequence decoded alone.
"""

from __future__ import annotations

import torch

from ponderlm.methods.base import DecodeState


def supports(model) -> bool:
    return bool(getattr(model.method, "supports_row_schedule", False))


def run_row_slots(model, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One backbone call: the next slot of every busy row. Returns `row_finish`'s (done, logits, steps)."""
    return model.method.step_rows(model.backbone, state)
