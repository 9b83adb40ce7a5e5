"""Decode speed of PonderLM-3 at its learned depth vs the same model forced to full depth (alpha large).

Both run the same checkpoint and the same decoding code in one process, interleaved. The ideal
speedup is (1+K)/(1+avg executed steps); the target is measured >= 0.9 x ideal.
Usage: python benchmarks/bench_ponderlm3_decode.py [--model RUN/final] [--batch 1 8] [--tokens 64]
Without --model a d=256, 4-layer, K=3 model with a spread random router stands in (decode cost does
not depend on whether the depths were learned, only on how many steps run).
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_medians, print_table, setup_threads

from ponderlm import PonderConfig, PonderForCausalLM


def build(args) -> PonderForCausalLM:
    if args.model:
        return PonderForCausalLM.from_pretrained(args.model).eval()
    torch.manual_seed(0)
    cfg = PonderConfig(method="ponderlm3", hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.hidden // 64, vocab_size=4096, max_steps=3, router_init="uniform")
    model = PonderForCausalLM(cfg).eval()
    torch.nn.init.normal_(model.method.router.net[0].weight, std=args.router_std)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--router-std", type=float, default=0.15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tau", type=float, default=None)
    parser.add_argument("--full-alpha", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    setup_threads(args.threads)
    model = build(args)
    K = model.config.max_steps
    tau = model.config.tau if args.tau is None else args.tau
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, model.config.vocab_size, (batch, args.prompt), generator=gen)
        out: dict = {}

        def run(alpha: float, key: str, prompt=prompt, out=out):
            def fn():
                out[key] = model.generate(prompt, max_new_tokens=args.tokens, do_sample=False, tau=tau, alpha=alpha,
                                          return_dict_in_generate=True)
            return fn

        times = interleaved_medians({"adaptive": run(0.0, "adaptive"), "full": run(args.full_alpha, "full")},
                                    repeats=args.repeats)
        avg = float(out["adaptive"].executed_steps.mean())
        avg_full = float(out["full"].executed_steps.mean())
        ideal = (1 + avg_full) / (1 + avg)
        speedup = times["full"] / times["adaptive"]
        n_tok = batch * (args.prompt + args.tokens)
        rows.append({"batch": batch, "avg steps": avg, "full steps": avg_full,
                     "adaptive tok/s": n_tok / times["adaptive"], "full tok/s": n_tok / times["full"],
                     "speedup": speedup, "ideal": ideal, "speedup/ideal": speedup / ideal})
    print(f"d={model.config.hidden_size} L={model.config.num_hidden_layers} K={K} tau={tau} "
          f"threads={torch.get_num_threads()} (tokens/s count prompt + generated tokens)")
    print_table(rows)


if __name__ == "__main__":
    main()
