"""torch.compile vs eager, side by side: training steps and greedy decoding, per method.

The compiled unit is the shared `DecoderStack` (`model.model`), with dynamic shapes (the slot grid and
the cache length change from call to call); methods keep running eagerly around it. Compile time is
excluded (warm-up calls), so the ratios are the steady-state gain a long run would see.

`--breaks` also reports, per method, the graphs and graph breaks of one whole decode step
(`decode_token` under `torch._dynamo.explain`) and of the backbone call inside it: the step's breaks are
its early-exit decisions (which slots any row still needs), the backbone call has none.

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


def graph_breaks(model, prompt: torch.Tensor) -> dict[str, object]:
    """Graphs / breaks of one decode step and of the backbone calls inside it, with the lines that break."""
    from ponderlm.inference.sequential import new_state

    model.eval()
    batch = prompt.shape[0]
    with torch.inference_mode():
        state = new_state(model, batch, prompt.shape[1] + 2)
        model.method.prefill(model.backbone, state, prompt, torch.ones_like(prompt))
        valid = torch.ones(batch, dtype=torch.bool)
        step = torch._dynamo.explain(model.method.decode_token)(model, state, prompt[:, -1], valid)
        torch._dynamo.reset()
        calls = []
        inner = model.model.forward

        def explained(*args, **kwargs):  # explain each backbone call of a second step where it is made
            calls.append(torch._dynamo.explain(inner)(*args, **kwargs))
            return inner(*args, **kwargs)

        model.model.forward = explained
        try:
            model.method.decode_token(model.backbone, state, prompt[:, -1], valid)
        finally:
            del model.model.forward
        torch._dynamo.reset()
    where = sorted({f"{b.user_stack[-1].filename.rsplit('/', 1)[-1]}:{b.user_stack[-1].lineno}"
                    for b in step.break_reasons if b.user_stack})
    return {"step graphs": step.graph_count, "step breaks": step.graph_break_count,
            "backbone breaks": sum(c.graph_break_count for c in calls), "backbone calls": len(calls),
            "step breaks at": " ".join(where)}


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
    p.add_argument("--breaks", action="store_true", help="only report graph breaks of one decode step per method")
    p.add_argument("--decode-only", action="store_true", help="skip the training measurement")
    args = p.parse_args()
    setup_threads(args.threads)
    if args.breaks:
        prompt = torch.randint(0, 4096, (2, 8), generator=torch.Generator().manual_seed(0))
        print_table([{"method": m, **graph_breaks(synthetic_model(m, args.hidden, args.layers,
                                                                  0 if m == "vanilla" else args.K, 4096), prompt)}
                     for m in args.methods.split(",")])
        return
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

        row: dict[str, object] = {"method": method}
        if not args.decode_only:
            train = interleaved_medians({n: train_step(n) for n in models}, repeats=args.repeats, warmup=2)
            row.update({"train s/step eager": train["eager"], "compiled": train["compiled"],
                        "train speedup": train["eager"] / train["compiled"]})
        dec = interleaved_medians({n: decode(n) for n in models}, repeats=args.repeats, warmup=2)
        rows.append({**row, "decode s eager": dec["eager"], "decode s compiled": dec["compiled"],
                     "decode speedup": dec["eager"] / dec["compiled"]})
    print(f"# torch.compile(model.model, dynamic=True) d={args.hidden} L={args.layers} K={args.K} "
          f"train B={args.batch} T={args.seq}; decode batch 1, 16 prompt + {args.new_tokens} new tokens; "
          f"threads={torch.get_num_threads()}")
    print_table(rows)


if __name__ == "__main__":
    main()
