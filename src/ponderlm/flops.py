"""Compute accounting (METHODS.md "Compute accounting"): analytic FLOPs of every method, a FLOP counter
for real forwards, and a per-token ledger for decoding.

Conventions (docs/COMPUTE.md has the derivations and a table):

- A matmul of an [m, k] by [k, n] matrix costs 2mkn FLOPs (multiply + add). Only matmuls count:
  norms, activations, softmax, RoPE and the embedding lookup are ignored (as FlopCounterMode does).
- One slot through the stack costs `2 * P_layer * L` (P_layer = matmul parameters of one layer:
  attention projections + MLP); the LM head costs `2 d V` wherever it is applied (every token's
  readout; PonderLM v1/AdaPonderLM also per feedback step, plus `2 V d` for `P (gamma E)`).
- Attention costs `4 * H * head_dim * L` per (query slot, key) pair (QK^T and AV).
  **Executed** attention counts every key in the score matrix the kernel multiplies: a dense masked
  parallel forward over S slots does S keys per query. **Useful** attention counts only keys the
  causal mask can show: `(S+1)/2` per query on average. In cached decoding the two coincide: a
  query attends over the real cache length (all entries written so far, latent slots included).
- `forward` = decoding cost per token (what inference executes), averaged over the positions of a
  sequence of `seq_len` tokens (causal average context). `parallel` = one parallel forward as
  implemented (executed/dense; this is what `count_flops` measures). `training` = forward +
  backward: 3x the forward FLOPs of every differentiated pass, 1x for non-differentiated ones,
  with useful attention (`training_executed` uses executed attention).
- Adaptive methods: `avg_steps` (a float, or per-token executed steps) sets how many latent slots /
  passes run. Parallel forwards of PonderLM-3 and AdaPonderLM are dense (every slot is computed, masks
  decide); latent CoT's parallel forward drops halted tokens, so its training cost follows `avg_steps`.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ponderlm.registry import method_class, method_names


# --------------------------------------------------------------------------- per-config constants
@dataclass(frozen=True)
class Costs:
    """FLOP constants of one config (everything per token or per (query, key) pair)."""

    slot: int  # one slot through all L layers: 2 * P_layer * L
    head: int  # LM head on one state: 2 d V
    mix: int  # P (gamma E): 2 V d
    attn_key: int  # one (query, key) pair in all layers: 4 * H * head_dim * L

    @classmethod
    def of(cls, config) -> Costs:
        d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
        q_dim = config.num_attention_heads * config.head_dim
        kv_dim = config.num_key_value_heads * config.head_dim
        attn_params = d * q_dim + 2 * d * kv_dim + q_dim * d
        mlp_params = (3 if config.backbone == "llama" else 2) * d * config.intermediate_size
        return cls(slot=2 * (attn_params + mlp_params) * L, head=2 * d * V, mix=2 * V * d, attn_key=4 * q_dim * L)


def step_fractions(avg_steps: Any, K: int) -> list[float]:
    """a_k, k = 0..K: fraction of tokens that execute slot/pass k (a_0 = 1, non-increasing).

    A float average is spread as evenly as possible (every token runs floor(avg) steps, a fraction
    runs one more); a tensor/sequence of per-token executed steps gives the exact fractions.
    """
    if isinstance(avg_steps, (int, float)):
        s = min(max(float(avg_steps), 0.0), float(K))
        return [1.0] + [min(max(s - (k - 1), 0.0), 1.0) for k in range(1, K + 1)]
    steps = torch.as_tensor(avg_steps, dtype=torch.float64).flatten()
    if steps.numel() == 0:
        raise ValueError("avg_steps: empty per-token steps")
    return [1.0] + [float((steps >= k).double().mean()) for k in range(1, K + 1)]


@dataclass
class Pass:
    """`count` backbone runs of one forward, each with `queries` query slots per token (a fraction if only some
    tokens take part) and `keys_exec` / `keys_useful` keys per query slot; `grad`: differentiated in training."""

    queries: float
    keys_exec: float
    keys_useful: float
    grad: bool = True
    count: float = 1

    @property
    def slots(self) -> float:
        return self.queries * self.count


def full_pass(slots_per_token: float, T: int, grad: bool = True, count: float = 1) -> Pass:
    """`count` causal passes over all T(slots_per_token) slots (count may be an expectation, e.g. mean R)."""
    s = slots_per_token * T
    return Pass(slots_per_token, s, (s + 1) / 2, grad, count)


def _decode_extras(config, costs: Costs, a: list[float]) -> float:
    """Non-stack matmul FLOPs of decoding one token with step fractions a."""
    return costs.head + method_class(config.method).decode_cost(config, costs, a)


def _totals(config, T: int, a: list[float], sweeps: float, training: bool, costs: Costs) -> dict[str, float]:
    passes, extras = method_class(config.method).parallel_cost(config, costs, T, a, sweeps, training)
    extras = [(costs.head, True), *extras]  # + the readout of every token
    matmul = sum(p.slots for p in passes) * costs.slot + sum(f for f, _ in extras)
    exec_attn = sum(p.slots * p.keys_exec for p in passes) * costs.attn_key
    useful_attn = sum(p.slots * p.keys_useful for p in passes) * costs.attn_key
    # Training: x3 for differentiated passes/extras, x1 for the others (forward only).
    def train(attn_of) -> float:
        total = sum((3 if p.grad else 1) * (p.slots * costs.slot + p.slots * attn_of(p) * costs.attn_key)
                    for p in passes)
        return total + sum((3 if g else 1) * f for f, g in extras)

    dec_matmul = sum(a) * costs.slot + _decode_extras(config, costs, a)
    dec_attn = method_class(config.method).decode_keys(config, T, a) * costs.attn_key
    return {
        "forward": dec_matmul + dec_attn, "forward_matmul": dec_matmul, "forward_attention": dec_attn,
        "parallel": matmul + exec_attn, "parallel_useful": matmul + useful_attn,
        "training": train(lambda p: p.keys_useful), "training_executed": train(lambda p: p.keys_exec),
    }


def _sweeps(config, training: bool, sweeps: float | None) -> float:
    return float(sweeps) if sweeps is not None else method_class(config.method).sweeps(config, training)


def flops(config, seq_len: int, *, avg_steps: Any = None, training: bool = False,
          sweeps: float | None = None) -> dict[str, Any]:
    """Analytic FLOPs per token of `config`'s method on sequences of `seq_len` tokens.

    avg_steps: executed additional steps of an adaptive method (float average, or per-token steps of
    real tokens, which also fixes how many tokens reach each depth); default K (full depth). Methods
    of fixed depth always run K (0 for vanilla): a tensor is ignored, a different float is an error.
    training: the `parallel*` entries describe a train-mode forward (e.g. the mean solver sweeps R of a training
    step, latent-CoT penalty) instead of eval mode; the method says what R each mode runs (`sweeps`).
    sweeps: overrides R everywhere. The `training*` entries always use train mode.

    Returns per-token FLOPs: forward (decode: executed slots + attention over the real cache,
    causal average), forward_matmul, forward_attention, parallel (executed, dense masked attention),
    parallel_useful (causal keys only), training (3x per differentiated pass, useful attention),
    training_executed, the same for a vanilla model of this backbone (`vanilla_*`), ratios
    `*_ratio` to vanilla, plus method, seq_len, avg_steps and sweeps.
    """
    K = config.max_steps
    if not method_class(config.method).adaptive:
        # Every real token runs K steps; a per-token tensor (zeros at padding) carries no information.
        if isinstance(avg_steps, (int, float)) and abs(float(avg_steps) - K) > 1e-9:
            raise ValueError(f"flops: method {config.method!r} always executes {K} additional steps, "
                             f"got avg_steps={avg_steps}")
        avg_steps = None
    a = step_fractions(K if avg_steps is None else avg_steps, K)
    costs = Costs.of(config)
    R = _sweeps(config, training, sweeps)
    out = _totals(config, seq_len, a, R, training, costs)
    if not training:  # the `training*` entries always describe a train-mode step
        train_mode = _totals(config, seq_len, a, _sweeps(config, True, sweeps), True, costs)
        out["training"], out["training_executed"] = train_mode["training"], train_mode["training_executed"]
    vanilla_config = copy.copy(config)  # the same backbone as a vanilla model (no validation round-trip)
    vanilla_config.method, vanilla_config.max_steps = "vanilla", 0
    vanilla = _totals(vanilla_config, seq_len, [1.0], 0, True, costs)
    result: dict[str, Any] = {"method": config.method, "seq_len": seq_len, "avg_steps": sum(a[1:]), "sweeps": R}
    for key, value in out.items():
        result[key] = value
        result[f"vanilla_{key}"] = vanilla[key]
    for key in ("forward", "parallel", "parallel_useful", "training", "training_executed"):
        result[f"{key}_ratio"] = out[key] / vanilla[key]
    return result


# --------------------------------------------------------------------------- measured FLOPs
def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter():
    """A `FlopCounterMode` that also counts the CPU fused SDPA kernel.

    torch registers FLOP formulas for the CUDA SDPA kernels only; on CPU, SDPA with a float mask runs
    `_scaled_dot_product_flash_attention_for_cpu`, which would count 0. We map it (and its backward)
    to torch's own SDPA formula, which counts the dense score matrix (the mask is ignored): executed FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> int:
    """FLOPs torch counts for one parallel forward of `model` (in its current train/eval mode, no grad)."""
    with torch.no_grad(), flop_counter() as counter:
        model(input_ids, attention_mask=attention_mask)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- decoding ledger
class ComputeLedger:
    """Per-token compute of decoding: executed steps, forward FLOPs, wall-clock, ratios to vanilla.

    A token's FLOPs = stack matmuls of its executed slots/passes + method extras (LM head, feedback,
    routers, gates) + attention over the cache length each executed slot really attended to. The
    vanilla reference of a token at position p is one slot + LM head + attention over p+1 keys.

    Use either `add(steps, contexts, position)` per token, or around `decode_token`:

        before = ledger.snapshot(state)
        logits, steps = model.method.decode_token(model.backbone, state, ids, valid)
        ledger.add_decode(state, before, steps, valid, seconds=elapsed)

    `add_decode` charges each row only for the cache entries it owns (finite key bias) and counts its
    context as its own entries: the cost of decoding that row alone with real early exit, independent
    of what other rows of the batch do.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.costs = Costs.of(config)
        self.steps: list[float] = []
        self.flops: list[float] = []
        self.attention: list[float] = []
        self.vanilla: list[float] = []
        self.seconds = 0.0
        self.timed_tokens = 0

    def add(self, steps: float, contexts: Sequence[int], position: int, seconds: float | None = None) -> None:
        """One token: executed additional steps, cache length seen by each executed slot/pass, 0-based position."""
        n = int(round(steps))
        a = [1.0] * (n + 1) + [0.0] * (self.config.max_steps - n)
        attn = float(sum(contexts)) * self.costs.attn_key
        self.steps.append(float(steps))
        self.attention.append(attn)
        self.flops.append(len(contexts) * self.costs.slot + _decode_extras(self.config, self.costs, a) + attn)
        self.vanilla.append(self.costs.slot + self.costs.head + (position + 1) * self.costs.attn_key)
        if seconds is not None:
            self.seconds += seconds
            self.timed_tokens += 1

    @staticmethod
    def snapshot(state) -> tuple[list[int], torch.Tensor]:
        """Cache lengths and next positions before a `decode_token` call."""
        return [c.length for c in state.caches], state.next_position.clone()

    def add_decode(self, state, before, steps: torch.Tensor, valid: torch.Tensor,
                   seconds: float | None = None) -> None:
        """Record one `decode_token` call: one token per valid row; `seconds` is split evenly among them."""
        lengths, positions = before
        rows = [int(b) for b in torch.nonzero(valid).flatten()]
        per_token = None if seconds is None or not rows else seconds / len(rows)
        per_cache = []
        for cache, start in zip(state.caches, lengths):
            owned = torch.isfinite(cache.bias[:, : cache.length]).cpu()  # [B, N]
            counts = owned.long().cumsum(1)  # a row's own entries up to and including each entry
            per_cache.append((owned[:, start:], counts[:, start:]))
        steps, positions = steps.cpu().tolist(), positions.cpu().tolist()
        for b in rows:
            contexts = [n for new, counts in per_cache for n in counts[b][new[b]].tolist()]
            self.add(float(steps[b]), contexts, int(positions[b]), per_token)

    def summary(self, vanilla_seconds_per_token: float | None = None) -> dict[str, float]:
        """Totals over recorded tokens: avg steps, FLOPs/token, ratio to vanilla, seconds/token (if timed)."""
        n = max(len(self.steps), 1)
        out = {
            "tokens": float(len(self.steps)),
            "avg_steps": sum(self.steps) / n,
            "flops_per_token": sum(self.flops) / n,
            "attention_flops_per_token": sum(self.attention) / n,
            "vanilla_flops_per_token": sum(self.vanilla) / n,
            "flops_ratio": sum(self.flops) / max(sum(self.vanilla), 1.0),
        }
        if self.timed_tokens:
            out["seconds_per_token"] = self.seconds / self.timed_tokens
            if vanilla_seconds_per_token:
                out["seconds_ratio"] = out["seconds_per_token"] / vanilla_seconds_per_token
        return out


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """(fn(*args, **kwargs), elapsed seconds): a tiny helper for ledger wall-clock."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- table for docs/COMPUTE.md
def _table(hidden: int, layers: int, heads: int, vocab: int, seq_len: int, backbone: str) -> list[str]:
    from ponderlm.config import PonderConfig

    lines = [f"backbone={backbone} d={hidden} L={layers} heads={heads} V={vocab} seq_len={seq_len} "
             "(Jacobi R: eval 3, train E[U{2,3}] = 2.5)", "",
             "| method | K | avg steps | forward (decode) | parallel (executed) | parallel (useful) | training |",
             "|---|---|---|---|---|---|---|"]
    for method in method_names():
        cls = method_class(method)
        for K in ((1, 2, 3) if cls.takes_steps else (0,)):
            cfg = PonderConfig(backbone=backbone, method=method, max_steps=K, hidden_size=hidden,
                               num_hidden_layers=layers, num_attention_heads=heads, vocab_size=vocab,
                               max_position_embeddings=max(seq_len, 2048))
            levels = [K, K / 2] if cls.adaptive else [K]
            for s in levels:
                f = flops(cfg, seq_len, avg_steps=s)
                lines.append(f"| {method} | {K} | {s:g} | {f['forward_ratio']:.2f} | {f['parallel_ratio']:.2f} "
                             f"| {f['parallel_useful_ratio']:.2f} | {f['training_ratio']:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Print the ratio-to-vanilla table of docs/COMPUTE.md.

    `python -c "from ponderlm.flops import main; main()" [--hidden 512 ...]` (not `-m`: the package
    imports this module first, and runpy warns about running an already imported module).
    """
    import argparse

    p = argparse.ArgumentParser(description="FLOP ratios to vanilla per method and K (docs/COMPUTE.md)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--backbone", default="llama", choices=("llama", "gpt_neox"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print("\n".join(_table(args.hidden, args.layers, args.heads, args.vocab, args.seq_len, args.backbone)))


__all__ = ["ComputeLedger", "Costs", "Pass", "count_flops", "flop_counter", "flops", "full_pass", "step_fractions",
           "timed"]
