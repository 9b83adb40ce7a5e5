"""Adaptive latent CoT (METHODS.md §8): per-step halting over latent thoughts under a 2-D causal mask.

Slots (t,k), k = 0..K: `u_t^(0) = E[x_t] * sqrt(2.5 d)`, `u_t^(k) = h_t^(k-1)`, all at position id t.
After every executed slot a router gives the continue probability `g_{t,k} = sigmoid(Router(h_t^(k)))`;
reach `r_{t,0} = 1`, `r_{t,k+1} = r_{t,k} g_{t,k}`; slot k+1 runs iff `k+1 <= K` and `r_{t,k+1} > tau`
(the same hard rule in training and decoding). Exit weights `p_{t,k} = r_{t,k}(1 - g_{t,k})` below the
last executed step K^_t, `p_{t,K^_t} = r_{t,K^_t}`; output `h^_t = sum_k p_{t,k} h_t^(k)`.

2-D causal mask: query (t,k) sees executed keys (t',k') with t' <= t and k' <= k. A depth-k query
therefore never reads a key deeper than itself, so the K+1 depth passes below are exact in one
sweep each (no Jacobi) and each pass only needs to run the slots of tokens still active:

    pass k: queries = packed active slots (t,k); keys = stored K/V of all executed slots of depths < k
            (kept per layer from the earlier passes by a kv_hook) + the pass's own fresh K/V.

Training compute is (T + sum_t K^_t) slots (+ packing filler in a batch), not T(K+1): it falls with the depth.

`latent_feedback="pre_norm"` feeds `u_t^(k)` = the residual stream of slot k-1 before the final norm;
the router g_{t,k}, the fusion, the penalty's q_{t,k} = softmax(W_out h^(k)) keep post-norm states.
Decoding runs the same mask over a `SlotKVCache` whose entries keep their depth index.

`cot_lambda_delay_steps=N` (training only) turns the compute penalty on after N optimizer steps: on a task
whose latent step pays off only late, the penalty otherwise closes the router for every token before the step
has learned anything, and a halted token sends no gradient through the step it skipped (docs/REASONING.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init

from ponderlm.backbone.attention import additive_mask
from ponderlm.config import option
from ponderlm.flops import Pass
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    SlotRows,
    gather_tokens,
    pack_active,
    padding_positions,
    prompt_positions,
    register_method,
    scatter_tokens,
)
from ponderlm.methods.fixed_pruning import FixedPruning, fixed_depths


class ContinueRouter(nn.Module):
    """Continue logit of step k from h^(k): "shared" Linear(d,1), "step" one Linear(d,1) per step k < K
    (row k of `weight`), or "mlp" Linear(d,d)-GELU-Linear(d,1) shared across steps.

    The output layer's weight/bias are direct parameters of this module: HF's initialiser skips custom
    modules without direct parameters, so `init_ponder_weights` would otherwise never run.
    """

    def __init__(self, hidden_size: int, max_steps: int, kind: str, init_bias: float, init_std: float) -> None:
        super().__init__()
        self.kind = kind
        self.init_bias = init_bias
        self.init_std = init_std
        self.hidden = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU()) if kind == "mlp" else None
        n_out = max_steps if kind == "step" else 1
        self.weight = nn.Parameter(torch.empty(n_out, hidden_size))
        self.bias = nn.Parameter(torch.empty(n_out))

    def init_ponder_weights(self) -> None:
        # A small content-dependent spread around the prior g = sigmoid(cot_router_init_bias).
        init.normal_(self.weight, mean=0.0, std=self.init_std)
        init.constant_(self.bias, self.init_bias)

    def forward(self, hidden: torch.Tensor, step: int) -> torch.Tensor:
        """hidden [..., D] -> continue probability g [...] (float32) of step `step`."""
        row = step if self.kind == "step" else 0
        x = self.hidden(hidden) if self.hidden is not None else hidden
        logit = F.linear(x, self.weight[row : row + 1], self.bias[row : row + 1])
        return torch.sigmoid(logit[..., 0].float())


def stack_gates(gates: list[torch.Tensor], shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Continue probabilities of the executed steps as [*shape, n] (n = 0 if no step ran)."""
    return torch.stack(gates, -1) if gates else torch.ones(*shape, 0, device=device)


def fuse_exits(slot_hidden: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Output h^ = sum_k p_k h^(k) from slot states [..., S, D] and exit weights p [..., >= S]."""
    return (p[..., : slot_hidden.shape[-2], None].to(slot_hidden.dtype) * slot_hidden).sum(-2)


def exit_weights(gates: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reach r [..., n+1] and exit weights p [..., n+1] from continue probs g [..., n] and depths K^ [...].

    r_0 = 1, r_{k+1} = r_k g_k; p_k = r_k (1 - g_k) for k < K^, p_{K^} = r_{K^}, 0 beyond (sums to 1).
    Gates past a token's depth may be garbage (never executed); they never reach p.
    """
    reach = [torch.ones_like(gates[..., 0]) if gates.shape[-1] else torch.ones(depth.shape, device=depth.device)]
    for k in range(gates.shape[-1]):
        reach.append(reach[-1] * gates[..., k])
    r = torch.stack(reach, dim=-1)
    g = torch.cat([gates, torch.ones_like(r[..., :1])], dim=-1)
    k = torch.arange(r.shape[-1], device=r.device)
    d = depth[..., None]
    p = torch.where(k < d, r * (1 - g), torch.where(k == d, r, torch.zeros_like(r)))
    return r, p


@register_method("latent_cot")
class LatentCoT(FixedPruning, PonderMethod):
    adaptive = True
    interleaved = True
    variable_passes = True
    embed_scale_factor = 2.5  # sqrt(2.5 d), as PonderLM-2

    class Options(FixedPruning.Options):
        cot_router: str = option("shared", choices=("shared", "step", "mlp"))
        cot_router_init_bias: float = option(2.0)
        cot_lambda: float = option(0.1, low=0.0)
        cot_lambda_delay_steps: int = option(0, low=0)  # training steps before the penalty applies (no early close)
        cot_beta: float = option(1.0, low=0.0)
        tau: float = option(1e-4, low=0.0, high=1.0, high_open=True, knob=True,  # slot k+1 runs while r_k+1 > tau
                            help="pruning / halting threshold", sweep=(1e-4, 0.05, 0.2, 0.4, 0.6, 0.8))

    @staticmethod
    def router_flops(config) -> int:
        d = config.hidden_size
        return 2 * (d * d + d if config.cot_router == "mlp" else d)

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        # Depth pass k: packed active slots (a_k T queries) against every executed slot of depth <= k.
        passes, seen = [], 0.0
        for k in range(config.max_steps + 1):
            if a[k] <= 0:
                break
            seen += a[k]
            passes.append(Pass(a[k], seen * T, seen * (T + 1) / 2))
        extras = [(min(len(passes), config.max_steps) * cls.router_flops(config), True)]  # dense router
        if training and config.cot_lambda > 0:
            extras.append((sum(a) * costs.head, False))  # stop-gradient q on executed slots
        return passes, extras

    @classmethod
    def decode_cost(cls, config, costs, a):
        return sum(a[: config.max_steps]) * cls.router_flops(config)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.router = ContinueRouter(config.hidden_size, config.max_steps, config.cot_router,
                                     config.cot_router_init_bias, config.initializer_range)

    @staticmethod
    def keep_going(reach: torch.Tensor, step: int, fixed: torch.Tensor | None, tau: float) -> torch.Tensor:
        """Whether slot step+1 runs: r_{t,step+1} > tau, or step+1 <= the fixed-pruning depth (shared by the depth
        passes and the per-row schedule)."""
        return reach > tau if fixed is None else fixed > step

    # ------------------------------------------------------------------ parallel path
    def depth_pass(
        self, backbone, inputs: torch.Tensor, positions: torch.Tensor, q_tok: torch.Tensor, q_valid: torch.Tensor,
        past: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor] | None,
        apply_norm: bool = True,
    ) -> tuple[torch.Tensor, tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]]:
        """Run the backbone on packed slots of one depth (inputs [B,A,D]) against the stored keys `past`.

        q_tok [B,A]: token index t of each slot (causal order); q_valid [B,A]: False for packing filler.
        past = (per-layer (K, V) of earlier depths, key token index [B,N], key valid [B,N]) or None.
        Returns (hidden [B,A,D] (pre-norm if not `apply_norm`), the updated `past` including this pass's keys).
        """
        layers_kv, key_tok, key_valid = past if past is not None else (None, q_tok[:, :0], q_valid[:, :0])
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Idempotent (gradient-checkpoint recomputation calls it again): reads only the captured past.
            if layers_kv is not None:
                k = torch.cat([layers_kv[layer][0], k], dim=2)
                v = torch.cat([layers_kv[layer][1], v], dim=2)
            fresh[layer] = (k, v)
            return k, v

        key_tok = torch.cat([key_tok, q_tok], dim=1)
        key_valid = torch.cat([key_valid, q_valid], dim=1)
        n_old, n_new = key_tok.shape[1] - q_tok.shape[1], q_tok.shape[1]
        # Older depths are all <= this one, so the 2-D predicate reduces to t' <= t on executed keys.
        allowed = key_valid[:, None, :] & (key_tok[:, None, :] <= q_tok[:, :, None])
        own = torch.cat([torch.zeros(n_new, n_old, dtype=torch.bool, device=q_tok.device),
                         torch.eye(n_new, dtype=torch.bool, device=q_tok.device)], dim=1)
        mask = additive_mask(allowed | own[None])
        hidden = backbone.run(inputs, positions, mask, kv_hook=hook, apply_norm=apply_norm)
        return hidden, ([fresh[i] for i in range(len(fresh))], key_tok, key_valid)

    def depth_loop(self, backbone, inputs: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor,
                   positions: torch.Tensor, options, run_depth
                   ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The K+1 depth passes, shared by the parallel forward and prefill (they differ only in `run_depth`).

        inputs [B,T,D]: the token slots' inputs (rows, positions [B,T]: theirs, for fixed pruning); options: the
        knob values; run_depth(k, index [B,A], present [B,A], inputs [B,A,D]) runs depth k on the packed slots of
        tokens `index` (present False: packing filler) and returns their outputs
        (pre-norm if not `feedback_apply_norm`). Depth 0 is a plain dense pass over every token (padding
        included, like vanilla); later depths pack the tokens still active. Returns the slot states [B,T,n,D]
        (post-norm, zeros at non-executed slots), the continue gates of the executed steps and the depths K^.
        """
        B, T = valid.shape
        fixed = fixed_depths(options, rows, positions, self.config.max_steps)
        index, present, active = torch.arange(T, device=valid.device).expand(B, T), valid, valid
        reach, depth = torch.ones(B, T, device=valid.device), torch.zeros(B, T, dtype=torch.long, device=valid.device)
        slots, gates = [], []
        for k in range(self.config.max_steps + 1):
            inputs = scatter_tokens(inputs, index, present, run_depth(k, index, present, gather_tokens(inputs, index)))
            slots.append(torch.where(active[..., None], self.final_norm(backbone, inputs), 0.0))
            if k:
                depth += active.long()
            if k == self.config.max_steps:
                break
            gates.append(self.router(slots[-1], k))  # the continue gate after slot k, then the reach of slot k+1
            reach = reach * gates[-1]
            active = active & self.keep_going(reach, k, fixed, options.tau)
            if not active.any():
                break
            index, present = pack_active(active)
        return torch.stack(slots, dim=2), gates, depth

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        """K+1 exact depth passes over the still-active tokens (METHODS.md §8)."""
        valid = attention_mask.bool()
        positions = padding_positions(attention_mask)
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)
        past, slots_computed = None, 0

        def run_depth(k, index, present, inputs):
            nonlocal past, slots_computed
            slots_computed += index.numel()
            out, past = self.depth_pass(backbone, inputs, positions.gather(1, index), index, present, past,
                                        apply_norm=self.feedback_apply_norm)
            return out

        slot_hidden, gates, depth = self.depth_loop(backbone, backbone.embed(input_ids), valid, rows, positions,
                                                    self.options_or_saved(options), run_depth)
        gate_t = stack_gates(gates, valid.shape, input_ids.device)
        r, p = exit_weights(gate_t, depth)
        fused = fuse_exits(slot_hidden, p)
        # r_{t,k} is defined where slot k-1 ran: k <= K^_t + 1 (the last one is <= tau, the halting reach).
        k_idx = torch.arange(r.shape[-1], device=r.device)
        defined = (k_idx >= 1) & (k_idx <= depth[..., None] + 1)
        expected = (r * defined).sum(-1) * valid
        aux = None
        if self.training and labels is not None and self.config.cot_lambda > 0 \
                and self.training_progress >= self.config.cot_lambda_delay_steps:
            aux = self.penalty(backbone, slot_hidden, r, defined, labels, valid)
        # Diagnostics only (detached). slots_computed counts backbone slots incl. per-batch packing filler.
        stats = {"slots_computed": slots_computed, "slots_executed": int(valid.sum() + depth.sum()),
                 "expected_steps": expected.detach(), "exit_weights": p.detach(), "continue_probs": gate_t.detach(),
                 "slot_hidden": slot_hidden.detach()}
        return MethodOutput(hidden=fused, executed_steps=depth.float() * valid, aux_loss=aux, stats=stats)

    def penalty(self, backbone, slot_hidden: torch.Tensor, r: torch.Tensor, defined: torch.Tensor,
                labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """cot_lambda * mean_t sum_{k>=1} r_{t,k} sg(q_{t,k-1})^beta, q = p(x_{t+1}) read from slot (t,k-1)."""
        B, T = labels.shape
        target = torch.cat([labels[:, 1:], labels[:, :1]], dim=1).clamp(min=0)
        has_target = torch.zeros_like(valid)
        has_target[:, :-1] = valid[:, :-1] & valid[:, 1:] & (labels[:, 1:] != -100)
        terms = torch.zeros(B, T, device=labels.device)
        with torch.no_grad():  # q is a stop-gradient weight; computed only on executed slots with a target
            qs = []
            for j in range(min(slot_hidden.shape[2], r.shape[-1] - 1)):
                sel = has_target & defined[..., j + 1]
                q = torch.zeros(B, T, device=labels.device)
                if sel.any():
                    logp = torch.log_softmax(backbone.head(slot_hidden[:, :, j][sel]).float(), dim=-1)
                    q[sel] = logp.gather(1, target[sel][:, None])[:, 0].exp()
                qs.append(q)
        for j, q in enumerate(qs):
            terms = terms + torch.where(defined[..., j + 1], r[..., j + 1] * q.pow(self.config.cot_beta), 0.0)
        count = has_target.sum().clamp(min=1)
        return self.config.cot_lambda * (terms * has_target).sum() / count

    # ------------------------------------------------------------------ sequential path
    def prefill(self, backbone, state: DecodeState, input_ids, attention_mask):
        """Depth-major, as in training: depth k runs once over the prompt's tokens still thinking at k,
        packed left per row. The 2-D mask makes this exact (a depth-k slot reads no deeper key)."""
        valid = attention_mask.bool()
        positions = prompt_positions(state, valid)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)

        def run_depth(k, index, present, inputs):
            return self.run_cached_block(backbone, state, inputs, positions.gather(1, index), k,
                                         self.token_bias(present), allowed_extra_fn=_depth_at_most(k),
                                         apply_norm=self.feedback_apply_norm)

        slots, gates, depth = self.depth_loop(backbone, backbone.embed(input_ids), valid, rows, positions,
                                              state.options, run_depth)
        state.next_position += valid.long().sum(-1)
        _, p = exit_weights(stack_gates(gates, valid.shape, valid.device), depth)
        return backbone.head(fuse_exits(slots, p)), depth.float() * valid

    # ------------------------------------------------------------------ per-row schedule (continuous batching)
    supports_row_schedule = True

    def new_rows(self, batch, device, dtype):
        K, d = self.config.max_steps, self.config.hidden_size
        return LatentCoTRows.empty(batch, d, device, dtype,
                                   slots=torch.zeros(batch, K + 1, d, device=device, dtype=dtype),
                                   gates=torch.ones(batch, K, device=device), reach=torch.ones(batch, device=device))

    def row_start(self, backbone, state: DecodeState, token_ids, rows):
        super().row_start(backbone, state, token_ids, rows)
        state.rows.reach = torch.where(rows, 1.0, state.rows.reach)

    def row_slot(self, state: DecodeState):
        # Slot (t,k) sees cached keys of depth <= k (the 2-D mask, per row); a halted row runs no more slots
        # and writes nothing for them (real early exit).
        return torch.zeros(state.rows.depth.shape, device=state.rows.depth.device), _depth_at_most(state.rows.depth)

    def row_finish(self, backbone, state: DecodeState, hidden: torch.Tensor, feedback: torch.Tensor | None = None):
        K = self.config.max_steps
        row = state.rows
        busy, k = row.busy, row.depth
        rows = torch.arange(busy.shape[0], device=busy.device)
        slots = row.store(hidden)
        keep = torch.zeros_like(busy)
        gates = row.gates.clone()
        fixed = fixed_depths(state.options, rows, state.next_position, K)
        for step in range(K):
            at = busy & (k == step)
            if bool(at.any()):
                g = self.router(hidden, step)
                gates[:, step] = torch.where(at, g, gates[:, step])
                reach = torch.where(at, row.reach * g, row.reach)
                keep = keep | (at & self.keep_going(reach, step, fixed, state.options.tau))
                row.reach = reach
        row.gates = gates
        done = busy & ~keep
        row.inputs = hidden if feedback is None else feedback
        logits = self.complete_rows(backbone, state, done, lambda: fuse_exits(slots, exit_weights(gates, k)[1]))
        return done, logits, k.float()


@dataclass
class LatentCoTRows(SlotRows):
    """Per row: the continue gates of the token's slots so far [B,K] and their running product, the reach [B]."""

    gates: torch.Tensor
    reach: torch.Tensor


def _depth_at_most(depth: int | torch.Tensor):
    """Decode predicate of the 2-D mask for a depth-`depth` query (an int, or per row [B]): keys of depth <= it
    ([B,1,N] bool)."""
    if isinstance(depth, torch.Tensor):
        depth = depth[:, None, None]
    return lambda cache: cache.entry_view()["depth"][:, None, :] <= depth
