"""`ponderlm bench decode|train`: the command line of `ponderlm.benchmarking` (side-by-side speed measurements)."""

from __future__ import annotations

import argparse
import functools
import json

from ponderlm.commands.knobs import knob_flags, knob_values
from ponderlm.errors import PonderError
from ponderlm.registry import REGISTRY, method_class, method_names


class _MethodNames:
    """`choices` that read the registry only when argparse checks a value or prints this subcommand's help:
    reading it imports every method (torch), which `ponderlm --help` must not."""

    def __contains__(self, name: object) -> bool:
        return name in REGISTRY

    def __iter__(self):
        return iter(method_names())


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="side-by-side decode / training speed measurements")
    sub = bench.add_subparsers(dest="bench_command", metavar="{decode,train}", required=True)

    dec = sub.add_parser("decode", help="adaptive vs fixed-depth decode tokens/s, latency and KV memory")
    dec.add_argument("--model", metavar="DIR", help="checkpoint or run directory (default: a synthetic model of "
                                                    "--method)")
    dec.add_argument("--method", default="ponderlm3", choices=_MethodNames(), metavar="M",
                     help="method of the synthetic model: %(choices)s (default ponderlm3)")
    dec.add_argument("--hidden", type=int, default=256, metavar="D", help="synthetic model width (default 256)")
    dec.add_argument("--layers", type=int, default=4, metavar="L", help="synthetic model layers (default 4)")
    dec.add_argument("--max-steps", type=int, default=3, metavar="K",
                     help="synthetic model's K, additional steps per token (default 3)")
    dec.add_argument("--router-scale", type=float, default=12.0,
                     help="synthetic ponderlm3 only: router weight std x sqrt(hidden) (larger = more pruning)")
    dec.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    dec.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], metavar="B",
                     help="batch sizes to measure (default 1 8 32)")
    dec.add_argument("--prompt-len", type=int, default=16, metavar="N", help="prompt tokens per row (default 16)")
    dec.add_argument("--new-tokens", type=int, default=48, metavar="N", help="tokens decoded per row (default 48)")
    dec.add_argument("--repeats", type=int, default=3, metavar="N",
                     help="timed repeats per configuration; the best is reported (default 3)")
    dec.add_argument("--continuous", action="store_true",
                     help="also measure batches > 1 with continuous batching (per-row slot schedule)")
    dec.add_argument("--json", action="store_true", help="print rows as JSON")
    dec.set_defaults(func=_cmd_decode, late_arguments=functools.partial(knob_flags, default="the model's"))

    tr = sub.add_parser("train", help="training tokens/s and FLOP/s per method vs vanilla and transformers' Llama")
    tr.add_argument("--methods", default="vanilla,ponderlm2,ponderlm3",
                    help="comma-separated methods (vanilla is always included)")
    tr.add_argument("--hidden", type=int, default=512, metavar="D", help="model width (default 512)")
    tr.add_argument("--layers", type=int, default=8, metavar="L", help="layers (default 8)")
    tr.add_argument("--max-steps", type=int, default=1, metavar="K", help="K for the pondering methods (default 1)")
    tr.add_argument("--vocab", type=int, default=4096, metavar="V", help="vocabulary size (default 4096)")
    tr.add_argument("--seq-len", type=int, default=256, metavar="T", help="tokens per sequence (default 256)")
    tr.add_argument("--batch", type=int, default=4, metavar="B", help="sequences per step (default 4)")
    tr.add_argument("--repeats", type=int, default=3, metavar="N",
                    help="timed repeats; the best is reported (default 3)")
    tr.add_argument("--no-hf", action="store_true", help="skip the transformers LlamaForCausalLM reference row")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    tr.add_argument("--json", action="store_true", help="print rows as JSON")
    tr.set_defaults(func=_cmd_train)


def _cmd_decode(args: argparse.Namespace) -> int:
    import torch

    from ponderlm.benchmarking import bench_decode, format_table, synthetic_model
    from ponderlm.eval.perplexity import resolve

    knobs = knob_values(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        from ponderlm.loading import load_model

        model, _ = load_model(args.model, "cpu")
    else:
        extra = method_class(args.method).stand_in_options
        model = synthetic_model(args.method, args.hidden, args.layers, args.max_steps, 4096, **extra).eval()
        model.method.spread_stand_in(args.router_scale)  # e.g. a spread router, so the stand-in prunes some slots
    options = resolve(model, **knobs)
    rows = bench_decode(model, args.batch, args.prompt_len, args.new_tokens, args.repeats, options=options)
    if args.continuous and model.config.method_class.adaptive:
        rows += bench_decode(model, [b for b in args.batch if b > 1], args.prompt_len, args.new_tokens,
                             args.repeats, continuous=True, options=options)
    cfg = model.config
    knob_text = "".join(f" {k}={v}" for k, v in options.as_dict().items() if v is not None)
    print(f"# decode {cfg.method} d={cfg.hidden_size} L={cfg.num_hidden_layers} K={cfg.max_steps}{knob_text} "
          f"threads={torch.get_num_threads()}")
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ponderlm.benchmarking import bench_train, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise PonderError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(method_names())}")
    if "vanilla" not in methods:
        methods.insert(0, "vanilla")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, peak = bench_train(methods, args.hidden, args.layers, args.max_steps, args.vocab, args.seq_len,
                             args.batch, args.repeats, hf_reference=not args.no_hf)
    print(f"# train d={args.hidden} L={args.layers} K={args.max_steps} T={args.seq_len} B={args.batch} "
          f"threads={torch.get_num_threads()} fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0
