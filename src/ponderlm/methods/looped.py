"""Looped (weight-shared) transformer (METHODS.md §3): the layer stack runs K+1 times on its own output.

    x^0 = embed_scale * E[x];   x^{i+1} = Layers(x^i) for i = 0..K;   H = Norm(x^{K+1})

Every loop uses the same positions and causal mask; the final norm is applied once, after the last
loop (the stack's residual stream is fed back un-normalised). The prediction reads the final loop.
Decoding keeps one KV cache per loop (`num_caches = K+1`): loop i's layers write and read cache i,
so each cache holds one entry per token and layer indices stay 0..L-1.
Cost: K+1 stack runs; executed additional steps = K for every real token.
`latent_feedback` does not apply (the config rejects pre_norm): there are no latent slots, and the
loop always feeds its un-normalised stream back (METHODS.md §3), i.e. already "pre-norm" by design.
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import slot_causal_mask
from ponderlm.flops import full_pass
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    padding_positions,
    prompt_positions,
    register_method,
)


@register_method("looped")
class Looped(PonderMethod):
    """Weight-shared depth recurrence: K+1 runs of the same layers; no extra parameters."""

    embed_scale_factor = 2.5  # sqrt(2.5 d), as PonderLM-2

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return [full_pass(1, T, count=config.max_steps + 1)], []

    @classmethod
    def decode_keys(cls, config, T, a):
        return sum(a) * (T + 1) / 2  # each loop has its own cache with t+1 entries

    def num_loops(self) -> int:
        return self.config.max_steps + 1

    # ------------------------------------------------------------------ parallel path
    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        valid = attention_mask.bool()
        positions = padding_positions(attention_mask)
        mask = slot_causal_mask(valid)  # built once, shared by every loop and layer
        x = backbone.embed(input_ids)  # [B,T,D]
        for _ in range(self.num_loops()):
            x = backbone.run_layers(x, positions, mask)
        return MethodOutput(hidden=backbone.norm(x), executed_steps=self.full_steps(valid))

    # ------------------------------------------------------------------ sequential path
    def num_caches(self) -> int:
        return self.num_loops()

    def decode_token(self, backbone, state: DecodeState, input_ids, valid):
        bias = self.token_bias(valid)  # padding rows own no visible key
        x = backbone.embed(input_ids)
        loops = []
        for i in range(self.num_loops()):
            # Loop i writes cache i, without the final norm: the next loop reads the raw residual stream.
            x = self.run_cached_slot(backbone, state, x, i, bias, cache_index=i, apply_norm=False)
            loops.append(x)
        state.next_position += valid.long()
        if state.slot_trace is not None:
            state.slot_trace.append(torch.stack(loops, dim=1))
        return backbone.head(backbone.norm(x)), self.full_steps(valid)

    def prefill(self, backbone, state: DecodeState, input_ids, attention_mask):
        """K+1 cached passes over the whole prompt, loop i writing cache i."""
        valid = attention_mask.bool()
        positions = prompt_positions(state, valid)
        bias = self.token_bias(valid)
        x = backbone.embed(input_ids)
        for i in range(self.num_loops()):
            x = self.run_cached_block(backbone, state, x, positions, i, bias, cache_index=i, apply_norm=False)
        state.next_position += valid.long().sum(-1)
        return backbone.head(backbone.norm(x)), self.full_steps(valid)
