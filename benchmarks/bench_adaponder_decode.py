"""Decode speed and KV-cache memory of AdaPonderLM at its halting vs the same model forced to all passes.

Both variants run the same weights and the same decoding code (`decode_token`, KV-cached, one token
at a time) in one process, interleaved; "full" is tau = 0 (no gate value is below 0, so every
token runs all K+1 passes). Tokens are a fixed random sequence fed token by token (what `generate`
does per token minus sampling), so both variants consume identical inputs.
The ideal speedup is (1+K)/(1+avg executed steps); the target is measured >= 0.9 x ideal at batch 1.
At batch > 1 a pass runs whenever any row still needs it (lockstep), so "call ratio" (backbone calls
full / adaptive) is the attainable speedup there; the "B rows" lines decode the same batch with
continuous batching (each call advances every row by one slot of its own token: the first half of
the tokens as prompt, the rest generated greedily), where calls fall with the average depth.

Usage: python benchmarks/bench_adaponder_decode.py [--model RUN/final] [--batch 1 8] [--tokens 80]
Without --model a d=256, 4-layer, K=3 model stands in whose gate biases are calibrated so that a
fraction `--halt-frac` of the tokens reaching each gate halts there (avg steps ~ K/2 by default);
decode cost depends only on how many passes run, not on whether the gates were learned.
"""

from __future__ import annotations

import argparse
import math

import torch
from common import add_json_flag, interleaved_medians, print_table, setup_threads

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.benchmarking import decode_run
from ponderlm.inference import sequential_logits


def calibrate_gates(model: PonderForCausalLM, halt_frac: float, std: float, length: int = 256) -> None:
    """Random gate output weights, then per gate a bias putting `halt_frac` of its inputs below tau."""
    gates = model.method.gates
    threshold = math.log(model.config.tau / (1 - model.config.tau))  # sigmoid(z) < tau  <=>  z < threshold
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(7))
    for i, gate in enumerate(gates):
        with torch.no_grad():
            gate.out_weight.normal_(0.0, std, generator=torch.Generator().manual_seed(i))
            for later in gates[i:]:
                later.out_bias.fill_(30.0)  # open, so every token reaches gate i with its real input
        z = _gate_logits(model, gate, ids)
        with torch.no_grad():
            gate.out_bias.fill_(threshold - float(torch.quantile(z, halt_frac)))


@torch.no_grad()
def _gate_logits(model: PonderForCausalLM, gate, ids: torch.Tensor) -> torch.Tensor:
    """Gate pre-activations without the bias on the hidden states the dense forward feeds it."""
    seen = []
    handle = gate.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    model(ids)
    handle.remove()
    return gate.act(gate.fc1(seen[0].reshape(-1, seen[0].shape[-1]))) @ gate.out_weight


def time_decode(model: PonderForCausalLM, ids: torch.Tensor, tau: float, repeats: int) -> dict[str, tuple]:
    """Interleaved median seconds of the adaptive (model tau) and full (tau = 0) decode, plus their last results."""
    out: dict[str, tuple] = {}

    def run(key: str, run_tau: float):
        def fn():
            out[key] = sequential_logits(model, ids, tau=run_tau, return_state=True)
        return fn

    times = interleaved_medians({"adaptive": run("adaptive", tau), "full": run("full", 0.0)}, repeats=repeats)
    return {key: (times[key], *out[key][1:]) for key in times}


def build(args) -> PonderForCausalLM:
    if args.model:
        return PonderForCausalLM.from_pretrained(args.model).eval()
    torch.manual_seed(0)
    cfg = PonderConfig(method="adaponder", hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.hidden // 64, vocab_size=4096, max_steps=args.K)
    model = PonderForCausalLM(cfg).eval()
    calibrate_gates(model, args.halt_frac, args.gate_std)
    return model


def visible_kv_bytes(cache) -> int:
    """K/V bytes of entries some row can attend to (batch > 1 also stores -inf entries of rows that skipped)."""
    per_row_entry = 2 * cache.num_layers * cache.num_kv_heads * cache.head_dim * cache.keys[0].element_size()
    return int(torch.isfinite(cache.entry_view()["bias"]).sum()) * per_row_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--halt-frac", type=float, default=0.3)
    parser.add_argument("--gate-std", type=float, default=1.0)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    add_json_flag(parser)
    args = parser.parse_args()
    setup_threads(args.threads)
    model = build(args)
    K = model.config.max_steps
    tau = model.config.tau
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, model.config.vocab_size, (batch, args.tokens), generator=gen)
        res = time_decode(model, ids, tau, args.repeats)
        (t_ada, steps, state), (t_full, steps_full, state_full) = res["adaptive"], res["full"]
        times = {"adaptive": t_ada, "full": t_full}
        avg, avg_full = float(steps.mean()), float(steps_full.mean())
        ideal = (1 + avg_full) / (1 + avg)
        speedup = times["full"] / times["adaptive"]
        n_tok = batch * args.tokens
        kv, kv_full = visible_kv_bytes(state.cache), visible_kv_bytes(state_full.cache)
        rows.append({"batch": batch, "avg steps": avg, "full steps": avg_full,
                     "calls": state.backbone_calls, "calls full": state_full.backbone_calls,
                     "call ratio": state_full.backbone_calls / state.backbone_calls,
                     "adaptive tok/s": n_tok / times["adaptive"], "full tok/s": n_tok / times["full"],
                     "speedup": speedup, "ideal": ideal, "speedup/ideal": speedup / ideal,
                     "KV MiB": kv / 2**20, "KV MiB full": kv_full / 2**20, "KV ratio": kv_full / kv,
                     "stored MiB": state.cache.nbytes() / 2**20})
        if batch > 1:  # the same batch with continuous batching: every call advances each row by one slot
            prompt = ids[:, : args.tokens // 2]
            res_rows: dict[str, dict] = {}

            def rows_run(key: str, run_tau: float, prompt=prompt, res_rows=res_rows):
                def fn():
                    res_rows[key] = decode_run(model, prompt, args.tokens - prompt.shape[1], continuous=True,
                                               tau=run_tau)
                return fn

            t = interleaved_medians({"adaptive": rows_run("adaptive", tau), "full": rows_run("full", 0.0)},
                                    repeats=args.repeats)
            ada, full = res_rows["adaptive"], res_rows["full"]
            ideal = (1 + full["avg_steps"]) / (1 + ada["avg_steps"])
            rows.append({"batch": f"{batch} rows", "avg steps": ada["avg_steps"], "full steps": full["avg_steps"],
                         "calls": ada["calls"], "calls full": full["calls"], "call ratio": full["calls"] / ada["calls"],
                         "adaptive tok/s": n_tok / t["adaptive"], "full tok/s": n_tok / t["full"],
                         "speedup": t["full"] / t["adaptive"], "ideal": ideal,
                         "speedup/ideal": t["full"] / t["adaptive"] / ideal,
                         "KV MiB": ada["kv_bytes"] / 2**20, "KV MiB full": full["kv_bytes"] / 2**20,
                         "KV ratio": full["kv_bytes"] / ada["kv_bytes"], "stored MiB": ada["kv_bytes"] / 2**20})
    print(f"# adaponder decode d={model.config.hidden_size} L={model.config.num_hidden_layers} K={K} tau={tau} "
          f"tokens={args.tokens} threads={torch.get_num_threads()} repeats={args.repeats} (medians, interleaved)")
    print_table(rows, args.json)


if __name__ == "__main__":
    main()
