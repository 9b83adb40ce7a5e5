"""Pause tokens (METHODS.md §2): K learned pause slots after each token, one pass, no feedback.

Layout is PonderLM-2's interleaved grid (§5): T(K+1) slots (1,0),(1,1)..(1,K),(2,0).. ; all slots
of token t share position id t; causal attention over slot order; the prediction reads slot (t,K).
Slot (t,0) takes the scaled token embedding; slot (t,k>=1) takes the learned pause vector `P_k`
(one per slot index), *not* a hidden state. Since no slot reads another slot's output, one
parallel pass is exact: no Jacobi. Decoding runs K+1 cached single-slot passes per token.
Cost: (K+1)x slots; executed additional steps = K for every real token.
`latent_feedback` is accepted (an interleaved layout) but changes nothing: no slot takes a hidden state.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import initialization as init

from ponderlm.flops import full_pass
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    padding_positions,
    prompt_positions,
    register_method,
)
from ponderlm.methods.ponderlm2 import grid_pass


@register_method("pause")
class Pause(PonderMethod):
    """Learned pause vectors interleaved after every token (no Jacobi: inputs never depend on outputs)."""

    interleaved = True
    embed_scale_factor = 1.0  # sqrt(d), as the official pause baseline

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return [full_pass(config.max_steps + 1, T)], []

    def __init__(self, config) -> None:
        super().__init__(config)
        # P_k, k = 1..K: [K, D]. Filled by `init_ponder_weights` (HF `_init_weights`) or by a checkpoint.
        self.pause_embeds = nn.Parameter(torch.empty(config.max_steps, config.hidden_size))

    def init_ponder_weights(self) -> None:
        # Like a row of the embedding matrix: a pause slot is an extra "vocabulary token" whose input goes
        # through the same `embed_scale` as real tokens, so the two start at the same magnitude.
        if self.config.init == "ponder":
            std = self.config.init_std()
            init.trunc_normal_(self.pause_embeds, mean=0.0, std=std, a=-3 * std, b=3 * std)
        else:
            init.normal_(self.pause_embeds, mean=0.0, std=self.config.initializer_range)

    def pause_inputs(self) -> torch.Tensor:
        """Scaled pause inputs `P_k * embed_scale` [K, D]."""
        return self.pause_embeds * self.config.resolved_embed_scale

    # ------------------------------------------------------------------ parallel path (one pass, exact)
    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        valid = attention_mask.bool()
        b, t = input_ids.shape
        tokens = backbone.embed(input_ids)  # [B,T,D]
        pauses = self.pause_inputs().to(tokens.dtype)[None, None].expand(b, t, -1, -1)  # [B,T,K,D]
        grid = torch.cat([tokens[:, :, None], pauses], dim=2)  # [B,T,K+1,D]
        # `grid_pass` builds the interleaved positions and the slot-causal mask, as for PonderLM-2's grid.
        hidden = grid_pass(backbone, grid, padding_positions(attention_mask), valid, None)
        return MethodOutput(hidden=hidden[:, :, -1], executed_steps=self.full_steps(valid),
                            stats={"slot_hidden": hidden})

    # ------------------------------------------------------------------ sequential path
    def decode_token(self, backbone, state: DecodeState, input_ids, valid):
        bias = self.token_bias(valid)
        h = self.run_cached_slot(backbone, state, backbone.embed(input_ids), 0, bias)
        slots = [h]
        pauses = self.pause_inputs().to(h.dtype)
        for k in range(1, self.config.max_steps + 1):
            h = self.run_cached_slot(backbone, state, pauses[k - 1].expand_as(h), k, bias)
            slots.append(h)
        state.next_position += valid.long()
        if state.slot_trace is not None:
            state.slot_trace.append(torch.stack(slots, dim=1))
        return backbone.head(h), self.full_steps(valid)

    def prefill(self, backbone, state: DecodeState, input_ids, attention_mask):
        """The prompt's T(K+1) interleaved slots in one cached pass (no slot reads another's output)."""
        valid = attention_mask.bool()
        b, t = input_ids.shape
        slots = self.config.max_steps + 1
        tokens = backbone.embed(input_ids)
        pauses = self.pause_inputs().to(tokens.dtype)[None, None].expand(b, t, -1, -1)
        grid = torch.cat([tokens[:, :, None], pauses], dim=2).reshape(b, t * slots, -1)
        positions = prompt_positions(state, valid).repeat_interleave(slots, dim=1)
        depth = torch.arange(slots, device=input_ids.device).repeat(t)[None].expand(b, -1)
        bias = self.token_bias(valid).repeat_interleave(slots, dim=1)
        hidden = self.run_cached_block(backbone, state, grid, positions, depth, bias).view(b, t, slots, -1)
        state.next_position += valid.long().sum(-1)
        return backbone.head(hidden[:, :, -1]), self.full_steps(valid)
