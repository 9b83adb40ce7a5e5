"""`ponderlm train`: parse the command line into a `RunConfig` and call `train()`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ponderlm.errors import PonderError
from ponderlm.registry import REGISTRY

DESCRIPTION = """\
Pretrain a pondering language model. `ponderlm train --recipe quickstart` is the CPU quickstart
(a tiny PonderLM-3 on the bundled corpus, a few minutes on a laptop).

A run's settings come from the documented defaults (docs/METHODS.md), a recipe you name
(CONFIG.yaml, see docs/TRAINING.md, or --recipe NAME for a packaged one) and key=value overrides,
e.g. optim.lr=3e-4 model.method=ponderlm3 train.steps=200; nothing else. Without a recipe every
setting you do not give is its documented default. The run prints, and records in config.yaml and
summary.json, every setting that differs from the defaults and where it came from.
The flags below win over key=value overrides. Note: model.max_steps is K (pondering steps per
token); --max-steps / train.steps is the number of training steps.

Several processes (see docs/DISTRIBUTED.md): --nproc N re-launches this command through torchrun
on N local processes (GPUs); `torchrun --nproc-per-node N -m ponderlm train ...` does the same and
also spans nodes. dist.backend=ddp|fsdp2 in the recipe picks the wrapping.

Exit codes: 0 done; 2 bad input (one line on stderr); 130 / 143 stopped by SIGINT / SIGTERM
after writing a checkpoint (continue with --out DIR --resume); 1 a rank failed (--nproc)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ponderlm.train.config import preset_names

    p = subparsers.add_parser("train", help="pretrain a pondering LM (--recipe quickstart: the CPU quickstart)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=f"recipes: {', '.join(preset_names())}")
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value", help="a recipe file and/or overrides")
    p.add_argument("--recipe", "--preset", dest="recipe", metavar="NAME",
                   help="a packaged recipe by name, e.g. quickstart (default: none, the documented defaults)")
    p.add_argument("--method", metavar="M", help="pondering method (model.method); 'vanilla' also sets K=0")
    p.add_argument("--max-steps", type=int, metavar="N", help="number of training steps (train.steps)")
    p.add_argument("--out", metavar="DIR", help="run directory (train.out); default runs/<name>-<time>")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (its config.yaml if no CONFIG given)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N local processes (one per GPU) by re-launching through torchrun")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponderlm.train import parallel

    if parallel.under_torchrun():  # a worker: torchrun's error summary then shows this rank's exception
        if args.nproc is not None:
            raise PonderError("--nproc launches torchrun itself; leave it out when running under torchrun")
        try:
            return parallel.record(_run)(args)
        except PonderError:
            if os.environ.get("RANK") != "0":
                return 2  # every rank raises the same bad-input error; rank 0 prints it
            raise
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ponderlm.train.config import load_config, validate
    from ponderlm.train.trainer import train

    config, overrides = _split_positionals(args.args)
    if args.resume and not args.out:
        raise PonderError("--resume needs --out DIR (the run directory to continue)")
    if args.resume and config is None and args.recipe is None and Path(args.out).is_dir():
        if not (Path(args.out) / "config.yaml").is_file():  # never fall back to the defaults here
            raise PonderError(f"--resume: {args.out} has no config.yaml to resume with; pass the run's CONFIG too")
        config = str(Path(args.out) / "config.yaml")
    cfg = load_config(config, overrides, recipe=args.recipe)
    if args.method is not None:
        cfg.model["method"] = args.method
        cfg.sources["model.method"] = "flag --method"
        takes_steps = getattr(REGISTRY.get(args.method), "takes_steps", True)
        if not takes_steps and not any(o.startswith("model.max_steps=") for o in overrides):
            cfg.model["max_steps"] = 0  # a vanilla baseline of any recipe, without a second flag
            cfg.sources["model.max_steps"] = "flag --method"
    if args.max_steps is not None:
        cfg.train.steps = args.max_steps
        cfg.sources["train.steps"] = "flag --max-steps"
    if args.out is not None:
        cfg.train.out = args.out
    validate(cfg)
    if args.nproc is not None and args.nproc < 1:
        raise PonderError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is not None and args.nproc > 1:
        return _relaunch(args, cfg)
    return train(cfg, resume=args.resume).exit_code


def _relaunch(args: argparse.Namespace, cfg) -> int:
    """Same command on N processes: the config was validated here, the run dir is fixed for all ranks."""
    from datetime import datetime

    from ponderlm.train import checkpoint, parallel

    out = args.out or f"runs/{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    argv = ["train", *args.args, "--out", out]
    for flag, value in (("--recipe", args.recipe), ("--method", args.method), ("--max-steps", args.max_steps)):
        if value is not None:
            argv += [flag, str(value)]
    if args.resume:
        argv.append("--resume")
    code = parallel.relaunch(args.nproc, argv)
    if code == 1:
        found = checkpoint.list_checkpoints(Path(out) / "checkpoints")
        print(f"last complete checkpoint: {found[-1][1] if found else 'none'}; continue with "
              f"`ponderlm train --out {out} --resume --nproc {args.nproc}`", file=sys.stderr)
    return code


def _split_positionals(items: list[str]) -> tuple[str | None, list[str]]:
    """Items with '=' are overrides; at most one item without '=' is the recipe file."""
    config = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise PonderError(f"more than one CONFIG given ({config!r}, {item!r}); overrides look like key=value")
    return config, overrides
