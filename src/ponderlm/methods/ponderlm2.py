"""PonderLM-2 (METHODS.md §5): K latent thoughts interleaved after each token, solved by Jacobi.

Layout: T(K+1) slots (1,0),(1,1)..(1,K),(2,0).. ; slot (t,0) is the token (scaled embedding),
slot (t,k>=1) takes the previous slot's last hidden state as input; all slots of token t share
position id t; causal attention over slot order; the prediction reads slot (t,K).

`latent_feedback` chooses that fed-back state: "post_norm" (default, the papers) the output after
the final norm, "pre_norm" the residual stream before it. Only the latent inputs change: the LM
head, PonderLM-3's router and fusion keep reading post-norm states. Passes feeding latents then
run without the final norm and `final_norm` applies it where a state is read (`PonderMethod`).

Training solves the self-referential inputs in parallel: K stage-building passes over growing
prefixes of the slot grid, R Jacobi sweeps over the full grid (R ~ U{jacobi_iters_train}), and a
final pass whose output is used. With enough sweeps this equals token-by-token decoding exactly.

`PonderLM2` is also the base of PonderLM-3, which overrides `latent_key_bias` (soft mask on latent
keys), its forward (router, fusion of the slot states) and the decode (a per-slot policy with a depth
decision), and reuses the Jacobi machinery (`jacobi`, `grid_pass`).
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import CausalKeyBias, slot_causal_mask
from ponderlm.config import option
from ponderlm.flops import full_pass
from ponderlm.methods.base import (
    DecodeState,
    MethodOutput,
    PonderMethod,
    gather_tokens,
    pack_active,
    padding_positions,
    register_method,
    scatter_tokens,
)


def interleave(slots: torch.Tensor) -> torch.Tensor:
    """[B,T,n,...] slot grid -> [B,T*n,...] slot sequence in causal slot order."""
    b, t, n = slots.shape[:3]
    return slots.reshape(b, t * n, *slots.shape[3:])


def deinterleave(seq: torch.Tensor, n: int) -> torch.Tensor:
    b, s = seq.shape[:2]
    return seq.reshape(b, s // n, n, *seq.shape[2:])


def grid_pass(
    backbone,
    grid_inputs: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    latent_bias: torch.Tensor | None,
    slot_valid: torch.Tensor | None = None,
    apply_norm: bool = True,
) -> torch.Tensor:
    """Run F over a slot grid [B,T,n,D] (n <= K+1 leading slots per token) -> hidden grid [B,T,n,D].

    slot_valid [B,T,n] optionally removes slots (pruned latent steps) from attention. With
    `apply_norm` False the grid holds the residual stream before the final norm.
    """
    b, t, n, _ = grid_inputs.shape
    key_valid = valid[:, :, None].expand(b, t, n)
    if slot_valid is not None:
        key_valid = key_valid & slot_valid
    key_bias = None
    if latent_bias is not None and n > 1:
        key_bias = torch.cat([torch.zeros_like(latent_bias[:, :, :1]), latent_bias[:, :, : n - 1]], dim=2)
        key_bias = interleave(key_bias)
    pos = interleave(positions[:, :, None].expand(b, t, n))
    inputs = interleave(grid_inputs)
    if slot_valid is not None:
        # Pruned (and padding) slots are removed, not masked: the pass runs only the kept slots,
        # packed left per row in slot order (so causal order is index order). A removed slot's
        # output is its input, a starting guess should a later sweep's router keep it.
        index, present = pack_active(interleave(key_valid))
        bias = None if key_bias is None else gather_tokens(key_bias, index)
        # Kept slots come first in every row, so a plain causal order never lets a kept slot see the
        # filler behind it: the mask is causal + key bias, which attention folds into the heads.
        mask = slot_causal_mask(present, None) if bias is None else CausalKeyBias(bias)
        packed = backbone.run(gather_tokens(inputs, index), gather_tokens(pos, index), mask, apply_norm=apply_norm)
        return deinterleave(scatter_tokens(inputs, index, present, packed), n)
    if key_bias is not None and key_bias.requires_grad and bool(valid.all()):
        # No padding: the mask is causal plus a key bias, which attention folds into the heads
        # rather than differentiating a dense [B,1,S,S] mask (PonderLM-3 training).
        mask = CausalKeyBias(key_bias)
    else:
        mask = slot_causal_mask(interleave(key_valid), key_bias)
    return deinterleave(backbone.run(inputs, pos, mask, apply_norm=apply_norm), n)


@register_method("ponderlm2")
class PonderLM2(PonderMethod):
    """PonderLM-2: fixed K latent thoughts per token."""

    interleaved = True
    embed_scale_factor = 2.5  # sqrt(2.5 d): the token slot's input RMS is near 1 under the ponder init

    class Options(PonderMethod.Options):
        jacobi_iters_train: list[int] | tuple[int, ...] = option((2, 3), low=0)  # R drawn from these per training step
        jacobi_iters_eval: int = option(3, low=0, knob=True, help="Jacobi sweeps R of the eval-mode parallel forward")
        jacobi_detach: bool = option(False)  # stop gradients through all but the final pass

    @staticmethod
    def jacobi_passes(config, T: int, sweeps: float, grad: bool = True, kept: list[float] | None = None) -> list:
        """K stage passes over growing prefixes (1..K slots per token), R sweeps + 1 final pass over K+1 slots.
        `kept` (step fractions a_0..a_K): a pass runs only the kept slots, packed (PonderLM-3's pruned evaluation),
        so a pass over n leading slots has a_0 + ... + a_{n-1} slots per token."""
        K = config.max_steps

        def width(n: int) -> float:
            return n if kept is None else sum(kept[:n])

        return [*(full_pass(width(n), T, grad=grad) for n in range(1, K + 1)),
                full_pass(width(K + 1), T, grad=grad, count=sweeps), full_pass(width(K + 1), T)]

    @classmethod
    def sweeps(cls, config, training: bool, peak: bool = False) -> float:
        if not training:
            return config.jacobi_iters_eval
        iters = config.jacobi_iters_train  # R ~ U{jacobi_iters_train} per step: the expected cost uses its mean
        return max(iters) if peak else sum(iters) / len(iters)

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return cls.jacobi_passes(config, T, sweeps, grad=not (training and config.jacobi_detach)), []

    # ------------------------------------------------------------------ hook for PonderLM-3
    def latent_key_bias(self, token_hidden: torch.Tensor, options) -> torch.Tensor | None:
        """Additive bias [B,T,K] for latent keys (t,1..K) given the token slots' states h^(0) [B,T,D]."""
        return None

    # ------------------------------------------------------------------ parallel path
    _sweep_step, _sweep_draws = -1, 0  # the optimizer step of the last sweep draw, draws made in it

    def num_sweeps(self, options) -> int:
        """R: drawn from `jacobi_iters_train` in training, the knob `jacobi_iters_eval` otherwise.

        The draw is a function of (optimizer step, draw index within the step) through its own
        `torch.Generator`: the same on every rank (they must run the same passes) and after a resume,
        and independent of the global RNGs that data order and dropout use."""
        if not self.training:
            return options.jacobi_iters_eval
        if self._sweep_step != self.training_progress:
            self._sweep_step, self._sweep_draws = self.training_progress, 0
        self._sweep_draws += 1
        seed = (self.training_progress * 1_000_003 + self._sweep_draws) % 2**63
        choices = self.config.jacobi_iters_train
        index = int(torch.randint(len(choices), (1,), generator=torch.Generator().manual_seed(seed)))
        return choices[index]

    def jacobi(
        self,
        backbone,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        num_sweeps: int,
        slot_valid_fn=None,
        trace: list[torch.Tensor] | None = None,
        options=None,
    ) -> torch.Tensor:
        """Solve the slot grid; return the final pass's (post-norm) hidden grid [B,T,K+1,D].

        slot_valid_fn(token_hidden [B,T,D]) -> [B,T,K+1] bool, if given, prunes slots (threshold eval).
        trace, if a list, receives the hidden grid of the last stage and of every sweep (Jacobi RMSE).
        options: the knob values (None: the config's).
        """
        options = self.options_or_saved(options)
        K = self.config.max_steps
        valid = attention_mask.bool()
        positions = padding_positions(attention_mask)
        token_inputs = backbone.embed(input_ids)
        detach = self.config.jacobi_detach and self.training
        latents: list[torch.Tensor] = []  # inputs of slots 1..n-1, i.e. h^(0..n-2) (pre-norm under pre_norm)
        apply_norm = self.feedback_apply_norm
        latent_bias = None
        slot_valid = None

        def inputs_grid() -> torch.Tensor:
            lat = [x.detach() for x in latents] if detach else latents
            return torch.stack([token_inputs, *lat], dim=2)

        # (a) stage building: pass k sees stages 0..k, then stage k+1 gets inputs from it.
        # All latent inputs are refreshed from the newest pass (a Jacobi update on the prefix grid).
        for _ in range(K):
            n = len(latents) + 1
            out = grid_pass(backbone, inputs_grid(), positions, valid, latent_bias,
                            None if slot_valid is None else slot_valid[:, :, :n], apply_norm=apply_norm)
            latents = [out[:, :, j] for j in range(n)]
            latent_bias, slot_valid = self._refresh(self.final_norm(backbone, out[:, :, 0]), slot_valid_fn, options)
        # (b) R Jacobi sweeps over the full grid and (c) the final pass (the last iteration here).
        for sweep in range(num_sweeps + 1):
            out = grid_pass(backbone, inputs_grid(), positions, valid, latent_bias, slot_valid, apply_norm=apply_norm)
            if trace is not None:
                trace.append(self.final_norm(backbone, out).detach())
            if sweep < num_sweeps:
                latents = [out[:, :, j] for j in range(K)]
                latent_bias, slot_valid = self._refresh(self.final_norm(backbone, out[:, :, 0]), slot_valid_fn,
                                                        options)
        return self.final_norm(backbone, out)

    def _refresh(self, token_hidden: torch.Tensor, slot_valid_fn,
                 options) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        bias = self.latent_key_bias(token_hidden, options)
        slot_valid = slot_valid_fn(token_hidden) if slot_valid_fn is not None else None
        return bias, slot_valid

    def solver_trace(self, backbone, input_ids, attention_mask, sweeps, options):
        trace: list[torch.Tensor] = []
        self.jacobi(backbone, input_ids, attention_mask, sweeps, trace=trace, options=options)
        return trace

    def forward(self, backbone, input_ids, attention_mask, labels=None, options=None) -> MethodOutput:
        options = self.options_or_saved(options)
        hidden = self.jacobi(backbone, input_ids, attention_mask, self.num_sweeps(options), options=options)
        return MethodOutput(hidden=hidden[:, :, -1], executed_steps=self.full_steps(attention_mask.bool()),
                            stats={"slot_hidden": hidden})

    # ------------------------------------------------------------------ sequential path
    def decode_token(self, backbone, state: DecodeState, input_ids, valid):
        bias = self.token_bias(valid)
        apply_norm = self.feedback_apply_norm
        x = self.run_cached_slot(backbone, state, backbone.embed(input_ids), 0, bias, apply_norm=apply_norm)
        slots = [self.final_norm(backbone, x)]
        for k in range(1, self.config.max_steps + 1):
            x = self.run_cached_slot(backbone, state, x, k, bias, apply_norm=apply_norm)
            slots.append(self.final_norm(backbone, x))
        state.next_position += valid.long()
        if state.slot_trace is not None:
            state.slot_trace.append(torch.stack(slots, dim=1))
        return backbone.head(slots[-1]), self.full_steps(valid)
