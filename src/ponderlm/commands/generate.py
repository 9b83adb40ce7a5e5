"""`ponderlm generate`: decode from a prompt with real early exit; optionally show the steps per token."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ponderlm.commands.knobs import knob_flags, knob_values
from ponderlm.errors import PonderError
from ponderlm.paths import check_writable


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a prompt (real early exit); --show-steps colours tokens by depth",
        description="Generate a continuation of --prompt token by token on the KV-cached decode path, where pruned "
                    "latent steps are never computed. --show-steps colours each token by the additional steps spent "
                    "at it (the pondering that produced the next token); --html writes the same view as a page.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="a saved model directory or a run directory")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--show-steps", action="store_true",
                   help="show the executed steps of each token with a legend: ANSI colours on a terminal, "
                        "else the count in [brackets] after the token")
    p.add_argument("--color", default="auto", choices=("auto", "always", "never"),
                   help="--show-steps colours: auto (default) colours a terminal unless NO_COLOR is set "
                        "(no-color.org); always / never")
    p.add_argument("--html", metavar="FILE", help="write a standalone HTML page of the depth view")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=cmd_generate, late_arguments=knob_flags)


def _check_args(args: argparse.Namespace) -> None:
    """Every option checked before the model loads; NaN passes `<` / `>` tests, so finiteness is explicit."""
    if args.max_new_tokens < 1:
        raise PonderError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.seed < 2**64:  # torch.Generator takes at most 64 bits
        raise PonderError(f"--seed must be in [0, 2**64), got {args.seed}")
    for flag in ("temperature", "top_p"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise PonderError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if args.temperature < 0:
        raise PonderError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise PonderError(f"--top-p must be in (0, 1] (the nucleus probability mass), got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise PonderError(f"--top-k must be >= 1, got {args.top_k}")
    if (args.top_k is not None or args.top_p is not None) and args.temperature == 0:
        print("note: --top-k / --top-p only apply when sampling (--temperature > 0); decoding greedily",
              file=sys.stderr)
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        raise PonderError("--prompt is not valid UTF-8 text; pass the prompt in UTF-8") from None
    if args.html:
        check_writable(args.html, "--html", directory=False)


def depth_policy_text(config, options) -> str:
    """What decided the depths in this generation (`options`: the knob values in force): the method's own policy
    (with the swept knobs' values) or a fixed-pruning control with its target, as shown on the --html page."""
    from ponderlm.methods.options import sweep_knobs

    head = f"{config.method}, K={config.max_steps}"
    control = list(config.method_class.fixed_depth_knobs("learned") or ())  # (policy, target) knob names
    if not control:
        return f"{head}, depth policy: fixed (every token runs K additional steps)"
    values = options.as_dict()
    policy, target = values[control[0]] or "learned", values[control[1]]
    if policy != "learned":
        return f"{head}, depth policy: {policy} fixed pruning, target {target:g} additional steps per token"
    knobs = ", ".join(f"{k}={v:g}" for k, v in values.items() if k in sweep_knobs())
    return f"{head}, depth policy: learned ({knobs})"


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ponderlm.eval.perplexity import resolve
    from ponderlm.inference.render import (
        colour_enabled,
        depth_view,
        legend_ansi,
        legend_plain,
        render_ansi,
        render_html,
        render_plain,
    )
    from ponderlm.loading import load_model

    _check_args(args)
    knobs = knob_values(args)
    model, tokenizer = load_model(args.model, args.device)
    options = resolve(model, **knobs)
    ids = tokenizer(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids:  # an empty prompt starts from the document separator, as documents do in training
        ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    sampling = {}
    if args.temperature > 0:
        sampling = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k or 0,
                    "top_p": args.top_p if args.top_p is not None else 1.0}
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, generator=generator,
                             decode_options=options, **sampling)
    except ValueError as exc:  # invalid option combinations reported by config validation / generate
        raise PonderError(str(exc)) from None
    sequence = out.sequences[0].tolist()
    steps = out.executed_steps[0].float().tolist()
    K = model.config.max_steps
    if args.show_steps:
        view = depth_view(tokenizer, sequence, steps, len(ids))
        if colour_enabled(args.color, sys.stdout):
            print(render_ansi(view, K))
            print(legend_ansi(K))
        else:
            print(render_plain(view))
            print(legend_plain(view))
        generated = steps[len(ids):] if len(steps) > len(ids) else []
        avg = sum(steps) / len(steps) if steps else 0.0
        print(f"avg executed steps {avg:.2f} of K={K} over {len(steps)} consumed tokens"
              + (f" ({sum(generated) / len(generated):.2f} on generated ones)" if generated else ""))
    else:
        print(tokenizer.decode(sequence, skip_special_tokens=True))
    if args.html:
        view = depth_view(tokenizer, sequence, steps, len(ids))
        subtitle = depth_policy_text(model.config, options)
        path = Path(args.html)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_html(view, K, subtitle=subtitle), encoding="utf-8")
        except OSError as exc:  # checked up front; this is a disk that filled or vanished since
            raise PonderError(f"cannot write --html {path}: {exc.strerror or exc}") from None
        print(f"wrote {path}", file=sys.stderr)
    return 0
