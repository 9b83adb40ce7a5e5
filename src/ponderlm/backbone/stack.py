"""`DecoderStack`: embeddings + layers + final norm of either backbone, one pass `F(U, pos, mask, cache)`."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ponderlm.backbone.cache import SlotKVCache
from ponderlm.backbone.layers import GPTNeoXLayer, KVHook, LlamaDecoderLayer, RMSNorm
from ponderlm.backbone.rotary import rotary_cos_sin
from ponderlm.config import PonderConfig


class DecoderStack(nn.Module):
    """The shared transformer. Methods call `forward` once per pass; it never branches on a method."""

    def __init__(self, config: PonderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.backbone == "llama":
            self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        else:
            self.layers = nn.ModuleList(GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers))
            self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_dim = int(config.head_dim * config.rotary_pct)
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SlotKVCache | None = None,
        kv_hook: KVHook | None = None,
        apply_norm: bool = True,
    ) -> torch.Tensor:
        """One pass. inputs_embeds [B,S,D], position_ids [B,S], mask additive [B,1,S,N] -> hidden [B,S,D].

        With a cache, the S new slots must have been `reserve`d; keys/values are written there and
        attention runs over every cached entry (the mask covers all N of them).
        """
        x = self.run_layers(inputs_embeds, position_ids, mask, cache, kv_hook)
        return self.norm(x) if apply_norm else x

    def run_layers(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SlotKVCache | None = None,
        kv_hook: KVHook | None = None,
    ) -> torch.Tensor:
        rotary = rotary_cos_sin(position_ids, self.rotary_dim, self.config.rope_theta, x.dtype)
        if mask is not None and mask.dtype != x.dtype:
            # Cast once per pass: a per-layer cast would keep one copy per layer alive for autograd.
            mask = mask.to(x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, rotary, mask, None, kv_hook, use_reentrant=False)
            else:
                x = layer(x, rotary, mask, cache, kv_hook)
        return x
