"""`ponderlm serve`: an OpenAI-compatible HTTP server with continuous batching and real early exit."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys

from ponderlm.commands.knobs import knob_flags, knob_values
from ponderlm.errors import PonderError
from ponderlm.serve.limits import DEFAULT_MAX_REQUEST_BYTES, PROMPT_CHARS_PER_POSITION

API_KEY_ENV = "PONDERLM_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (continuous batching, real early exit)",
        description="Serve /v1/completions (streaming, logprobs, echo), /v1/chat/completions (models whose tokenizer "
                    "has a chat template), /v1/models, /health, /metrics and a web page at / that colours streamed "
                    "tokens by their latent steps. Requests join and leave the running "
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
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require `Authorization: Bearer KEY` on every /v1 route (default: ${API_KEY_ENV} if set, "
                        "else no key; /health, /metrics and the page stay open)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                   help=f"larger request bodies get 413 (default {DEFAULT_MAX_REQUEST_BYTES}: 4 MiB)")
    p.add_argument("--max-prompt-chars", type=int, metavar="N",
                   help="longer prompt strings get 400 before they are tokenized (default: "
                        f"{PROMPT_CHARS_PER_POSITION} x the model's context length)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=cmd_serve, late_arguments=functools.partial(
        knob_flags, default="the checkpoint's; requests may override it"))


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise PonderError(f"ponderlm serve needs FastAPI, uvicorn and prometheus_client ({exc.name} is missing); "
                          "pip install 'ponderlm[serve]'") from None
    api_key = check_args(args)
    # Bind before loading the model: a port in use or a bad --host is one line, exit 2, in a second, and
    # "serving ... on" is printed only once the socket is ours.
    sock = bind(args.host, args.port)
    try:
        return _serve(args, sock, api_key, uvicorn)
    finally:
        sock.close()


def check_args(args: argparse.Namespace) -> str | None:
    """Refuse bad values before anything is loaded or bound; returns the API key in force (None: none)."""
    for name in ("max_batch", "max_queue", "threads", "max_request_bytes", "max_prompt_chars"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PonderError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 0 <= args.port <= 65535:
        raise PonderError(f"--port must be in 0..65535, got {args.port}")
    knob_values(args)  # the knob values, checked by the methods' declarations and rules
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if api_key is not None and (not api_key.strip() or not api_key.isprintable() or not api_key.isascii()):
        source = "--api-key" if args.api_key is not None else f"${API_KEY_ENV}"
        raise PonderError(f"{source} must be non-empty printable ASCII (it is compared with an HTTP header)")
    return api_key


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it), or a one-line error."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise PonderError(f"cannot listen on {where}: --host {host!r} is not a valid address or known host name "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PonderError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def _serve(args: argparse.Namespace, sock: socket.socket, api_key: str | None, uvicorn) -> int:
    import torch

    from ponderlm.eval.perplexity import resolve
    from ponderlm.loading import load_model, resolve_model_dir
    from ponderlm.serve.app import build_app
    from ponderlm.serve.limits import Limits
    from ponderlm.serve.scheduler import Engine

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, args.device)
    options = resolve(model, **knob_values(args))  # the server's knob values: requests may override them
    model_dir = resolve_model_dir(args.model)
    # A run directory resolves to its final/ checkpoint: name it after the run.
    name = args.served_model_name or (model_dir.parent.name if model_dir.name == "final" else model_dir.name)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue, options=options)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_prompt_chars=args.max_prompt_chars)
    app = build_app(engine, name, api_key=api_key, limits=limits)
    host, port = sock.getsockname()[:2]  # the real port when --port 0 asked for a free one
    if api_key is None and not _loopback(host):
        print(f"note: listening on {host} without --api-key: anyone who can reach this port can use the server",
              file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    engine.start()
    url_host = f"[{host}]" if ":" in host else host
    print(f"serving {name!r} ({model.config.method}, K={model.config.max_steps}) on http://{url_host}:{port}"
          f"{' (API key required)' if api_key else ''}", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
    return 0


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
