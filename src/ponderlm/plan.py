"""`ponderlm plan CONFIG --gpus N`: what a recipe costs before it runs.

Parameters, memory per GPU (weights + gradients + AdamW, sharded under FSDP2; activations of one
micro-batch with and without activation checkpointing), training FLOPs per token from
`ponderlm.flops.flops(config, seq_len, training=True)`, and tokens/s and wall time for the recipe's
token budget at an assumed MFU. Estimates, not measurements (see docs/DISTRIBUTED.md for the model).

Activations count what autograd keeps for backward. A pondering method keeps the activations of
every differentiated backbone pass its cost model lists, at the peak solver sweeps of a training step (e.g.
PonderLM-2/3: K stage passes over growing prefixes, the largest R drawn, the final pass over K+1 slots per token).
"""

from __future__ import annotations

import math
from typing import Any

from ponderlm.errors import PonderError

GB = 1e9
DEFAULT_VOCAB = 4096  # the shipped tokenizer, used when a recipe leaves model.vocab_size to the data


def differentiated_passes(config: Any) -> list[Any]:
    """The passes whose activations stay alive until backward (peak: every token at full depth, R at its max):
    the method's cost model (`ponderlm.flops`) for one token, so `queries` / `keys_exec` are slots per token."""
    from ponderlm.flops import Costs

    cls, K = config.method_class, config.max_steps
    sweeps = cls.sweeps(config, training=True, peak=True)
    passes, _ = cls.parallel_cost(config, Costs.of(config), 1, [1.0] * (K + 1), sweeps, True)
    return [p for p in passes if p.grad]


def slot_layer_bytes(config: Any, act: int) -> float:
    """Bytes autograd keeps per slot and decoder layer: both norm inputs (fp32), the normed outputs, q, k, v,
    the attention output (twice: SDPA's and the output projection's input) and the MLP's intermediates."""
    d, q = config.hidden_size, config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    mlp = (4 if config.backbone == "llama" else 2) * config.intermediate_size
    return 2 * d * 4 + act * (2 * d + 3 * q + 2 * kv + mlp)


def activation_bytes(config: Any, seq_len: int, batch: int, act: int, stream: int,
                     checkpointing: bool) -> dict[str, float]:
    """Activation memory of one micro-batch [batch, seq_len] in bytes: layers, attention masks, LM head."""
    L, V, T = config.num_hidden_layers, config.vocab_size, seq_len
    per_slot = slot_layer_bytes(config, act)
    passes = differentiated_passes(config)
    # One fp32 additive mask [B,1,Q,S] per pass; SDPA also keeps a per-layer copy in the compute dtype.
    mask_one = [batch * (p.queries * T) * (p.keys_exec * T) for p in passes]
    fp32_masks = sum(p.count * m * 4 for p, m in zip(passes, mask_one))
    low_copy = act if act < 4 else 0
    slots = sum(p.count * p.queries for p in passes) * batch * T
    final_norms = slots * config.hidden_size * (4 + act)  # every pass ends in the final norm (not checkpointed)
    if checkpointing:  # each layer's input per pass, plus one layer recomputed for the widest pass
        widest = max(range(len(passes)), key=lambda i: passes[i].queries * passes[i].keys_exec)
        layers = slots * L * config.hidden_size * stream + passes[widest].queries * batch * T * per_slot
        masks = fp32_masks + mask_one[widest] * low_copy
    else:
        layers = slots * L * per_slot
        masks = fp32_masks + sum(p.count * m * low_copy * L for p, m in zip(passes, mask_one))
    # Readout: logits (compute dtype) + fp32 log-softmax + its gradient; recurrent methods also keep the
    # logits and softmax of every feedback step P^k (gamma E).
    feedback = config.max_steps if config.method_class.head_feedback else 0
    head = batch * T * V * ((act + 8) + feedback * (act + 4))
    layers += final_norms
    return {"layers": layers, "masks": masks, "head": head, "total": layers + masks + head}


def plan(cfg: Any, gpus: int, *, mfu: float = 0.4, gpu_flops: float = 312e12, gpu_mem_gb: float = 80.0
         ) -> dict[str, Any]:
    """The numbers `ponderlm plan` prints, as a dict."""
    from ponderlm.flops import flops
    from ponderlm.train.config import grad_accum_for

    if gpus < 1:
        raise PonderError(f"--gpus must be >= 1, got {gpus}")
    if not 0 < mfu <= 1:
        raise PonderError(f"--mfu must be in (0, 1], got {mfu}")
    for flag, value in (("--gpu-flops", gpu_flops), ("--gpu-mem-gb", gpu_mem_gb)):
        if not (math.isfinite(value) and value > 0):  # NaN passes every comparison; 0 divides by zero
            raise PonderError(f"{flag} must be a finite number > 0, got {value}")
    config = model_config(cfg)
    t, T = cfg.train, cfg.data.seq_len
    accum = grad_accum_for(cfg, gpus)
    tokens_per_step = t.batch_size * accum * gpus * T
    params, layer_params = parameter_counts(config)
    bf16 = t.dtype != "fp32"  # auto = bf16 on GPUs that support it
    act = 2 if bf16 else 4
    fsdp = cfg.dist.backend == "fsdp2" and gpus > 1
    # fp32 master weights + fp32 gradients + AdamW exp_avg/exp_avg_sq = 16 bytes/parameter, sharded by FSDP2.
    state = 16 * params / (gpus if fsdp else 1)
    gathered = 0.0
    if fsdp:  # unsharded compute-dtype copies (params + grads) of what is gathered at a time
        root_only = config.method_class.variable_passes
        gathered = 2 * act * (params if root_only else params - layer_params * (config.num_hidden_layers - 2))
    stream = act if fsdp else 4  # FSDP2 gathers bf16 params: the residual stream is bf16; autocast keeps fp32
    acts = {ac: activation_bytes(config, T, t.batch_size, act, stream, ac) for ac in (False, True)}
    cost = flops(config, T, training=True)
    per_token = cost["training"]
    tokens_per_s = gpus * mfu * gpu_flops / per_token
    total_tokens = t.steps * tokens_per_step
    return {
        "name": cfg.name, "config": config, "gpus": gpus, "backend": cfg.dist.backend if gpus > 1 else "single",
        "bf16": bf16, "params": params, "seq_len": T, "batch_size": t.batch_size, "grad_accum": accum,
        "tokens_per_step": tokens_per_step, "passes": differentiated_passes(config),
        "state_gb": state / GB, "gathered_gb": gathered / GB,
        "activations_gb": {ac: {k: v / GB for k, v in a.items()} for ac, a in acts.items()},
        "total_gb": {ac: (state + gathered + a["total"]) / GB for ac, a in acts.items()},
        "gpu_mem_gb": gpu_mem_gb, "flops_per_token": per_token, "flops_ratio": cost["training_ratio"],
        "mfu": mfu, "gpu_flops": gpu_flops, "tokens_per_s": tokens_per_s, "total_tokens": total_tokens,
        "steps": t.steps, "seconds": total_tokens / tokens_per_s,
        "activation_checkpointing": cfg.dist.activation_checkpointing,
        "global_batch_fixed": t.global_batch_size is not None,
    }


def model_config(cfg: Any) -> Any:
    """The run's PonderConfig without touching data: the recipe's shape, or `init_from`'s config if readable."""
    from ponderlm.train.config import build_model_config

    if cfg.model.get("init_from") and "hidden_size" not in cfg.model:
        from transformers import AutoConfig

        from ponderlm.backbone.hf_import import ponder_config_from_hf

        kwargs = dict(cfg.model_kwargs())
        try:
            hf = AutoConfig.from_pretrained(cfg.model["init_from"], trust_remote_code=False)
            return ponder_config_from_hf(hf, kwargs.pop("method", "vanilla"), **kwargs)
        except (OSError, ValueError) as exc:
            raise PonderError(f"plan: cannot read the config of model.init_from={cfg.model['init_from']} "
                              f"({str(exc).splitlines()[0]}); list the backbone's shape under model.*") from None
    if "vocab_size" not in cfg.model and not cfg.model.get("init_from"):
        cfg.model["vocab_size"] = DEFAULT_VOCAB
    return build_model_config(cfg)


def parameter_counts(config: Any) -> tuple[int, int]:
    """(all parameters, one decoder layer's), counted on a meta-device model (no memory, no init)."""
    import torch

    from ponderlm.modeling import PonderForCausalLM

    with torch.device("meta"):
        model = PonderForCausalLM(config)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.model.layers[0].parameters())


def format_plan(p: dict[str, Any]) -> str:
    c = p["config"]
    a, tot = p["activations_gb"], p["total_gb"]
    passes = " + ".join(f"{q.count:g}x{q.queries:g}" + (f"(keys {q.keys_exec:g})" if q.keys_exec != q.queries else "")
                        for q in p["passes"])
    days = p["seconds"] / 86400
    mem = p["gpu_mem_gb"]
    fits = {ac: "fits" if tot[ac] <= mem else f"over {mem:g} GB" for ac in tot}
    chosen = "on" if p["activation_checkpointing"] else "off"
    lines = [
        f"{p['name']}: {c.method} (K={c.max_steps}) on {c.backbone} d={c.hidden_size} L={c.num_hidden_layers} "
        f"heads={c.num_attention_heads} ff={c.intermediate_size} vocab={c.vocab_size}",
        f"parameters       {p['params'] / 1e6:,.1f}M",
        f"parallelism      {p['gpus']} GPU(s), {p['backend']}, {'bf16' if p['bf16'] else 'fp32'} compute, "
        "fp32 master weights + AdamW",
        f"batch            {p['batch_size']} x {p['seq_len']} tokens per micro-batch, {p['grad_accum']} micro-batches "
        f"x {p['gpus']} GPU(s) = {p['tokens_per_step']:,} tokens per step"
        + ("" if p["global_batch_fixed"] or p["gpus"] == 1 else
           " (train.grad_accum is per GPU; set train.global_batch_size to keep the global batch)"),
        f"passes kept      {passes} (passes x slots per token; every differentiated pass keeps activations)",
        "memory per GPU (GB)                   no AC     with AC",
        f"  weights+grads+AdamW      {p['state_gb']:>14.2f} {p['state_gb']:>11.2f}"
        + ("   (sharded over the GPUs)" if p["backend"] == "fsdp2" else ""),
    ]
    if p["gathered_gb"]:
        lines.append(f"  gathered params+grads    {p['gathered_gb']:>14.2f} {p['gathered_gb']:>11.2f}")
    lines += [
        f"  activations / micro-batch{a[False]['total']:>14.2f} {a[True]['total']:>11.2f}",
        f"    decoder layers         {a[False]['layers']:>14.2f} {a[True]['layers']:>11.2f}",
        f"    attention masks        {a[False]['masks']:>14.2f} {a[True]['masks']:>11.2f}",
        f"    LM head + loss         {a[False]['head']:>14.2f} {a[True]['head']:>11.2f}",
        f"  total                    {tot[False]:>14.2f} {tot[True]:>11.2f}   "
        f"({fits[False]} / {fits[True]}; recipe has activation checkpointing {chosen})",
        f"training FLOPs   {p['flops_per_token'] / 1e9:,.2f} GFLOP/token ({p['flops_ratio']:.2f}x vanilla; "
        "ponderlm.flops, useful attention)",
        f"throughput       {p['tokens_per_s']:,.0f} tokens/s on {p['gpus']} GPU(s) at MFU {p['mfu']:g} of "
        f"{p['gpu_flops'] / 1e12:g} TFLOP/s ({p['tokens_per_s'] / p['gpus']:,.0f} per GPU)",
        f"token budget     {p['total_tokens'] / 1e9:,.2f}B tokens ({p['steps']:,} steps) -> "
        f"{_duration(p['seconds'])}" + (f" ({days * p['gpus']:,.0f} GPU-days)" if days >= 1 else ""),
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{math.ceil(seconds / 60)} minutes"
