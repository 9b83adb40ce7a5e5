"""Vanilla LM (METHODS.md §1): one pass, no additional steps."""

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


@register_method("vanilla")
class Vanilla(PonderMethod):
    takes_steps = False

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return [full_pass(1, T)], []

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        valid = attention_mask.bool()
        hidden = backbone.run(backbone.embed(input_ids), padding_positions(attention_mask), slot_causal_mask(valid))
        return MethodOutput(hidden=hidden, executed_steps=torch.zeros_like(input_ids, dtype=torch.float32))

    def decode_token(self, backbone, state: DecodeState, input_ids, valid):
        hidden = self.run_cached_slot(backbone, state, backbone.embed(input_ids), 0, self.token_bias(valid))
        state.next_position += valid.long()
        if state.slot_trace is not None:
            state.slot_trace.append(hidden[:, None])
        return backbone.head(hidden), torch.zeros_like(input_ids, dtype=torch.float32)

    def prefill(self, backbone, state: DecodeState, input_ids, attention_mask):
        """The whole prompt in one cached pass."""
        valid = attention_mask.bool()
        hidden = self.run_cached_block(backbone, state, backbone.embed(input_ids), prompt_positions(state, valid), 0,
                                       self.token_bias(valid))
        state.next_position += valid.long().sum(-1)
        return backbone.head(hidden), torch.zeros_like(input_ids, dtype=torch.float32)
