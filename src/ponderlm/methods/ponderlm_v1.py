"""PonderLM v1 (METHODS.md §4): K extra full passes fed by the probability-weighted embedding.

    U^0 = gamma E[x];  for k = 1..K:  H^k = F(U^{k-1}),  P^k = softmax(W_out H^k),
    U^k = U^{k-1} + P^k (gamma E);    final pass H = F(U^K), prediction/loss on H only.

Each pass is a full causal pass over all positions (padding masked). `RecurrentPonder` owns the
pass loop of both paths and is also the base of AdaPonderLM (§7), which overrides one hook,
`halting`, to scale updates by gates and drop halted tokens from later passes.

Decoding (design choice): ONE shared `SlotKVCache`. Pass j = 0..K of a token writes an entry of
depth j at the token's position, and a pass-j query sees the entries with
`depth <= j <= depth_last`. In v1 every entry has `depth_last == depth`, so a pass-j query sees
exactly pass j's keys (the same as K+1 separate caches); AdaPonderLM re-points a halted token's
last entry to `depth_last = K`, so it serves every later pass without a copy.

`latent_feedback` (post_norm / pre_norm) does not apply here, and the config rejects pre_norm: what
is fed back is no hidden state but the expected next-token embedding P(gamma E), added to the pass
input U. P = softmax(W_out H) is an LM-head readout, so like the head it reads the post-norm H the
head is trained on (METHODS.md §4); a "pre-norm" P would be the head applied to a state it never
sees. AdaPonderLM's gates likewise read the post-norm H.
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import NEG_INF, slot_causal_mask
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.flops import full_pass
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    gather_tokens,
    pack_active,
    padding_positions,
    prompt_positions,
    register_method,
    scatter_tokens,
)


class RecurrentPonder(PonderMethod):
    """The K+1-pass loop shared by PonderLM v1 and AdaPonderLM (both paths)."""

    embed_scale_factor = 1.0  # sqrt(d), as PonderingLM
    head_feedback = True

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        # Dense passes over all tokens until every token of the batch halted: m = deepest token's steps;
        # the feedback P^k (gamma E) before passes 2..m+1.
        m = max(k for k in range(config.max_steps + 1) if a[k] > 0)
        return [full_pass(1, T, count=m + 1)], [(m * (costs.head + costs.mix), True)]

    @classmethod
    def decode_cost(cls, config, costs, a):
        return sum(a[1:]) * (costs.head + costs.mix)

    # ------------------------------------------------------------------ hooks for subclasses
    def halting(
        self, index: int, hidden: torch.Tensor, active: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
        options,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """After pass `index` (1..K): (update scale s or None for 1, mask of tokens active in the next pass).

        hidden [..., D] is the state of the pass just run, active [...] bool the tokens that ran it.
        v1 never halts and adds the full feedback.
        """
        return None, active

    def aux_loss(self, gates: list[tuple[torch.Tensor, torch.Tensor]], valid: torch.Tensor) -> torch.Tensor | None:
        """Extra loss from the (gate values, evaluated mask) pairs `halting` produced in the dense path."""
        return None

    # ------------------------------------------------------------------ shared pieces
    def feedback(self, backbone, hidden: torch.Tensor) -> torch.Tensor:
        """e = P (gamma E) with P = softmax(W_out H): the expected next-token embedding, [..., D]."""
        probs = torch.softmax(backbone.head(hidden).float(), dim=-1).to(hidden.dtype)
        return (probs @ backbone.embed_weight) * self.config.resolved_embed_scale

    @staticmethod
    def next_inputs(inputs: torch.Tensor, feedback: torch.Tensor, scale: torch.Tensor | None,
                    active: torch.Tensor) -> torch.Tensor:
        """U^i = U^{i-1} + m^i s^i e^i (v1: s = m = 1)."""
        if scale is None:
            return inputs + feedback
        return inputs + (scale * active).to(feedback.dtype)[..., None] * feedback

    # ------------------------------------------------------------------ parallel path
    def pass_loop(self, backbone, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
                  run_pass, options, on_halt=None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Passes 0..K, shared by the parallel forward and the prefill: `run_pass(j, inputs, active)` computes
        pass j for the active tokens (the others keep their last state), then the gates decide who continues,
        `on_halt(j, halted)` sees the tokens that stop, and the continuing ones take U + s e as next inputs.
        Returns (hidden [B,T,D] of each token's last pass, executed steps [B,T], the (gate, mask) pairs)."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        inputs, active = backbone.embed(input_ids), valid
        steps = torch.zeros(valid.shape, device=valid.device)
        gates: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in range(self.config.max_steps + 1):
            hidden = run_pass(j, inputs, active)
            if j == self.config.max_steps:
                break
            scale, nxt = self.halting(j + 1, hidden, active, rows, positions, options)
            if scale is not None:
                gates.append((scale, active))
            if on_halt is not None:
                on_halt(j, active & ~nxt)
            steps = steps + nxt.float()
            if not bool(nxt.any()):  # everyone halted: later passes would change nothing
                break
            inputs = self.next_inputs(inputs, self.feedback(backbone, hidden), scale, nxt)
            active = nxt
        return hidden, steps * valid, gates

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        valid = attention_mask.bool()
        positions = padding_positions(attention_mask)
        mask = slot_causal_mask(valid)
        last: dict[str, torch.Tensor | list | None] = {"hidden": None, "kv": [None] * self.config.num_hidden_layers}

        def dense_pass(j: int, inputs: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
            # Only real tokens that halted need their old K/V and state; padding keys are masked anyway.
            frozen = bool((valid & ~active).any())
            kv_out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(last["kv"])
            hook = _kv_reuse_hook(active if (j > 0 and frozen) else None, last["kv"], kv_out)
            new = backbone.run(inputs, positions, mask, kv_hook=hook)
            hidden = last["hidden"]
            last["hidden"] = new if hidden is None or not frozen else torch.where(active[..., None], new, hidden)
            last["kv"] = kv_out
            return last["hidden"]

        hidden, steps, gates = self.pass_loop(backbone, input_ids, valid, positions, dense_pass,
                                              self.options_or_saved(options))
        return MethodOutput(hidden=hidden, executed_steps=steps, aux_loss=self.aux_loss(gates, valid),
                            stats={"gates": gates})

    # ------------------------------------------------------------------ sequential path
    def decode_capacity(self, num_tokens: int) -> int:
        return num_tokens * (self.config.max_steps + 1)

    def prefill(self, backbone, state: DecodeState, input_ids, attention_mask):
        """Pass-major: pass j runs once over the prompt's tokens still active at j, packed left per row
        (halted tokens cost nothing and, with batch 1, write nothing). Same entries, depths and aliases
        as token-by-token decoding, in pass-major instead of token-major order."""
        cache = state.cache
        valid = attention_mask.bool()
        positions = prompt_positions(state, valid)
        last = {"hidden": torch.zeros(*input_ids.shape, self.config.hidden_size, device=input_ids.device,
                                      dtype=backbone.dtype)}

        def cached_pass(j: int, inputs: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
            # Pass 0 keeps padding as invisible entries, exactly like decoding; later passes pack.
            index, present = pack_active(active if j > 0 else torch.ones_like(active))
            owned = present & gather_tokens(active, index)
            bias = torch.where(owned, 0.0, NEG_INF).float()
            new = self.run_cached_block(backbone, state, gather_tokens(inputs, index), gather_tokens(positions, index),
                                        j, bias, allowed_extra_fn=_depth_window(j))
            last.update(index=index, owned=owned, start=cache.length - index.shape[1])
            last["hidden"] = scatter_tokens(last["hidden"], index, owned, new)
            return last["hidden"]

        def alias_halted(j: int, halted: torch.Tensor) -> None:
            if bool(halted.any()):
                # Alias, not copy: the entries just written serve every later pass of halted tokens.
                selected = gather_tokens(halted, last["index"]) & last["owned"]
                cache.set_depth_last(slice(last["start"], cache.length), self.config.max_steps, selected)

        hidden, steps, _ = self.pass_loop(backbone, input_ids, valid, positions, cached_pass, state.options,
                                          alias_halted)
        state.next_position += valid.long().sum(-1)
        return backbone.head(hidden), steps

    # ------------------------------------------------------------------ per-row schedule (continuous batching)
    supports_row_schedule = True

    def row_slot(self, state: DecodeState):
        # Pass j of each row sees the entries serving depth j (depth <= j <= depth_last, see the module doc).
        return torch.zeros(state.rows.depth.shape, device=state.rows.depth.device), _depth_window(state.rows.depth)

    def row_finish(self, backbone, state: DecodeState, hidden: torch.Tensor, feedback: torch.Tensor | None = None):
        # `feedback` is unused: the next pass takes U + P(gamma E), P read from the post-norm `hidden` by the
        # LM head, never a hidden state itself, so `latent_feedback` has nothing to switch (see the module doc).
        K = self.config.max_steps
        row = state.rows
        busy, j = row.busy, row.depth
        rows = torch.arange(busy.shape[0], device=busy.device)
        # The gate after the pass just run (pass j -> gate j+1) decides whether the token continues.
        scale = torch.ones(busy.shape, device=busy.device)
        keep = torch.zeros_like(busy)
        for index in range(1, K + 1):
            at = busy & (j + 1 == index)
            if bool(at.any()):
                s, nxt = self.halting(index, hidden, at, rows, state.next_position, state.options)
                keep = keep | (at & nxt)
                if s is not None:
                    scale = torch.where(at, s, scale)
        done = busy & ~keep
        cache = state.cache
        halted_early = done & (j < K)
        if bool(halted_early.any()):
            # Alias, not copy: this row's entry just written serves all its later passes.
            cache.set_depth_last(cache.length - 1, K, halted_early)
        cont = busy & keep
        if bool(cont.any()):
            index = cont.nonzero()[:, 0]  # feedback (a full LM head + embedding mix) only where needed
            mixed = self.feedback(backbone, hidden.index_select(0, index))
            update = torch.zeros_like(hidden).index_copy(0, index, mixed)
            row.inputs = self.next_inputs(row.inputs, update, scale, cont)
        return done, self.complete_rows(backbone, state, done, lambda: hidden), j.float()


def _kv_reuse_hook(active: torch.Tensor | None, kv_in: list, kv_out: list):
    """kv_hook for one dense pass: halted tokens keep the K/V of their last active pass.

    Reads the previous pass's K/V from `kv_in` and records this pass's into `kv_out`; the lists
    are per pass and `kv_in` is never mutated, so re-running a layer (activation checkpointing)
    reproduces the same result.
    """

    def hook(layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if active is not None:
            keep = active[:, None, :, None]  # [B,1,T,1] against K/V [B,H,T,D]
            prev_k, prev_v = kv_in[layer_idx]
            key, value = torch.where(keep, key, prev_k), torch.where(keep, value, prev_v)
        kv_out[layer_idx] = (key, value)
        return key, value

    return hook


def _depth_window(j: int | torch.Tensor):
    """Decode predicate for a pass-j query (j an int, or per row [B]): entries with depth <= j <= depth_last."""
    if isinstance(j, torch.Tensor):
        j = j[:, None]

    def allowed(cache: SlotKVCache) -> torch.Tensor:
        meta = cache.entry_view()
        return ((meta["depth"] <= j) & (meta["depth_last"] >= j))[:, None, :]

    return allowed


@register_method("ponderlm")
class PonderLMv1(RecurrentPonder):
    """PonderLM v1: every token runs all K+1 passes (executed additional steps = K)."""

