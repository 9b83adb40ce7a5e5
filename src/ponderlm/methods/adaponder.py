"""AdaPonderLM (METHODS.md §7): PonderLM v1 + per-iteration gates, monotone halting and KV reuse.

- Gates: after pass i = 1..K, `s_t^i = sigmoid(MLP_i(h_t^i))`, one 2-layer MLP per iteration,
  output bias initialised open (`gate_init_bias`).
- Monotone halting: `m^0 = 1`, `m_t^i = m_t^{i-1} * 1[s_t^i >= tau]`; the update is
  `U_t^i = U_t^{i-1} + m_t^i s_t^i e_t^i` with `e = P^i (gamma E)`.
- KV reuse: in pass i+1 a halted token's keys/values and hidden state are those of its last
  active pass. The dense path applies `where(m, new, previous)` through the backbone's `kv_hook`;
  decoding never computes a halted token's later passes and aliases its last cache entry
  (`depth_last = K`) instead of copying it. The prediction reads the last active pass, so both
  paths agree exactly. Executed additional steps = sum_i m_t^i.
- Loss: CE + `halt_lambda * bottomk(s)`, the mean of the smallest `k_frac` fraction of the gate
  values the halting rule evaluated (valid tokens still active before the gate); `k_frac` ramps
  linearly 0 -> `halt_k_frac` over `halt_k_frac_ramp_steps` optimiser steps.
- Fixed pruning (§9): with `depth_policy` uniform/geometric a token of depth d is active in passes
  1..d+1 regardless of its gates (which still scale its updates).
- Continued pretraining: `freeze_backbone_for_gates(model)` trains the gates only, then
  `.restore()` (or leaving the `with` block) unfreezes everything (trainer key
  `train.freeze_backbone_steps`, see docs/ADAPONDER.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from transformers import initialization as init

from ponderlm.config import option
from ponderlm.methods.base import register_method
from ponderlm.methods.fixed_pruning import FixedPruning, fixed_depths
from ponderlm.methods.ponderlm_v1 import RecurrentPonder


class HaltGate(nn.Module):
    """Linear(d, h) -> GELU -> Linear(h, 1) -> sigmoid: the gate of one iteration.

    The output layer's parameters live directly on this module: Hugging Face skips `_init_weights`
    for custom-code modules without direct parameters, which would skip `init_ponder_weights`.
    """

    def __init__(self, hidden_size: int, gate_hidden_size: int, init_bias: float, init_std: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, gate_hidden_size)
        self.act = nn.GELU()
        self.out_weight = nn.Parameter(torch.zeros(gate_hidden_size))
        self.out_bias = nn.Parameter(torch.zeros(()))
        self.init_bias = init_bias
        self.init_std = init_std

    def init_ponder_weights(self) -> None:
        # Open at the start (sigmoid(3) ~ 0.95): the model begins as PonderLM v1 and learns to close.
        init.normal_(self.out_weight, mean=0.0, std=self.init_std)
        init.constant_(self.out_bias, self.init_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> gate values s [...] in (0, 1), float32."""
        logit = self.act(self.fc1(hidden)) @ self.out_weight + self.out_bias
        return torch.sigmoid(logit.float())


@register_method("adaponder")
class AdaPonder(FixedPruning, RecurrentPonder):
    adaptive = True
    variable_passes = True

    class Options(RecurrentPonder.Options, FixedPruning.Options):
        gate_hidden_size: int | None = option(None)  # None: d // 4
        gate_init_bias: float = option(3.0)
        halt_lambda: float = option(0.1, low=0.0)
        halt_k_frac: float = option(0.1, low=0.0, high=1.0)
        halt_k_frac_ramp_steps: int = option(1000)
        tau: float = option(1e-4, low=0.0, high=1.0, high_open=True, knob=True,  # a token continues while s >= tau
                            help="pruning / halting threshold", sweep=(1e-4, 0.05, 0.2, 0.4, 0.6, 0.8))

    @staticmethod
    def gate_flops(config) -> int:
        d = config.hidden_size
        h = config.gate_hidden_size or max(1, d // 4)
        return 2 * (d * h + h)

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        passes, extras = super().parallel_cost(config, costs, T, a, sweeps, training)
        gated = min(int(passes[0].count), config.max_steps)  # gates after passes 1..min(m+1, K)
        return passes, [*extras, (gated * cls.gate_flops(config), True)]

    @classmethod
    def decode_cost(cls, config, costs, a):
        return super().decode_cost(config, costs, a) + sum(a[: config.max_steps]) * cls.gate_flops(config)

    @staticmethod
    def freeze_backbone(model: nn.Module) -> _FrozenBackbone:
        """`train.freeze_backbone_steps`: the halting gates train alone first."""
        return freeze_backbone_for_gates(model)

    def __init__(self, config) -> None:
        super().__init__(config)
        hidden = config.gate_hidden_size or max(1, config.hidden_size // 4)
        self.gates = nn.ModuleList(
            HaltGate(config.hidden_size, hidden, config.gate_init_bias, config.initializer_range)
            for _ in range(config.max_steps)
        )

    def halting(self, index, hidden, active, rows, positions, options):
        """Gate `index` (1..K) on h^index; m^index = m^{index-1} * 1[s >= tau] (or the fixed depth >= index)."""
        s = self.gates[index - 1](hidden)
        depth = fixed_depths(options, rows, positions, self.config.max_steps)
        keep = depth >= index if depth is not None else s >= options.tau
        return s, active & keep

    def k_frac(self) -> float:
        """Linear ramp 0 -> halt_k_frac over halt_k_frac_ramp_steps (reads `training_progress`)."""
        ramp = self.config.halt_k_frac_ramp_steps
        progress = 1.0 if ramp <= 0 else min(1.0, self.training_progress / ramp)
        return self.config.halt_k_frac * progress

    def aux_loss(self, gates, valid):
        """halt_lambda * mean of the smallest k_frac of all evaluated gate values (training only)."""
        if not self.training or not gates or self.config.halt_lambda == 0:
            return None
        values = torch.cat([s[m] for s, m in gates])
        k = math.floor(self.k_frac() * values.numel())
        if k == 0:
            # Keep the graph connected (DDP expects every gate parameter to receive a gradient).
            return values.sum() * 0.0
        return self.config.halt_lambda * torch.topk(values, k, largest=False).values.mean()


class _FrozenBackbone:
    """Result of `freeze_backbone_for_gates`: `.restore()` or use as a context manager."""

    def __init__(self, model: nn.Module) -> None:
        method = getattr(model, "method", None)
        if not isinstance(method, AdaPonder):
            raise ValueError("freeze_backbone_for_gates needs a model built with method='adaponder'")
        gate_ids = {id(p) for p in method.gates.parameters()}
        self._saved = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in self._saved:
            p.requires_grad_(id(p) in gate_ids)

    def restore(self) -> None:
        for p, flag in self._saved:
            p.requires_grad_(flag)

    def __enter__(self) -> _FrozenBackbone:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def freeze_backbone_for_gates(model: nn.Module) -> _FrozenBackbone:
    """Gates-only stage of continued pretraining: every parameter but the gates stops requiring grad now.

    Call `.restore()` (or leave the `with` block) to train everything again. Optimisers skip
    parameters whose `.grad` is None, so zero grads with `set_to_none=True` while frozen.
    """
    return _FrozenBackbone(model)
