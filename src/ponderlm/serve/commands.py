"""`ponderlm serve`: an OpenAI-compatible HTTP server with continuous batching and real early exit."""

from __future__ import annotations

import argparse
import sys

from ponderlm.errors import PonderError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (continuous batching, real early exit)",
        description="Serve /v1/completions (streaming, logprobs, echo), /v1/models, /health, /metrics and a web page "
                    "at / that colours streamed tokens by their latent steps. Requests join and leave the running "
                    "batch between backbone calls; skipped latent steps are never computed. Needs the serve extra: "
                    "pip install 'ponderlm[serve]'.")
    p.add_argument("--model", required=True, metavar="DIR", help="a saved model directory or a run directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the `model` name clients use (default: the directory name)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="rows decoded together (default 32)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests waiting for a row before new ones get 429 (default 256)")
    p.add_argument("--tau", type=float, metavar="T",
                   help="default pruning / halting threshold (default: the checkpoint's); requests may override it")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="default PonderLM-3 router bias (default: the checkpoint's); requests may override it")
    p.add_argument("--depth-policy", choices=("learned", "uniform", "geometric"), metavar="P",
                   help="learned, or a fixed-pruning control for every request (needs --depth-target)")
    p.add_argument("--depth-target", type=float, metavar="X", help="average additional steps for fixed pruning")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise PonderError(f"ponderlm serve needs FastAPI and uvicorn ({exc.name} is missing); "
                          "pip install 'ponderlm[serve]'") from None
    import torch

    from ponderlm.eval.perplexity import DecodeSettings, applied, check_settings
    from ponderlm.loading import load_model, resolve_model_dir
    from ponderlm.serve.app import build_app
    from ponderlm.serve.scheduler import Engine

    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise PonderError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise PonderError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, args.device)
    settings = DecodeSettings(tau=args.tau, alpha=args.alpha, depth_policy=args.depth_policy,
                              depth_target=args.depth_target)
    for note in check_settings(model.config, settings):
        print(f"note: {note}", file=sys.stderr)
    with applied(model, settings):  # validates the values as one-line errors
        pass
    # Fixed-pruning policy is a server-wide setting: it stays on the config the engine decodes with.
    if args.depth_policy is not None:
        model.config.depth_policy, model.config.depth_target = args.depth_policy, args.depth_target
    model_dir = resolve_model_dir(args.model)
    # A run directory resolves to its final/ checkpoint: name it after the run.
    name = args.served_model_name or (model_dir.parent.name if model_dir.name == "final" else model_dir.name)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue, tau=args.tau,
                    alpha=args.alpha)
    app = build_app(engine, name)
    engine.start()
    print(f"serving {name!r} ({model.config.method}, K={model.config.max_steps}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        engine.stop()
    return 0
