"""`ponderlm convert`: an official PonderLM-2 / PonderingLM checkpoint to ours, or ours back to the official format.

Only argparse here at import time (the CLI builds its parser without torch / transformers); the work is in
`ponderlm.backbone.official`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ponderlm.errors import PonderError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official PonderLM-2 / PonderingLM checkpoint to ours, or back (--to official)",
        description="Read a checkpoint saved by the official PonderLM-2 or PonderingLM code (a directory or hub id; "
                    "the format is detected from config.json, remote code is never run) and save it as a ponderlm "
                    "model that computes the same function; with --to official, write one of ours (ponderlm2, "
                    "ponderlm) in the official format. docs/CHECKPOINTS.md lists the formats.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="DIR_OR_ID", help="checkpoint directory or hub id")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must be empty or absent)")
    p.add_argument("--to", choices=("ponderlm", "official"), default="ponderlm",
                   help="ponderlm (default): official -> ours; official: ours -> the official format")
    p.add_argument("--official-method", choices=("ours", "ponderlm", "loop", "pause", "vanilla"), metavar="M",
                   help="the official --patch_method that trained the checkpoint, where config.json cannot tell "
                        "(PonderLM-2-repo Llama checkpoints): ours, ponderlm, loop, pause or vanilla")
    p.add_argument("--ignore-field", action="append", default=[], metavar="NAME",
                   help="accept an unknown config.json field you know does not change the forward (repeatable)")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PonderError(f"--out {out} exists and is not an empty directory")
    from ponderlm.backbone.official import copy_tokenizer, export_official, load_official, resolve_dir
    from ponderlm.modeling import PonderForCausalLM

    source = resolve_dir(args.source)
    if args.to == "official":
        if args.official_method or args.ignore_field:
            raise PonderError("--official-method and --ignore-field describe an official source, not --to official")
        model = PonderForCausalLM.from_pretrained(str(source), trust_remote_code=False)  # never a directory's code
        if not isinstance(model, PonderForCausalLM) or model.config.model_type != "ponder":
            raise PonderError(f"{args.source} is not a ponderlm checkpoint")
        export_official(model, out, source_dir=source)
        print(f"wrote {model.config.method} (K={model.config.max_steps}) in the official format to {out}")
        return 0
    model = load_official(PonderForCausalLM, args.source, official_method=args.official_method,
                          ignore_fields=args.ignore_field, directory=source)
    model.save_pretrained(out)
    copied = copy_tokenizer(source, out)
    cfg = model.config
    note = "" if copied else " (the source has no tokenizer files; add one to evaluate)"
    print(f"wrote {cfg.method} (backbone {cfg.backbone}, K={cfg.max_steps}, "
          f"embed_scale {cfg.resolved_embed_scale:.6g}) to {out}{note}")
    return 0
