"""Fixed-pruning controls (METHODS.md §9): per-token depths drawn independently of content.

Any adaptive method can replace its learned depth with one of these (`depth_policy`), so the
same checkpoint and decoding code run at a requested average number of executed steps: the
iso-FLOPs comparison is exact by construction. The adaptive methods inherit `FixedPruning`, which
declares the three knobs (`depth_policy`, `depth_target`, `depth_seed`) and draws the depths.

Families (one parameter each, solved by bisection so the *expected* depth equals the target):
- "uniform": depth uniform over the c lowest levels {0, .., c-1} (fractional c allowed: the last
  level gets the remaining mass); for targets above K/2 the mirror image, uniform over the c highest.
- "geometric": depth = min(K, G) with G ~ Geometric(p) on {0, 1, ..}: truncated at K.

Draws are a pure function of (seed, row, position) via a counter-based hash, so the parallel
path and token-by-token decoding see the same depth for the same token, whatever else is in the
batch. They are stratified along each row (`stratified_uniform`), so the average executed depth
over a few thousand tokens matches the target to well under 1%, not just in expectation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ponderlm.config import option, reject
from ponderlm.registry import method_names


def _uniform_low(c: float, K: int) -> torch.Tensor:
    """P(depth = j), j = 0..K: 1/c on each of the floor(c) lowest levels, the remaining mass on the next one."""
    probs = torch.zeros(K + 1, dtype=torch.float64)
    full = math.floor(c)
    probs[: min(full, K + 1)] = 1.0 / c
    if full < K + 1:
        probs[full] = 1.0 - probs[:full].sum()
    return probs


def uniform_probs(target: float, K: int) -> torch.Tensor:
    """P(depth = j), j = 0..K, of the uniform family with mean `target`."""
    mirror = target > K / 2
    goal = K - target if mirror else target
    levels = torch.arange(K + 1, dtype=torch.float64)
    lo, hi = 1.0, K + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((_uniform_low(mid, K) * levels).sum()) < goal else (lo, mid)
    probs = _uniform_low((lo + hi) / 2, K)
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
    if policy == "constant":  # every token exactly `target` steps (analyses that force a depth)
        return torch.nn.functional.one_hot(torch.tensor(round(target)), K + 1).double()
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


def _hash32(seed: int, rows: torch.Tensor, positions: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """32-bit hash of (seed, salt, row, position), broadcast over rows/positions (int64 holding uint32)."""
    # The golden-ratio offset keeps seed 0 away from the finaliser's fixed point 0.
    x = _mix32(torch.full_like(positions.long(), ((seed ^ 0x9E3779B9) + 0x7F4A7C15 * salt) & 0xFFFFFFFF))
    x = _mix32(x ^ (rows.long() & 0xFFFFFFFF))
    return _mix32(x ^ (positions.long() & 0xFFFFFFFF))


def hash_uniform(seed: int, rows: torch.Tensor, positions: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """Counter-based uniform [0,1) from (seed, row, position): a pure function, no generator state."""
    x = _hash32(seed, rows, positions, salt)
    hi = _mix32(x ^ 0x5BD1E995)
    return (x.double() + hi.double() / 2**32) / 2**32


# Positions per stratification block (see `stratified_uniform`); a power of two for the permutation below.
STRATA = 64


def _block_permutation(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A keyed pseudo-random permutation of 0..STRATA-1: a 4-round Feistel network on 3+3 bits.

    Any round function gives a bijection, so each key (one block) maps its STRATA offsets to distinct strata.
    """
    left, right = index >> 3, index & 7
    for r in range(4):
        f = _mix32(key ^ ((right + 8 * r) * 0x27D4EB2F & 0xFFFFFFFF)) & 7
        left, right = right, left ^ f
    return (left << 3) | right


def stratified_uniform(seed: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniform [0,1) per token, stratified along each row: a pure function of (seed, row, position).

    Independent draws miss a requested mean by ~1/sqrt(n) (about 2% at 10k tokens for small targets),
    which would make the iso-FLOPs control only approximately iso. Here the STRATA positions of each
    block (row, position // STRATA) take the strata [i/STRATA, (i+1)/STRATA) in a pseudo-random order
    (a permutation keyed by the block's hash) with a uniform jitter inside the stratum. Each token's u
    is still exactly uniform and content-independent; a full block's empirical distribution matches the
    target to one stratum, so the average depth is hit up to O(1/n) instead of O(1/sqrt(n)).
    """
    rows, positions = torch.broadcast_tensors(rows.long(), positions.long())
    block_key = _hash32(seed, rows, positions // STRATA, salt=1)
    stratum = _block_permutation(block_key, positions % STRATA)
    return (stratum.double() + hash_uniform(seed, rows, positions, salt=2)) / STRATA


@lru_cache(maxsize=64)
def _policy_cdf(policy: str, target: float, K: int) -> tuple[float, ...]:
    # Bisection takes a few hundred tensor ops: cache it, decoding asks once per token.
    return tuple(policy_probs(policy, target, K).cumsum(0).tolist())


FIXED = ("uniform", "geometric", "constant")


class FixedPruning:
    """Mixin of the adaptive methods (listed first among the bases): the fixed-pruning knobs and draws."""

    @dataclass
    class Options:
        depth_policy: str | None = option(
            None, choices=(None, "learned", *FIXED), knob=True,
            help="learned (the method decides), or a fixed-pruning control drawn independently of content: uniform "
                 "| geometric with mean --depth-target, constant (every token exactly --depth-target steps)")
        depth_target: float | None = option(None, low=0.0, knob=True,
                                            help="average additional steps per token for fixed pruning")
        depth_seed: int = option(0, knob=True, help="seed of the fixed-pruning depth draws")

    @classmethod
    def validate_options(cls, config) -> None:
        policy, target = config.depth_policy, config.depth_target
        if policy in FIXED:
            if not issubclass(config.method_class, FixedPruning):
                reject(f"depth_policy={policy!r} needs an adaptive method ({', '.join(method_names(adaptive=True))})")
            if target is None or not (0.0 <= target <= config.max_steps):
                reject(f"depth_target must be in [0, max_steps={config.max_steps}] for fixed pruning, got {target!r}")
            if policy == "constant" and float(target) != round(target):
                reject(f"depth_policy='constant' needs an integer depth_target, got {target!r}")
        super().validate_options(config)

    @classmethod
    def check_knobs(cls, given: dict[str, Any], config=None) -> None:
        policy = given.get("depth_policy")
        if policy in FIXED and given.get("depth_target") is None:
            raise ValueError(f"--depth-policy {policy} needs --depth-target")
        in_force = policy or (config.depth_policy if config is not None else None) or "learned"
        if given.get("depth_target") is not None and in_force == "learned":  # it would be silently ignored
            raise ValueError("--depth-target only applies to --depth-policy uniform or geometric (--depth-target is "
                             "the target of a fixed-pruning --depth-policy such as uniform, and this run's policy is "
                             "learned); pass --depth-policy too or leave --depth-target out")
        super().check_knobs(given, config)

    @classmethod
    def fixed_depth_knobs(cls, policy: str, target: float | None = None) -> dict[str, Any]:
        return {"depth_policy": policy, "depth_target": target}


def fixed_depths(options, rows: torch.Tensor, positions: torch.Tensor, max_steps: int | None = None
                 ) -> torch.Tensor | None:
    """Depths (long, same shape as positions) under the options' fixed policy (K = `max_steps`, default
    `options.max_steps`: a config's), or None if depth is learned."""
    if options.depth_policy in (None, "learned"):
        return None
    K = options.max_steps if max_steps is None else max_steps
    cdf = torch.tensor(_policy_cdf(options.depth_policy, float(options.depth_target), K),
                       dtype=torch.float64, device=positions.device)
    u = stratified_uniform(options.depth_seed, rows, positions)
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=K)
