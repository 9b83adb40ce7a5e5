"""`ponderlm plan CONFIG --gpus N`: the command line of `ponderlm.plan` (what a recipe costs before it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="memory, FLOPs and time of a training recipe on N GPUs",
                              description="Estimate parameters, memory per GPU (with and without activation "
                              "checkpointing), training FLOPs per token and the time for the recipe's token "
                              "budget on N GPUs at an assumed MFU. CONFIG is a recipe file or a preset name.")
    p.add_argument("config", metavar="CONFIG", help="a recipe YAML or a packaged preset name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, as for `ponderlm train`")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="number of GPUs (default 1)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.add_argument("--gpu-flops", type=float, default=312e12, metavar="F",
                   help="peak bf16 FLOP/s per GPU (default 312e12, A100)")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, metavar="GB", help="memory per GPU (default 80)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponderlm.plan import format_plan, plan
    from ponderlm.train.config import load_config, preset_names

    path = Path(args.config)
    if not path.exists() and args.config in preset_names():
        cfg = load_config(None, args.overrides, preset=args.config)
    else:
        cfg = load_config(path, args.overrides)
    print(format_plan(plan(cfg, args.gpus, mfu=args.mfu, gpu_flops=args.gpu_flops, gpu_mem_gb=args.gpu_mem_gb)))
    return 0
