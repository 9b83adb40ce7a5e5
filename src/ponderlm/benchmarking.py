"""`ponderlm bench decode|train`: side-by-side speed measurements in one process.

This machine (and most shared machines) is noisy, so every comparison is timed round-robin and
reported as medians and ratios measured in the same run, never against a stored number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ponderlm.registry import method_class

if TYPE_CHECKING:
    import torch
# torch is imported inside the functions, so importing this module stays light (issue 28).


# --------------------------------------------------------------------------- timing helpers
def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin so machine drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s right now (a large square matmul, median of repeats)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = interleaved_medians({"mm": lambda: a @ b}, repeats=repeats)["mm"]
    return 2 * size**3 / seconds


# --------------------------------------------------------------------------- models
def synthetic_model(method: str, hidden: int, layers: int, max_steps: int, vocab: int, seed: int = 0, **extra: Any):
    import torch

    from ponderlm.config import PonderConfig
    from ponderlm.modeling import PonderForCausalLM

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    steps = max_steps if method_class(method).takes_steps else 0
    return PonderForCausalLM(PonderConfig(method=method, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, vocab_size=vocab, max_steps=steps, **extra))


# --------------------------------------------------------------------------- decode
def decode_run(model, prompt: torch.Tensor, new_tokens: int, continuous: bool = False, options: Any = None,
               **knobs: Any) -> dict[str, Any]:
    """Greedy decode through the method's sequential path with `options` (a `DecodeOptions`, None: the saved) and
    `knobs` overridden; returns steps, KV bytes, backbone calls and time.

    Every token (prompt and new) is consumed by `decode_token` in lockstep across the batch, or, with
    `continuous` and a method that supports it, by the per-row slot schedule (continuous batching,
    `PonderMethod.step_rows`), each row greedily continuing its own text.
    """
    import torch

    from ponderlm.inference.sequential import decode_options, eval_mode, new_state
    from ponderlm.methods.base import PonderMethod

    batch, total = prompt.shape[0], prompt.shape[1] + new_tokens
    with torch.no_grad(), eval_mode(model):
        state = new_state(model, batch, total, options=decode_options(model, options, **knobs))
        valid = torch.ones(batch, dtype=torch.bool)
        steps = []
        start = time.perf_counter()
        if continuous and model.method.supports_row_schedule:
            consumed = torch.zeros(batch, dtype=torch.long)
            model.method.row_start(model.backbone, state, prompt[:, 0], valid)
            while bool(state.rows.busy.any()):
                done, logits, s = model.method.step_rows(model.backbone, state)
                steps.append(s[done])
                consumed += done.long()
                more = done & (consumed < total)
                if bool(more.any()):
                    nxt = prompt.gather(1, consumed.clamp(max=prompt.shape[1] - 1)[:, None])[:, 0]
                    nxt = torch.where(consumed < prompt.shape[1], nxt, logits.argmax(-1) if logits is not None else nxt)
                    model.method.row_start(model.backbone, state, nxt, more)
            steps_all = torch.cat(steps)
        else:
            # Token by token (the base prefill), like every new token after it: decode speed, not prefill.
            prompt_logits, prompt_steps = PonderMethod.prefill(model.method, model.backbone, state, prompt,
                                                               torch.ones_like(prompt))
            logits = prompt_logits[:, -1]
            steps.extend(prompt_steps.unbind(1))
            for _ in range(new_tokens):
                logits, s = model.method.decode_token(model.backbone, state, logits.argmax(-1), valid)
                steps.append(s)
            steps_all = torch.stack(steps)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "avg_steps": float(steps_all.float().mean()), "calls": state.backbone_calls,
            "kv_bytes": sum(c.nbytes() for c in state.caches)}


def bench_decode(model, batches: list[int], prompt_len: int, new_tokens: int, repeats: int,
                 continuous: bool = False, options: Any = None) -> list[dict[str, Any]]:
    """Adaptive vs fixed-full-depth decode of the same model, per batch size, with the ideal ratio.

    continuous: decode batches with the per-row slot schedule (see `decode_run`) instead of lockstep; options: the
    knob values of the adaptive run (a `DecodeOptions`, None: the saved ones)."""
    import torch

    config = model.config
    K = config.max_steps
    # Full depth for a method that decides depths: its constant fixed-depth control gives every token K steps.
    full = config.method_class.fixed_depth_knobs("constant", float(K))
    adaptive = full is not None
    rows = []
    for batch in batches:
        prompt = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
        results: dict[str, dict[str, Any]] = {}

        def run(name: str, knobs: dict[str, Any], prompt=prompt, results=results, base=options) -> Callable[[], None]:
            def fn() -> None:
                results[name] = decode_run(model, prompt, new_tokens, continuous=continuous, options=base, **knobs)
            return fn

        fns = {"adaptive": run("adaptive", {})}
        if adaptive:
            fns["full"] = run("full", full)
        times = interleaved_medians(fns, repeats=repeats)
        tokens = batch * (prompt_len + new_tokens)
        row: dict[str, Any] = {"batch": batch, "schedule": "rows" if continuous else "lockstep",
                               "avg_steps": results["adaptive"]["avg_steps"],
                               "tok/s": tokens / times["adaptive"],
                               "ms/token": 1e3 * times["adaptive"] / (prompt_len + new_tokens),
                               "kv_MB": results["adaptive"]["kv_bytes"] / 2**20}
        if adaptive:
            ideal = (1 + results["full"]["avg_steps"]) / (1 + results["adaptive"]["avg_steps"])
            speedup = times["full"] / times["adaptive"]
            row.update({"calls": results["adaptive"]["calls"], "full calls": results["full"]["calls"],
                        "full tok/s": tokens / times["full"], "full kv_MB": results["full"]["kv_bytes"] / 2**20,
                        "speedup": speedup, "ideal": ideal, "speedup/ideal": speedup / ideal})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- train
def bench_train(methods: list[str], hidden: int, layers: int, max_steps: int, vocab: int, seq_len: int, batch: int,
                repeats: int, hf_reference: bool = True) -> tuple[list[dict[str, Any]], float]:
    """Training step time per method (fwd + bwd + AdamW), achieved FLOP/s and fraction of the matmul peak."""
    import torch

    from ponderlm.flops import flops

    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    models: dict[str, Any] = {}
    flop_per_step: dict[str, float] = {}
    for method in methods:
        model = synthetic_model(method, hidden, layers, max_steps, vocab, max_position_embeddings=max(seq_len, 2048))
        models[method] = model.train()
    if hf_reference:
        from transformers import LlamaConfig, LlamaForCausalLM

        ref = models.get("vanilla") or synthetic_model("vanilla", hidden, layers, 0, vocab)
        c = ref.config
        models["transformers Llama"] = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=c.intermediate_size, num_hidden_layers=layers,
            num_attention_heads=c.num_attention_heads, max_position_embeddings=max(seq_len, 2048),
            attn_implementation="sdpa")).train()
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    executed: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        model, opt = models[name], optimizers[name]

        def fn() -> None:
            opt.zero_grad(set_to_none=True)
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            steps = getattr(out, "executed_steps", None)
            executed[name] = float(steps.mean()) if steps is not None else 0.0
        return fn

    peak_before = matmul_peak_flops()
    times = interleaved_medians({name: step(name) for name in models}, repeats=repeats)
    peak = max(peak_before, matmul_peak_flops())
    rows = []
    for name, seconds in times.items():
        config = models["vanilla"].config if name == "transformers Llama" else models[name].config
        # Training FLOPs as executed by the dense parallel forward (+ backward), per token.
        per_token = flops(config, seq_len, training=True,
                          avg_steps=executed[name] if config.method_class.adaptive else None)
        flop_per_step[name] = per_token["training_executed"] * batch * seq_len
        achieved = flop_per_step[name] / seconds
        rows.append({"model": name, "s/step": seconds, "tok/s": batch * seq_len / seconds,
                     "GFLOP/step": flop_per_step[name] / 1e9, "GFLOP/s": achieved / 1e9,
                     "of peak": achieved / peak, "x vanilla time": seconds / times["vanilla"]})
    return rows, peak
