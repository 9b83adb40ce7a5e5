"""The one attention function and the masks it consumes.

Every method talks to attention through data, never flags: queries/keys carry position ids
(several slots may share one), and a single additive float mask `[B, 1, Q, S]` encodes causal
order over the *slot* sequence, padding, skipped cache entries (-inf) and soft per-key biases
(e.g. PonderLM-3's `log w`). Masks are built once per forward by the method and shared by all
layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reference attention. q: [B,H,Q,D]; k, v: [B,H,S,D]; mask: additive, broadcastable to [B,H,Q,S]."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """torch SDPA with an additive float mask (dispatches to fused kernels where available)."""
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


ATTENTION_BACKENDS = {"sdpa": sdpa_attention, "eager": eager_attention}


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, backend: str = "sdpa"
) -> torch.Tensor:
    """Multi-head attention; repeats grouped KV heads to match the query heads."""
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return ATTENTION_BACKENDS[backend](q, k, v, mask)


def additive_mask(allowed: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a boolean `allowed [B,Q,S]` (+ optional float `key_bias [B,S]`) into an additive `[B,1,Q,S]` mask."""
    zeros = torch.zeros((), dtype=torch.float32, device=allowed.device)
    if key_bias is not None:
        zeros = key_bias.float()[:, None, :]
    mask = torch.where(allowed, zeros, torch.tensor(NEG_INF, device=allowed.device))
    return mask[:, None]


def slot_causal_mask(
    key_valid: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    key_depth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask for a full (non-cached) forward over S slots in causal slot order.

    key_valid [B,S] bool: padding slots are not attended (by anyone but themselves, so no row is
    empty and no NaN appears). key_bias [B,S]: additive bias of each key. key_depth [B,S]: if given,
    query (t,k) may only see keys of depth <= k (the 2-D latent-CoT mask).
    """
    batch, slots = key_valid.shape
    idx = torch.arange(slots, device=key_valid.device)
    causal = idx[None, :] <= idx[:, None]  # [Q,S]
    allowed = causal[None] & key_valid[:, None, :]
    if key_depth is not None:
        allowed = allowed & (key_depth[:, None, :] <= key_depth[:, :, None])
    allowed = allowed | torch.eye(slots, dtype=torch.bool, device=key_valid.device)[None]
    return additive_mask(allowed, key_bias)
