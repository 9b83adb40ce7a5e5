"""The one attention function and the masks it consumes.

Every method talks to attention through data, never flags: queries/keys carry position ids
(several slots may share one), and a single additive float mask `[B, 1, Q, S]` encodes causal
order over the *slot* sequence, padding, skipped cache entries (-inf) and soft per-key biases
(e.g. PonderLM-3's `log w`). Masks are built once per forward by the method and shared by all
layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """torch SDPA with an additive float mask (dispatches to fused kernels where available)."""
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass(frozen=True)
class CausalKeyBias:
    """A mask that is plain causal over the slot sequence plus a per-key additive bias `key_bias [B,S]`.

    Equal to `slot_causal_mask(all valid, key_bias)`, but cheaper when the bias carries a gradient
    (PonderLM-3's `log w` in training): a dense float mask with a gradient forces SDPA to build the
    mask gradient for every layer and pass. Here the bias is folded into one extra head dimension
    instead, q' = [q, 1], k' = [k, bias / scale], so q'.k' * scale = q.k * scale + bias, and SDPA
    runs its causal kernel with no mask tensor; the bias gradient arrives through k'.
    """

    key_bias: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The equivalent additive float mask [B,1,S,S]."""
        valid = torch.ones(self.key_bias.shape, dtype=torch.bool, device=self.key_bias.device)
        return slot_causal_mask(valid, self.key_bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.key_bias.dtype

    def to(self, dtype: torch.dtype) -> CausalKeyBias:
        return CausalKeyBias(self.key_bias.to(dtype))


def _causal_key_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor
                               ) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5
    b, h, s, d = q.shape
    pad = 8  # the extra dimension, padded so the head size stays a multiple of 8 for the kernels
    zeros = q.new_zeros(b, h, s, pad - 1)
    q2 = torch.cat([q, torch.ones_like(zeros[..., :1]), zeros], dim=-1)
    bias = (key_bias.to(k.dtype) / scale)[:, None, :, None].expand(b, h, k.shape[2], 1)
    k2 = torch.cat([k, bias, k.new_zeros(b, h, k.shape[2], pad - 1)], dim=-1)
    v2 = torch.cat([v, v.new_zeros(b, h, v.shape[2], pad)], dim=-1)
    out = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=scale)
    return out[..., :d]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Multi-head attention; repeats grouped KV heads to match the query heads."""
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if isinstance(mask, CausalKeyBias):
        if q.shape[2] == k.shape[2]:
            return _causal_key_bias_attention(q, k, v, mask.key_bias)
        mask = mask.dense()
    return sdpa_attention(q, k, v, mask)


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
