"""Decoder layers of the two backbones. Parameter names follow Hugging Face so checkpoints map 1:1.

A layer takes tensors only (hidden states, rotary cos/sin, an additive mask, an optional slot
cache and an optional K/V hook); it never knows which pondering method is running.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponderlm.backbone.attention import attention
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.backbone.rotary import apply_rotary
from ponderlm.config import PonderConfig

# kv_hook(layer_idx, key, value) -> (key, value): lets a method edit a layer's fresh K/V before
# attention (AdaPonderLM's KV reuse: where(active, new, previous)).
KVHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None,
    layer_idx: int,
    cache: SlotKVCache | None,
    kv_hook: KVHook | None,
) -> torch.Tensor:
    """Shared tail of both attentions: rotary, K/V hook, cache write/read, attention. Returns [B,S,H*D]."""
    cos, sin = rotary
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if kv_hook is not None:
        k, v = kv_hook(layer_idx, k, v)
    rows = None
    if cache is not None:
        k, v = cache.update(layer_idx, k, v)
        rows = cache.query_rows
        if rows is not None:  # K/V of the whole batch: put the active rows' queries at their rows
            q = q.new_zeros((k.shape[0], *q.shape[1:])).index_copy(0, rows, q)
    out = attention(q, k, v, mask)
    if rows is not None:
        out = out.index_select(0, rows)
    batch, heads, seq, dim = out.shape
    return out.transpose(1, 2).reshape(batch, seq, heads * dim)


class LlamaAttention(nn.Module):
    def __init__(self, config: PonderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.o_proj.is_residual_output = True  # scaled down by depth under the "ponder" init

    def forward(self, x, rotary, mask, cache=None, kv_hook=None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        out = _attend(q, k, v, rotary, mask, self.layer_idx, cache, kv_hook)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, config: PonderConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.down_proj.is_residual_output = True
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PonderConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x, rotary, mask, cache=None, kv_hook=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rotary, mask, cache, kv_hook)
        return x + self.mlp(self.post_attention_layernorm(x))


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: PonderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.query_key_value = nn.Linear(config.hidden_size, 3 * self.num_heads * self.head_dim, bias=bias)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.dense.is_residual_output = True

    def forward(self, x, rotary, mask, cache=None, kv_hook=None) -> torch.Tensor:
        batch, seq, _ = x.shape
        # NeoX packs q,k,v per head: [.., H, 3*D], matching Hugging Face's GPTNeoXAttention layout.
        qkv = self.query_key_value(x).view(batch, seq, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        out = _attend(q, k, v, rotary, mask, self.layer_idx, cache, kv_hook)
        return self.dense(out)


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: PonderConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.dense_4h_to_h.is_residual_output = True
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: PonderConfig, layer_idx: int) -> None:
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, x, rotary, mask, cache=None, kv_hook=None) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), rotary, mask, cache, kv_hook)
        if self.use_parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))
