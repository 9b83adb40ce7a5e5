"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr_ratio * lr` (PonderLM-2 / Pythia).

The schedule is a pure function of the step, so it has no state to checkpoint: resuming at step N
recomputes exactly the learning rate the uninterrupted run would have used.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_frac: float, warmup_steps: int | None = None) -> int:
    return min(total_steps, math.ceil(warmup_frac * total_steps) if warmup_steps is None else warmup_steps)


def lr_at(step: int, *, lr: float, total_steps: int, warmup: int, min_lr_ratio: float) -> float:
    """Learning rate for the optimizer step with 0-based index `step`."""
    if step < warmup:
        return lr * (step + 1) / warmup  # never 0: the first step already learns
    min_lr = lr * min_lr_ratio
    decay_steps = max(1, total_steps - warmup - 1)  # the last step runs at exactly min_lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
