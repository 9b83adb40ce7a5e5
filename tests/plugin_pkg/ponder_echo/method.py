"""The toy method "echo", defined outside ponderlm: the backbone runs K+1 times per token; pass k+1 reads the
token's embedding plus `echo_scale * echo_mix` times the post-norm state of pass k (its own options; `echo_mix` is
an inference knob, so generate, the CLI, the server and the Pareto sweep offer it with no edit in ponderlm). Each
pass attends over its own pass's keys, so decoding keeps one cache per pass. Its cost model: K+1 full passes,
per-pass caches.

No `@register_method` here: the entry point (pyproject.toml) registers the class under its name, and a checkpoint's
remote code registers it under the name its config.json uses.
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import slot_causal_mask
from ponderlm.config import option
from ponderlm.flops import full_pass
from ponderlm.methods.base import MethodOutput, PonderMethod, padding_positions


class Echo(PonderMethod):
    """K+1 passes of the shared stack per token, each fed back the previous pass's post-norm state."""

    class Options(PonderMethod.Options):
        echo_scale: float = option(0.5)  # weight of the fed-back state in the next pass's input
        echo_mix: float = option(1.0, low=0.0, high=1.0, knob=True, sweep=(0.0, 0.5, 1.0),
                                 help="share of the fed-back state the later passes read")

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return [full_pass(1, T, count=config.max_steps + 1)], []  # feedback is elementwise: no extra matmuls

    @classmethod
    def decode_keys(cls, config, T, a):
        return sum(a) * (T + 1) / 2  # each pass has its own cache with t+1 entries

    def num_caches(self) -> int:
        return self.config.max_steps + 1

    def inputs(self, embedded: torch.Tensor, hidden: torch.Tensor, options) -> torch.Tensor:
        return embedded + self.config.echo_scale * options.echo_mix * hidden

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        valid, embedded, options = attention_mask.bool(), backbone.embed(input_ids), self.options_or_saved(options)
        positions, mask = padding_positions(attention_mask), slot_causal_mask(valid)
        hidden = backbone.run(embedded, positions, mask)
        for _ in range(self.config.max_steps):
            hidden = backbone.run(self.inputs(embedded, hidden, options), positions, mask)
        return MethodOutput(hidden=hidden, executed_steps=self.config.max_steps * valid.float())

    def decode_token(self, backbone, state, input_ids, valid):
        bias, embedded = self.token_bias(valid), backbone.embed(input_ids)
        hidden = self.run_cached_slot(backbone, state, embedded, 0, bias, cache_index=0)
        for k in range(1, self.num_caches()):
            hidden = self.run_cached_slot(backbone, state, self.inputs(embedded, hidden, state.options), k, bias,
                                          cache_index=k)
        state.next_position += valid.long()
        return backbone.head(hidden), self.config.max_steps * valid.float()
