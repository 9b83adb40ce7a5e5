"""Generate with real early exit and show how much pondering each token got.

    python examples/generate_early_exit.py --model runs/example-tiny --prompt "Once upon a time"

`model.generate` is transformers' generate; a pondering model also returns `executed_steps`, the additional
steps actually computed at every consumed token (a pruned step is never run, so it costs nothing). A lower
`--tau` keeps more steps (PonderLM-3: a step runs when the router gives it at least tau).
"""

from __future__ import annotations

import argparse

import torch

from ponderlm.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run directory or a saved checkpoint")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--tau", type=float, help="pruning threshold (default: the checkpoint's)")
    args = p.parse_args()

    model, tokenizer = load_model(args.model, "cpu")
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    options = {} if args.tau is None else {"tau": args.tau}  # decode options go to generate like any kwarg
    with torch.no_grad():
        out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, **options)
    tokens = out.sequences[0].tolist()
    steps = out.executed_steps[0].tolist()  # one entry per consumed token: prompt and generated
    K = model.config.max_steps
    print(tokenizer.decode(tokens, skip_special_tokens=True))
    print(f"\n{'token':>16}  steps (of K={K})")
    for i, token in enumerate(tokens):  # the last token is never consumed, so it has no steps
        print(f"{tokenizer.decode([token])!r:>16}  {f'{steps[i]:g}' if i < len(steps) else '-'}")
    avg = sum(steps) / len(steps)
    print(f"\naverage {avg:.2f} of {K} additional steps per token: {(1 + avg) / (1 + K):.0%} of the slots "
          "a full-depth decode computes")


if __name__ == "__main__":
    main()
