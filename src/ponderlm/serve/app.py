"""HTTP layer: FastAPI routes over one `Engine` (vLLM's OpenAI server shapes and error conventions).

Every answer that is not a success is OpenAI's error object, whatever the route (unknown paths and wrong
methods included). Parsing, validation and tokenization run on a worker thread, never on the event loop:
a large prompt must not stall `/health`, streaming clients or other requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ponderlm.methods.options import knob_table
from ponderlm.serve.limits import Limits
from ponderlm.serve.metrics import CONTENT_TYPE
from ponderlm.serve.page import page_html
from ponderlm.serve.protocol import (
    ChatRequest,
    ChoiceBuffer,
    CompletionRequest,
    RequestError,
    chat_chunk_choice,
    check_prompt_chars,
    chunk_choice,
    knob_fields,
    parse_json,
    parse_request,
    token_prompts,
    usage,
)
from ponderlm.serve.scheduler import Engine, EngineRequest, Event, QueueFull, SamplingParams

# How often a non-streaming request checks whether its client went away (its rows are then freed).
DISCONNECT_POLL_S = 0.5
ROUTES = "/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics, /"
T = TypeVar("T")


def error_response(exc: RequestError, headers: dict[str, str] | None = None) -> Response:
    # json.dumps escapes non-ASCII (JSONResponse would encode UTF-8 and fail on a lone surrogate).
    return Response(json.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers)


class BearerAuth:
    """`--api-key`: every /v1 route needs `Authorization: Bearer <key>` (vLLM's rule: `/health`, `/metrics` and
    the page stay open for probes and scrapers). A pure ASGI middleware, so streaming and disconnect
    detection pass through untouched."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):  # constant time: no key guessing by timing
                message = ("missing API key: send the header `Authorization: Bearer <key>`" if not given else
                           "incorrect API key provided")
                response = error_response(RequestError(401, message), headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: Engine, model_name: str, *, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The ASGI app. `engine` must be started by the caller (see `serve`)."""
    # One worker: requests are tokenized one after another (the tokenizer is shared with the engine thread,
    # which only decodes), and the event loop stays free. Fast tokenizers release the GIL while encoding.
    prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ponderlm-prepare")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        prepare_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ponderlm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)
    limits = limits or Limits()
    created = int(time.time())
    config, tokenizer = engine.model.config, engine.tokenizer
    context = config.max_position_embeddings
    max_chars = limits.prompt_chars(context)
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    knobs = knob_table()  # a request may set any knob a method declares

    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(prepare_pool, fn, *args)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes (404) and wrong methods (405) in OpenAI's shape, so clients show a reason.
        if exc.status_code == 404:
            message = f"no route {request.url.path!r}; this server has {ROUTES}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path!r}"
        else:
            message = str(exc.detail)
        return error_response(RequestError(exc.status_code, message), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # a bug: never let a request kill us
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return error_response(RequestError(500, message))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page_html(model_name, config.max_steps, needs_key=api_key is not None,
                         knobs=config.method_class.knobs())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.counts()}

    def model_card() -> dict[str, Any]:
        # max_model_len (vLLM's name): the context length clients must respect (lm-eval's max_length).
        return {"id": model_name, "object": "model", "created": created, "owned_by": "ponderlm", "root": model_name,
                "max_model_len": context, "method": config.method, "max_steps": config.max_steps,
                **engine.options.as_dict(), "chat": has_chat_template}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if model_id != model_name:
            return error_response(RequestError(404, f"The model `{model_id}` does not exist.", "model"))
        return JSONResponse(model_card())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(engine.counts()["running"]), media_type=CONTENT_TYPE)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise RequestError(404, f"The model `{name}` does not exist.", "model")

    def check_n(n: int) -> None:
        if n > engine.max_batch:
            raise RequestError(400, f"n={n} exceeds the server's --max-batch ({engine.max_batch})", "n")

    def parse(raw: bytes, kind: Any) -> tuple[Any, dict[str, Any]]:
        body = parse_json(raw)
        found = knob_fields(body, knobs)  # each checked by its declaration; `with_knobs`: the method's rules
        return parse_request(body, kind), found

    def with_knobs(params: SamplingParams, found: dict[str, Any]) -> SamplingParams:
        params.knobs = found
        try:
            engine.options_for(params)
        except ValueError as exc:
            raise RequestError(400, str(exc), next(iter(found), None)) from None
        return params

    def check_context(prompts: list[list[int]], params: SamplingParams) -> None:
        for ids in prompts:
            if len(ids) + params.max_tokens > context:
                raise RequestError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                                        f"{len(ids)} and max_tokens is {params.max_tokens}.", "prompt")

    def prepare_completion(raw: bytes) -> tuple[CompletionRequest, SamplingParams, list[list[int]]]:
        req, found = parse(raw, CompletionRequest)
        check_model(req.model)
        params = with_knobs(req.sampling(), found)
        check_n(req.n)
        prompts = token_prompts(req, tokenizer, config.vocab_size, max_chars, engine.max_queue)
        check_context(prompts, params)
        return req, params, prompts

    def prepare_chat(raw: bytes) -> tuple[ChatRequest, SamplingParams, list[list[int]]]:
        if not has_chat_template:
            raise RequestError(400, f"the model `{model_name}` is completions-only: its tokenizer has no chat "
                                    "template; use /v1/completions", "messages")
        req, found = parse(raw, ChatRequest)
        check_model(req.model)
        check_n(req.n)
        conversation = req.conversation()
        check_prompt_chars("".join(m["content"] for m in conversation), max_chars, "messages")
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template is the model's own code run on these messages (e.g. a role rule)
            raise RequestError(400, f"the chat template cannot format these messages "
                                    f"({type(exc).__name__}: {exc})".splitlines()[0], "messages") from None
        check_prompt_chars(text, max_chars, "messages")
        # The template writes any special tokens it wants (vLLM's default for chat).
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RequestError(400, "the chat template formats these messages as an empty prompt", "messages")
        params = with_knobs(req.sampling(default_max_tokens=max(context - len(ids), 0)), found)
        check_context([ids], params)
        return req, params, [ids]

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed --max-request-bytes (before reading it
        all when the client declares its length)."""
        limit = limits.max_request_bytes
        declared = request.headers.get("content-length", "")
        too_big = RequestError(413, f"the request body is over {limit} bytes (--max-request-bytes)")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def rejected(exc: RequestError) -> Response:
        if exc.status < 500 and exc.status != 404:  # a 500 here was counted as an error by the engine
            engine.metrics.finished("rejected")
        return error_response(exc)

    async def serve_request(request: Request, prepare: Any, chat: bool) -> Response:
        """One completions or chat request: parse and tokenise off the event loop, then run it."""
        try:
            req, params, prompts = await off_loop(prepare, await read_body(request))
            return await _run(engine, request, params, prompts, model_name, n=req.n, stream=req.stream,
                              include_usage=req.stream_options is not None and req.stream_options.include_usage,
                              chat=chat)
        except RequestError as exc:
            return rejected(exc)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve_request(request, prepare_completion, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve_request(request, prepare_chat, chat=True)

    return app


async def _run(engine: Engine, request: Request, params: SamplingParams, prompts: list[list[int]], model_name: str,
               *, n: int, stream: bool, include_usage: bool, chat: bool) -> Response:
    """Submit every prompt (n choices each) and answer as a completion or a chat completion, streamed or not."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    submitted: list[EngineRequest] = []

    def emitter(prompt_index: int) -> Callable[[Event | Exception], None]:
        def emit(item: Event | Exception) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (prompt_index, item))
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass
        return emit

    try:
        for i, ids in enumerate(prompts):
            er = EngineRequest(prompt_ids=ids, params=params, emit=emitter(i), n=n, stream=stream)
            engine.submit(er)
            submitted.append(er)
    except QueueFull as exc:
        for er in submitted:
            engine.cancel(er)
        raise RequestError(429, str(exc)) from None

    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    tok = engine.tokenizer
    with_logprobs = params.logprobs is not None
    echo_text = params.echo and not stream  # streamed, the prompt goes out with the first chunk instead
    buffers = [ChoiceBuffer(p * n + i, tok.decode(ids) if echo_text else None, None)
               for p, ids in enumerate(prompts) for i in range(n)]
    open_choices = len(buffers)

    def prompt_logprobs(p: int):
        return submitted[p].prompt_logprobs if params.echo and with_logprobs else None

    def cancel_all() -> None:
        for er in submitted:
            engine.cancel(er)

    def usage_body() -> dict[str, int]:
        return usage(sum(map(len, prompts)) * n, sum(b.tokens for b in buffers))

    if stream:
        async def sse() -> AsyncIterator[str]:
            nonlocal open_choices
            started: set[int] = set()
            chunk_obj = "chat.completion.chunk" if chat else "text_completion"
            try:
                while open_choices:
                    p, item = await events.get()
                    if isinstance(item, Exception):
                        yield _sse({"error": RequestError(500, str(item).splitlines()[0]).body()["error"]})
                        return
                    buf = buffers[p * n + item.choice]
                    text, lps, offset = item.text, item.logprobs if with_logprobs else None, len(buf.text)
                    first = buf.index not in started
                    if first and params.echo:  # the prompt goes first, as in vLLM
                        echoed = tok.decode(prompts[p])
                        text, offset = echoed + text, 0
                        lps = None if lps is None else (prompt_logprobs(p) or []) + lps
                        buf.text = echoed
                    started.add(buf.index)
                    buf.add(item)
                    if chat:
                        choice = chat_chunk_choice(buf.index, text, first, lps, params.logprobs or 0, item.steps,
                                                   item.finish_reason, item.stop_reason)
                    else:
                        choice = chunk_choice(buf.index, text, lps, offset, item.steps, item.finish_reason,
                                              item.stop_reason)
                    yield _sse({"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [choice]})
                    if item.finish_reason is not None:
                        open_choices -= 1
                if include_usage:
                    yield _sse({"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [], "usage": usage_body()})
                yield "data: [DONE]\n\n"
            finally:  # client gone or done: whatever still runs gives its row back
                cancel_all()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    try:
        while open_choices:
            try:
                p, item = await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    cancel_all()
                    return Response(status_code=499)
                continue
            if isinstance(item, Exception):
                cancel_all()
                raise RequestError(500, f"{type(item).__name__}: {item}".splitlines()[0])
            buffers[p * n + item.choice].add(item)
            if item.finish_reason is not None:
                open_choices -= 1
    except asyncio.CancelledError:
        cancel_all()
        raise
    for p in range(len(prompts)):
        for i in range(n):
            buf = buffers[p * n + i]
            if params.echo and with_logprobs:
                buf.logprobs = list(prompt_logprobs(p) or []) + buf.logprobs
    choices = [b.chat_body(params.logprobs) if chat else b.body(with_logprobs) for b in buffers]
    return JSONResponse({"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices,
                         "usage": usage_body()})


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"
