"""Parallel thresholded evaluation (Jacobi with pruned slots removed) vs sequential decoding on the same text.

Both compute per-token NLL of the same sequences at the same tau; prints wall time, speedup, both
perplexities and the max NLL difference. Target (fast-inference issue): >= 5x faster, equal perplexity.
Usage: python benchmarks/bench_parallel_eval.py [--model RUN/final] [--seq 128 --batch 4 --sweeps 8]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from common import add_json_flag, interleaved_medians, print_table, setup_threads

from ponderlm.benchmarking import synthetic_model
from ponderlm.eval.perplexity import load_model
from ponderlm.inference import sequential_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sweeps", type=int, default=8, help="Jacobi sweeps of the parallel evaluation")
    parser.add_argument("--tau", type=float, default=1e-2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    add_json_flag(parser)
    args = parser.parse_args()
    setup_threads(args.threads)
    if args.model:
        model, _ = load_model(args.model, "cpu")
    else:
        model = synthetic_model("ponderlm3", 128, 4, 3, 4096, router_init="uniform").eval()
        torch.nn.init.normal_(model.method.router.net[0].weight, std=4.0 / 128**0.5)
    model.config.tau = args.tau
    model.config.jacobi_iters_eval = args.sweeps
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    out: dict = {}

    def nll(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                               reduction="none")

    def parallel() -> None:
        with torch.no_grad():
            o = model(ids)
        out["parallel"] = (nll(o.logits), float(o.executed_steps.mean()))

    def sequential() -> None:
        logits, steps = sequential_logits(model, ids, tau=args.tau)
        out["sequential"] = (nll(logits), float(steps.mean()))

    times = interleaved_medians({"parallel": parallel, "sequential": sequential}, repeats=args.repeats, warmup=0)
    diff = float((out["parallel"][0] - out["sequential"][0]).abs().max())
    speedup = times["sequential"] / times["parallel"]
    rows = [{"path": name, "seconds": times[name], "ppl": math.exp(float(out[name][0].mean())),
             "avg steps": out[name][1], "speedup": speedup, "max NLL diff": diff}
            for name in ("parallel", "sequential")]
    print(f"# {model.config.method} d={model.config.hidden_size} L={model.config.num_hidden_layers} "
          f"K={model.config.max_steps} tau={args.tau} sweeps={args.sweeps} T={args.seq} B={args.batch} "
          f"threads={torch.get_num_threads()}")
    print_table(rows, args.json)
    if not args.json:
        print(f"speedup parallel vs sequential: {speedup:.2f}x; max |NLL difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
