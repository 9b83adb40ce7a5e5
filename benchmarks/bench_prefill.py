"""Parallel prompt prefill vs feeding the prompt token by token, per method, side by side.

Both paths leave the same decoding state (tests/test_prefill.py); this measures what the parallel one
saves. Adaptive methods run under the uniform fixed-pruning policy at --depth-target average steps, so
depths are mixed and identical in both paths (an untrained router would not prune realistically).
PonderLM-2 / PonderLM-3 are not listed: their prefill is token by token (a token's latent slots depend on
the latent slots of earlier tokens, so one parallel pass would only approximate them).

Usage: python benchmarks/bench_prefill.py [--hidden 256 --layers 4 --K 3 --prompt 128 --batch 1 8 --threads 2]
"""

from __future__ import annotations

import argparse

import torch
from common import add_json_flag, interleaved_medians, print_table, setup_threads

from ponderlm.benchmarking import synthetic_model
from ponderlm.inference.sequential import decode_options, new_state
from ponderlm.methods.base import PonderMethod

METHODS = ("vanilla", "pause", "looped", "ponderlm", "adaponder", "latent_cot")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--K", type=int, default=3)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--depth-target", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    add_json_flag(p)
    args = p.parse_args()
    setup_threads(args.threads)
    rows = []
    for method in args.methods.split(","):
        model = synthetic_model(method, args.hidden, args.layers, args.K, 4096).eval()
        options = decode_options(model, **({"depth_policy": "uniform", "depth_target": args.depth_target}
                                           if model.config.method_class.adaptive else {}))
        for batch in args.batch:
            ids = torch.randint(0, 4096, (batch, args.prompt), generator=torch.Generator().manual_seed(0))
            mask = torch.ones_like(ids)

            def run(prefill, model=model, options=options, ids=ids, mask=mask):
                def fn() -> None:
                    with torch.inference_mode():
                        state = new_state(model, ids.shape[0], ids.shape[1], options=options)
                        prefill(model.backbone, state, ids, mask)
                return fn

            times = interleaved_medians({"token_by_token": run(PonderMethod.prefill.__get__(model.method)),
                                         "parallel": run(model.method.prefill)}, repeats=args.repeats)
            rows.append({"method": method, "batch": batch, "prompt": args.prompt,
                         "token-by-token tok/s": batch * args.prompt / times["token_by_token"],
                         "parallel tok/s": batch * args.prompt / times["parallel"],
                         "speedup": times["token_by_token"] / times["parallel"]})
    print(f"# prefill d={args.hidden} L={args.layers} K={args.K} threads={torch.get_num_threads()} "
          f"(adaptive methods: uniform depths, mean {args.depth_target})")
    print_table(rows, args.json)


if __name__ == "__main__":
    main()
