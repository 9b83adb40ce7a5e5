"""Rotary position embeddings (Llama: full head dim; GPT-NeoX: the first `rotary_pct` of it)."""

from __future__ import annotations

import torch


def rotary_cos_sin(
    position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, S, rotary_dim] for arbitrary (possibly repeated) position ids [B, S].

    Computed from the config on every call instead of a registered buffer: it is a handful of
    flops, and it keeps the module free of non-persistent buffers that meta-device loading would
    leave uninitialised.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32)
                                / rotary_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B,H,S,D]; cos/sin [B,S,R] with R <= D: rotates the first R dims, passes the rest through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
