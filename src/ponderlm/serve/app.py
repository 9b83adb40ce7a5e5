"""HTTP layer: FastAPI routes over one `Engine` (vLLM's OpenAI server shapes and error conventions)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from ponderlm.serve.page import page_html
from ponderlm.serve.protocol import (
    ChoiceBuffer,
    CompletionRequest,
    RequestError,
    chunk_choice,
    parse_request,
    token_prompts,
    usage,
)
from ponderlm.serve.scheduler import Engine, EngineRequest, Event, QueueFull

# How often a non-streaming request checks whether its client went away (its rows are then freed).
DISCONNECT_POLL_S = 0.5


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def build_app(engine: Engine, model_name: str) -> FastAPI:
    """The ASGI app. `engine` must be started by the caller (see `serve`)."""
    app = FastAPI(title="ponderlm", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    config = engine.model.config

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # never let a request kill us
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return JSONResponse(RequestError(500, message).body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page_html(model_name, config.max_steps)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.counts()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "ponderlm", "root": model_name,
            "max_model_len": config.max_position_embeddings, "method": config.method, "max_steps": config.max_steps,
            "tau": engine.defaults["tau"], "alpha": engine.defaults["alpha"]}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = engine.metrics.render(engine.counts()["running"])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
            req = parse_request(body)
            if req.model is not None and req.model != model_name:
                raise RequestError(404, f"The model `{req.model}` does not exist.", "model")
            params = req.sampling()
            if req.n > engine.max_batch:
                raise RequestError(400, f"n={req.n} exceeds the server's --max-batch ({engine.max_batch})", "n")
            prompts = token_prompts(req, engine.tokenizer, config.vocab_size)
            limit = config.max_position_embeddings
            for ids in prompts:
                if len(ids) + params.max_tokens > limit:
                    raise RequestError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                                            f"{len(ids)} and max_tokens is {params.max_tokens}.", "prompt")
            return await _complete(engine, request, req, params, prompts, model_name)
        except RequestError as exc:
            if exc.status != 404:
                engine.metrics.finished("rejected")
            return _error(exc)

    return app


async def _complete(engine: Engine, request: Request, req: CompletionRequest, params, prompts: list[list[int]],
                    model_name: str) -> Response:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    submitted: list[EngineRequest] = []

    def emitter(prompt_index: int):
        def emit(item: Event | Exception) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (prompt_index, item))
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass
        return emit

    try:
        for i, ids in enumerate(prompts):
            er = EngineRequest(prompt_ids=ids, params=params, emit=emitter(i), n=req.n, stream=req.stream)
            engine.submit(er)
            submitted.append(er)
    except QueueFull as exc:
        for er in submitted:
            engine.cancel(er)
        raise RequestError(429, str(exc)) from None

    rid = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    tok = engine.tokenizer
    echo_text = params.echo and not req.stream  # streamed, the prompt goes out with the first chunk instead
    buffers = [ChoiceBuffer(p * req.n + i, tok.decode(ids) if echo_text else None, None)
               for p, ids in enumerate(prompts) for i in range(req.n)]
    open_choices = len(buffers)

    def prompt_logprobs(p: int):
        return submitted[p].prompt_logprobs if params.echo and params.logprobs is not None else None

    def cancel_all() -> None:
        for er in submitted:
            engine.cancel(er)

    if req.stream:
        async def stream() -> AsyncIterator[str]:
            nonlocal open_choices
            started = set()
            try:
                while open_choices:
                    p, item = await events.get()
                    if isinstance(item, Exception):
                        yield _sse({"error": RequestError(500, str(item).splitlines()[0]).body()["error"]})
                        return
                    buf = buffers[p * req.n + item.choice]
                    text, lps, offset = item.text, item.logprobs if params.logprobs is not None else None, len(buf.text)
                    if buf.index not in started and params.echo:  # the prompt goes first, as in vLLM
                        echoed = tok.decode(prompts[p])
                        text, offset = echoed + text, 0
                        lps = None if lps is None else (prompt_logprobs(p) or []) + lps
                        buf.text = echoed
                    started.add(buf.index)
                    buf.add(item)
                    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                             "choices": [chunk_choice(buf.index, text, lps, offset, item.steps, item.finish_reason,
                                                      item.stop_reason)]}
                    yield _sse(chunk)
                    if item.finish_reason is not None:
                        open_choices -= 1
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                                "choices": [], "usage": usage(sum(map(len, prompts)) * req.n,
                                                              sum(b.tokens for b in buffers))})
                yield "data: [DONE]\n\n"
            finally:  # client gone or done: whatever still runs gives its row back
                cancel_all()

        return StreamingResponse(stream(), media_type="text/event-stream",
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
            buffers[p * req.n + item.choice].add(item)
            if item.finish_reason is not None:
                open_choices -= 1
    except asyncio.CancelledError:
        cancel_all()
        raise
    for p in range(len(prompts)):
        for i in range(req.n):
            buf = buffers[p * req.n + i]
            if params.echo and params.logprobs is not None:
                buf.logprobs = list(prompt_logprobs(p) or []) + buf.logprobs
    body = {"id": rid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [b.body(params.logprobs is not None) for b in buffers],
            "usage": usage(sum(map(len, prompts)) * req.n, sum(b.tokens for b in buffers))}
    return JSONResponse(body)


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"
