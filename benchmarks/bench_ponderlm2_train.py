"""Forward+backward time of PonderLM-2 (K = 1, 2, 3) vs vanilla at the same size, side by side.

The theoretical ratio counts slot-passes, assuming cost linear in slots (matmul-dominated):
- "issue" formula: (K + R + 1) passes over a (K+1)x longer sequence = (K+R+1)(K+1);
- exact slot count: K stage passes over growing prefixes (1..K slots per token) + (R+1) full passes
  over K+1 slots per token = K(K+1)/2 + (R+1)(K+1).
Usage: python benchmarks/bench_ponderlm2_train.py [--hidden 256 --layers 4 --seq 128 --batch 8 --sweeps 3]
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_medians, print_table, setup_threads

from ponderlm import PonderConfig, PonderForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sweeps", type=int, default=3, help="Jacobi sweeps R (fixed for the benchmark)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    setup_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    base = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                vocab_size=args.vocab, max_position_embeddings=max(2048, args.seq))
    models = {"vanilla": PonderForCausalLM(PonderConfig(method="vanilla", **base)).train()}
    for K in (1, 2, 3):
        models[f"ponderlm2 K={K}"] = PonderForCausalLM(
            PonderConfig(method="ponderlm2", max_steps=K, jacobi_iters_train=[args.sweeps], **base)).train()

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
        return run

    times = interleaved_medians({name: step(m) for name, m in models.items()}, repeats=args.repeats)
    R = args.sweeps
    rows = []
    for name, seconds in times.items():
        K = models[name].config.max_steps
        issue_ratio = (K + R + 1) * (K + 1) if K else 1
        slot_ratio = (K * (K + 1) / 2 + (R + 1) * (K + 1)) if K else 1
        measured = seconds / times["vanilla"]
        rows.append({"model": name, "s/step": seconds, "tokens/s": args.batch * args.seq / seconds,
                     "measured x": measured, "theory x (issue)": float(issue_ratio),
                     "measured/issue": measured / issue_ratio, "theory x (slots)": float(slot_ratio),
                     "measured/slots": measured / slot_ratio})
    print(f"d={args.hidden} L={args.layers} T={args.seq} B={args.batch} R={R} threads={torch.get_num_threads()}")
    print_table(rows)


if __name__ == "__main__":
    main()
