"""PonderLM-3 (METHODS.md §6): PonderLM-2 + a router over depths, a tail-CDF soft mask and hard pruning.

- Router on the token slot's state: `s_t = softmax(Router(h_t^(0)))` in R^{K+1}, `s_{t,k}` = P(token t
  uses exactly k extra steps). At inference the logits get a bias `alpha * k`.
- Tail-CDF mask score `w_{t,k} = sum_{j>=k} s_{t,j}` (w_0 = 1, non-increasing). In training every
  query adds `log(max(w_{t,k}, eps))` to its attention logit on latent key (t,k), in every layer and
  head: a differentiable stand-in for "slot k exists with probability w_k".
- Fused output `h^_t = sum_k s_{t,k} h_t^(k)`.
- Jacobi as in PonderLM-2, re-estimating the router from the current `h_t^(0)` inside every sweep.
- Inference: `K^_t = max{k : w_{t,k} >= tau}`, known as soon as slot (t,0) has run, so slots beyond
  K^_t are never computed nor cached; kept latent keys keep their `log w` bias in the cache.
- `latent_feedback="pre_norm"` changes only what latent slots take as input (the residual stream);
  the router reads the post-norm `h_t^(0)` and the fusion post-norm `h_t^(k)` either way.
- `router_warmup_steps=N` (training only): for the first N optimizer steps `s` is held at the router's initial
  prior (uniform, or the full-depth bias), the same for every token, so the latent slots get every token's
  gradient (as in PonderLM-2) before the router may turn them off (docs/REASONING.md: on the hop task a free
  router turns the latent step off for the hard queries before it has learned anything, and it never recovers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import initialization as init

from ponderlm.config import option
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    SlotRows,
    padding_positions,
    register_method,
)
from ponderlm.methods.fixed_pruning import FixedPruning, fixed_depths
from ponderlm.methods.ponderlm2 import PonderLM2


class DepthRouter(nn.Module):
    """Linear(d, K+1), or a 1-hidden-layer MLP when router_hidden_size > 0."""

    def __init__(self, hidden_size: int, max_steps: int, router_hidden_size: int, init_kind: str, init_bias: float):
        super().__init__()
        if router_hidden_size > 0:
            self.net = nn.Sequential(nn.Linear(hidden_size, router_hidden_size), nn.GELU(),
                                     nn.Linear(router_hidden_size, max_steps + 1))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, max_steps + 1))
        self.init_kind = init_kind
        self.init_bias = init_bias

    def prior(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The prior logits [K+1] the output bias starts at: 0, or `init_bias` on the full depth K."""
        prior = torch.zeros(self.net[-1].out_features, device=device, dtype=dtype)
        if self.init_kind == "full_depth":
            prior[-1] = self.init_bias
        return prior

    def init_ponder_weights(self) -> None:
        # Small output weights keep s near the bias-defined prior at the start of training.
        out = self.net[-1]
        init.normal_(out.weight, mean=0.0, std=1e-3)
        init.copy_(out.bias, self.prior(out.bias.device, out.bias.dtype))

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        return self.net(h0)


def tail_cdf(step_probs: torch.Tensor) -> torch.Tensor:
    """w_k = sum_{j>=k} s_j along the last dim ([..., K+1] -> [..., K+1], w_0 = 1)."""
    return step_probs.flip(-1).cumsum(-1).flip(-1)


@register_method("ponderlm3")
class PonderLM3(FixedPruning, PonderLM2):
    adaptive = True
    stand_in_options = {"router_init": "uniform"}  # an undecided router, spread by `spread_stand_in`

    class Options(PonderLM2.Options, FixedPruning.Options):
        router_hidden_size: int = option(0, low=0)  # 0 = linear router
        router_init: str = option("full_depth", choices=("full_depth", "uniform"))
        router_init_bias: float = option(2.0)
        mask_eps: float = option(1e-6, low=0.0, high=1.0, low_open=True, high_open=True)
        lambda_steps: float = option(0.0, low=0.0)
        renormalize_pruned: bool = option(False)
        router_warmup_steps: int = option(0, low=0)  # training steps with s held at the router's initial prior
        tau: float = option(1e-4, low=0.0, high=1.0, high_open=True, knob=True,
                            help="pruning / halting threshold")  # depth K^ = max{k : w_k >= tau}
        alpha: float = option(0.0, knob=True, help="router bias at inference",  # logits + alpha * k
                              sweep=(-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0))

    @staticmethod
    def router_flops(config) -> int:
        d, K, h = config.hidden_size, max(config.max_steps, 1), config.router_hidden_size
        return 2 * (d * (K + 1) if h == 0 else d * h + h * (K + 1))

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        # Training: dense Jacobi passes (jacobi_detach not priced). Eval: every pass after the first runs only the
        # slots the pruning rule keeps, packed (`grid_pass`), priced at the final depths' step fractions a. One
        # router call per refresh (x2 in eval: the mask bias and the pruning rule) + the final one.
        calls = (config.max_steps + sweeps) * (1 if training else 2) + 1
        return cls.jacobi_passes(config, T, sweeps, kept=None if training else a), \
            [(calls * cls.router_flops(config), True)]

    @classmethod
    def decode_cost(cls, config, costs, a):
        return cls.router_flops(config)

    def spread_stand_in(self, scale: float) -> None:
        nn.init.normal_(self.router.net[0].weight, std=scale / self.config.hidden_size**0.5)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.router = DepthRouter(config.hidden_size, config.max_steps, config.router_hidden_size,
                                  config.router_init, config.router_init_bias)

    # ------------------------------------------------------------------ router
    def route(self, token_hidden: torch.Tensor, options=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step distribution s and tail-CDF w ([..., K+1]) from the token slots' states h^(0) (options: the knob
        values, None: the config's)."""
        logits = self.router(token_hidden).float()
        if self.training and self.training_progress < self.config.router_warmup_steps:
            # Held at the prior; `0 * logits` keeps the router in the graph (zero gradient, no unused parameter).
            logits = 0.0 * logits + self.router.prior(logits.device)
        alpha = self.options_or_saved(options).alpha
        if not self.training and alpha != 0.0:
            steps = torch.arange(self.config.max_steps + 1, device=logits.device, dtype=logits.dtype)
            logits = logits + alpha * steps
        s = torch.softmax(logits, dim=-1)
        return s, tail_cdf(s)

    def mask_bias(self, w: torch.Tensor) -> torch.Tensor:
        return torch.log(w.clamp(min=self.config.mask_eps))

    def depth(self, w: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, options) -> torch.Tensor:
        """Inference depth K^ (long): a fixed-pruning draw if configured, else max{k : w_k >= tau}."""
        fixed = fixed_depths(options, rows, positions, self.config.max_steps)
        if fixed is not None:
            return fixed
        return ((w >= options.tau).long().sum(-1) - 1).clamp(min=0)

    # ------------------------------------------------------------------ Jacobi hooks
    def latent_key_bias(self, token_hidden: torch.Tensor, options) -> torch.Tensor:
        _, w = self.route(token_hidden, options)
        return self.mask_bias(w[..., 1:]).to(token_hidden.dtype)

    def fuse(self, slot_hidden: torch.Tensor, s: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """sum_k s_k h^(k) over executed k <= depth (all k in training); optional renormalisation."""
        weights = s
        if depth is not None:
            k = torch.arange(s.shape[-1], device=s.device)
            weights = s * (k <= depth[..., None])
            if self.config.renormalize_pruned:
                weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
        return (weights.to(slot_hidden.dtype)[..., None] * slot_hidden).sum(-2)

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None):
        options = self.options_or_saved(options)
        valid = attention_mask.bool()
        K = self.config.max_steps
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        positions = padding_positions(attention_mask)
        slot_valid_fn = None
        if not self.training:
            kk = torch.arange(K + 1, device=input_ids.device)

            def slot_valid_fn(token_hidden: torch.Tensor) -> torch.Tensor:
                return kk <= self.depth(self.route(token_hidden, options)[1], rows, positions, options)[..., None]

        hidden = self.jacobi(backbone, input_ids, attention_mask, self.num_sweeps(options), slot_valid_fn=slot_valid_fn,
                             options=options)
        s, w = self.route(hidden[:, :, 0], options)
        expected = w[..., 1:].sum(-1)  # expected extra steps per token
        if self.training:
            depth = None
            steps = torch.full(valid.shape, float(K), device=valid.device)
        else:
            depth = self.depth(w, rows, positions, options)
            steps = depth.float()
        fused = self.fuse(hidden, s, depth)
        aux = None
        validf = valid.float()
        if self.training and self.config.lambda_steps > 0:
            aux = self.config.lambda_steps * (expected * validf).sum() / validf.sum().clamp(min=1) / K
        return MethodOutput(hidden=fused, executed_steps=steps * validf, aux_loss=aux,
                            stats={"slot_hidden": hidden, "step_probs": s, "expected_steps": expected * validf})

    # ------------------------------------------------------------------ per-slot decode (real early exit)
    supports_row_schedule = True
    decode_token = PonderMethod.decode_token  # the per-slot policy below, not PonderLM-2's fixed-depth loop

    def new_rows(self, batch, device, dtype):
        K, d = self.config.max_steps, self.config.hidden_size
        return PonderLM3Rows.empty(
            batch, d, device, dtype, slots=torch.zeros(batch, K + 1, d, device=device, dtype=dtype),
            s=torch.zeros(batch, K + 1, device=device), w=torch.ones(batch, K + 1, device=device),
            target=torch.zeros(batch, dtype=torch.long, device=device))

    def row_slot(self, state: DecodeState):
        row = state.rows
        # Token slots carry no bias; kept latent slot k carries log w_k of its token. A row's depth K^ is known
        # once slot (t,0) has run, so slots beyond it are never computed nor cached (real early exit).
        latent = self.mask_bias(row.w.gather(1, row.depth[:, None])[:, 0])
        return torch.where(row.depth > 0, latent, 0.0), None

    def row_finish(self, backbone, state: DecodeState, hidden: torch.Tensor, feedback: torch.Tensor | None = None):
        row = state.rows
        busy, k = row.busy, row.depth
        rows = torch.arange(busy.shape[0], device=busy.device)
        slots = row.store(hidden)
        started = busy & (k == 0)
        if bool(started.any()):  # the depth is decided from h^(0), before any latent slot runs
            s, w = self.route(hidden, state.options)
            target = self.depth(w, rows, state.next_position, state.options)
            row.s = torch.where(started[:, None], s, row.s)
            row.w = torch.where(started[:, None], w, row.w)
            row.target = torch.where(started, target, row.target)
        done = busy & (k >= row.target)
        row.inputs = hidden if feedback is None else feedback
        logits = self.complete_rows(backbone, state, done, lambda: self.fuse(slots, row.s, row.target))
        return done, logits, row.target.float()


@dataclass
class PonderLM3Rows(SlotRows):
    """Per row: the token's step distribution s and tail-CDF w [B,K+1] and its depth K^ [B]."""

    s: torch.Tensor
    w: torch.Tensor
    target: torch.Tensor
