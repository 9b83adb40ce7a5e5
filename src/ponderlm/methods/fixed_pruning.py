"""Fixed-pruning controls (METHODS.md §9): per-token depths drawn independently of content.

Any adaptive method can replace its learned depth with one of these (`depth_policy`), so the
same checkpoint and decoding code run at a requested average number of executed steps: the
iso-FLOPs comparison is exact by construction.

Families (one parameter each, solved by bisection so the *expected* depth equals the target):
- "uniform": depth uniform over the c lowest levels {0, .., c-1} (fractional c allowed: the last
  level gets the remaining mass); for targets above K/2 the mirror image, uniform over the c highest.
- "geometric": depth = min(K, G) with G ~ Geometric(p) on {0, 1, ..}: truncated at K.

Draws are a pure function of (seed, row, position) via a counter-based hash, so the parallel
path and token-by-token decoding see the same depth for the same token.
"""

from __future__ import annotations

import math

import torch


def _mean_uniform_low(c: float, K: int) -> float:
    full = math.floor(c)
    probs = [1.0 / c] * min(full, K + 1)
    if full < K + 1 and c > full:
        probs.append(1.0 - sum(probs))
    return sum(j * p for j, p in enumerate(probs))


def uniform_probs(target: float, K: int) -> torch.Tensor:
    """P(depth = j), j = 0..K, of the uniform family with mean `target`."""
    mirror = target > K / 2
    goal = K - target if mirror else target
    lo, hi = 1.0, K + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _mean_uniform_low(mid, K) < goal else (lo, mid)
    c = (lo + hi) / 2
    probs = torch.zeros(K + 1, dtype=torch.float64)
    full = math.floor(c)
    probs[: min(full, K + 1)] = 1.0 / c
    if full < K + 1:
        probs[full] = 1.0 - probs[:full].sum()
    return probs.flip(0) if mirror else probs


def geometric_probs(target: float, K: int) -> torch.Tensor:
    """P(depth = j) of min(K, Geometric(p)) with mean `target` (0 < target < K)."""

    def probs_for(p: float) -> torch.Tensor:
        j = torch.arange(K + 1, dtype=torch.float64)
        out = p * (1 - p) ** j
        out[K] = (1 - p) ** K  # truncation: the tail mass sits on K
        return out

    if target <= 0:
        return torch.nn.functional.one_hot(torch.tensor(0), K + 1).double()
    if target >= K:
        return torch.nn.functional.one_hot(torch.tensor(K), K + 1).double()
    lo, hi = 1e-12, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        mean = float((probs_for(mid) * torch.arange(K + 1)).sum())
        lo, hi = (mid, hi) if mean > target else (lo, mid)
    return probs_for((lo + hi) / 2)


def policy_probs(policy: str, target: float, K: int) -> torch.Tensor:
    if policy == "uniform":
        return uniform_probs(target, K)
    if policy == "geometric":
        return geometric_probs(target, K)
    raise ValueError(f"unknown fixed depth policy {policy!r}")


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (uint32 values held in int64 so products never overflow)."""
    mask = 0xFFFFFFFF
    x = ((x >> 16) ^ x) * 0x45D9F3B & mask
    x = ((x >> 16) ^ x) * 0x45D9F3B & mask
    return (x >> 16) ^ x


def hash_uniform(seed: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Counter-based uniform [0,1) from (seed, row, position): a pure function, no generator state."""
    x = _mix32(torch.full_like(positions.long(), seed & 0xFFFFFFFF))
    x = _mix32(x ^ (rows.long() & 0xFFFFFFFF))
    x = _mix32(x ^ (positions.long() & 0xFFFFFFFF))
    hi = _mix32(x ^ 0x5BD1E995)
    return (x.double() + hi.double() / 2**32) / 2**32


def fixed_depths(config, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
    """Depths (long, same shape as positions) under the config's fixed policy, or None if depth is learned."""
    policy = getattr(config, "depth_policy", None)
    if policy in (None, "learned"):
        return None
    cdf = policy_probs(policy, float(config.depth_target), config.max_steps).cumsum(0).to(positions.device)
    u = hash_uniform(config.depth_seed, rows, positions)
    depth = torch.searchsorted(cdf, u.contiguous(), right=True)
    return depth.clamp(max=config.max_steps)
