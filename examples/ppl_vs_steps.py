"""Perplexity against the pondering compute actually spent: a threshold sweep of the learned depth, next to
fixed pruning (depths drawn independently of the text) at the same average steps.

    python examples/ppl_vs_steps.py --model runs/example-tiny --taus 0.001,0.01,0.1,0.5

Learned depth below the fixed-pruning line at equal steps means the router spends its steps where they help.
`ponderlm pareto` runs the full version of this comparison and plots it.
"""

from __future__ import annotations

import argparse

from ponderlm.eval.perplexity import eval_batches, perplexity
from ponderlm.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run directory or a saved checkpoint of an adaptive method")
    p.add_argument("--taus", default="0.001,0.01,0.1,0.5", help="comma-separated thresholds")
    p.add_argument("--data", default="default", help="held-out text: 'default' (bundled validation split), files")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=4)
    args = p.parse_args()

    model, tokenizer = load_model(args.model, "cpu")
    if not model.config.method_class.adaptive:
        raise SystemExit(f"{model.config.method} spends the same steps on every token; use an adaptive method")
    batches = eval_batches(args.data, tokenizer, seq_len=args.seq_len, batch_size=4, max_batches=args.max_batches)
    print(f"{'setting':>28}  {'avg steps':>9}  {'ppl':>9}")
    for tau in (float(t) for t in args.taus.split(",")):
        learned = perplexity(model, batches, tau=tau, progress=False)
        control = perplexity(model, batches, depth_policy="uniform", depth_target=learned.avg_steps, progress=False)
        print(f"{f'learned, tau={tau:g}':>28}  {learned.avg_steps:9.3f}  {learned.ppl:9.2f}")
        print(f"{'uniform fixed pruning':>28}  {control.avg_steps:9.3f}  {control.ppl:9.2f}")


if __name__ == "__main__":
    main()
