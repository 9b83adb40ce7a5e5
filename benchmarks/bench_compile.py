"""torch.compile vs eager, side by side: training steps and greedy decoding, per method.

The compiled unit is the shared `DecoderStack` (`model.model`), with dynamic shapes (the slot grid and
the cache length change from call to call); methods keep running eagerly around it. Compile time is
excluded (warm-up calls), so the ratios are the steady-state gain a long run would see.

Usage: python benchmarks/bench_compile.py [--methods vanilla,ponderlm3 --hidden 256 --layers 4 --threads 2]
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import interleaved_medians, print_table, setup_threads

from ponderlm.benchmarking import decode_run, synthetic_model


def compiled(model):
    twin = copy.deepcopy(model)
    twin.model = torch.compile(twin.model, dynamic=True)
    return twin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="vanilla,ponderlm3")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--K", type=int, default=3)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    setup_threads(args.threads)
    rows = []
    for method in args.methods.split(","):
        eager = synthetic_model(method, args.hidden, args.layers, args.K, 4096)
        models = {"eager": eager, "compiled": compiled(eager)}
        ids = torch.randint(0, 4096, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

        def train_step(name: str, models=models, optims=optims, ids=ids):
            def fn() -> None:
                model = models[name].train()
                loss = model(ids, labels=ids).loss
                loss.backward()
                optims[name].step()
                optims[name].zero_grad(set_to_none=True)
            return fn

        def decode(name: str, models=models, ids=ids):
            def fn() -> None:
                with torch.inference_mode():
                    decode_run(models[name].eval(), ids[:1, :16], args.new_tokens)
            return fn

        train = interleaved_medians({n: train_step(n) for n in models}, repeats=args.repeats, warmup=2)
        dec = interleaved_medians({n: decode(n) for n in models}, repeats=args.repeats, warmup=2)
        rows.append({"method": method, "train s/step eager": train["eager"], "compiled": train["compiled"],
                     "train speedup": train["eager"] / train["compiled"],
                     "decode s eager": dec["eager"], "decode s compiled": dec["compiled"],
                     "decode speedup": dec["eager"] / dec["compiled"]})
    print(f"# torch.compile(model.model, dynamic=True) d={args.hidden} L={args.layers} K={args.K} "
          f"train B={args.batch} T={args.seq}; decode batch 1, 16 prompt + {args.new_tokens} new tokens; "
          f"threads={torch.get_num_threads()}")
    print_table(rows)


if __name__ == "__main__":
    main()
