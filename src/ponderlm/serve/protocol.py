"""Request validation and response shapes of `/v1/completions` and `/v1/chat/completions` (OpenAI's / vLLM's
conventions).

Every rejection is a `RequestError` with an HTTP status and a one-line reason, rendered as
`{"error": {"message", "type", "param", "code"}}`, the body the official clients parse.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ponderlm.serve.limits import MAX_JSON_DEPTH
from ponderlm.serve.scheduler import Event, SamplingParams, TokenLogprob

MAX_LOGPROBS = 20  # as vLLM's default cap (OpenAI allows 5)

_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError", 405: "MethodNotAllowedError", 413: "RequestTooLargeError",
                422: "UnprocessableEntityError", 429: "RateLimitError"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "InternalServerError" if self.status >= 500 else "BadRequestError")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, or a 400: invalid JSON, nesting deeper than MAX_JSON_DEPTH, or strings
    that are not Unicode text (lone surrogates such as "\\ud800" parse in Python but cannot be encoded,
    tokenized or echoed back)."""
    try:
        body = json.loads(raw)
    except RecursionError:  # json's C parser bounds its own recursion: nested ~1000 deep
        raise RequestError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # also bodies that are not UTF-8 and integers over Python's digit limit
        raise RequestError(400, f"the request body is not valid JSON ({str(exc).splitlines()[0]})") from None
    _check_tree(body)
    return body


def _check_tree(body: Any) -> None:
    # Iterative: a recursive walk would itself hit the recursion limit on what it is meant to refuse.
    stack: list[tuple[Any, int, str | None]] = [(body, 0, None)]
    while stack:
        value, depth, field = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", field)
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, field, what="a field name")  # before it is used to name anything
                stack.append((item, depth + 1, key if field is None else field))
        elif isinstance(value, list):  # numbers need no check: a list of token ids stays one cheap pass
            stack.extend((item, depth + 1, field) for item in value if isinstance(item, (str, list, dict)))
        elif isinstance(value, str):
            _check_text(value, field)


def _check_text(text: str, field: str | None, what: str = "") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = f"\\u{ord(text[exc.start]):04x}"
        where = f" ({what})" if what else ""
        raise RequestError(400, f"invalid {field or 'request'}{where}: a lone surrogate ({bad}) is not Unicode "
                                "text", field) from None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share (ponderlm's decoding knobs, e.g. tau and alpha, are taken out of the body before,
    by `knob_fields`). Unknown fields are errors; known fields this server cannot honour are accepted only at their
    neutral values."""

    model_config = ConfigDict(extra="forbid", strict=False)

    model: str | None = None
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extension: vLLM's ignore_eos (benchmarks: fixed output lengths)
    ignore_eos: bool = False

    def _check_common(self) -> list[str]:
        for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0)):
            if getattr(self, name) not in (None, neutral):
                raise RequestError(400, f"{name} is not supported by this server (use 0)", name)
        if self.logit_bias:
            raise RequestError(400, "logit_bias is not supported by this server", "logit_bias")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise RequestError(400, "stop must be at most 4 non-empty strings", "stop")
        return stops

    def _params(self, max_tokens: int | None, logprobs: int | None, echo: bool) -> SamplingParams:
        return SamplingParams(max_tokens=16 if max_tokens is None else max_tokens,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, stop=self._check_common(),
                              seed=self.seed, logprobs=logprobs, echo=echo, ignore_eos=self.ignore_eos)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def sampling(self) -> SamplingParams:
        if self.best_of not in (None, self.n):
            raise RequestError(400, "best_of is not supported by this server (omit it or set it to n)", "best_of")
        if self.suffix:
            raise RequestError(400, "suffix is not supported by this server", "suffix")
        return self._params(self.max_tokens, self.logprobs, self.echo)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # the text parts of a multi-part message, in order
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    """OpenAI chat fields (text only: no tools, images or response formats)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(None, ge=0)  # chat's default: up to the context length (as vLLM)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._params(default_max_tokens if max_tokens is None else max_tokens,
                            (self.top_logprobs or 0) if self.logprobs else None, False)

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in self.messages]


def knob_fields(body: Any, knobs: dict[str, Any]) -> dict[str, Any]:
    """Take the decoding knobs (`knobs`: `knob_table()`, every knob a method declares) out of a request body, each
    checked by its declaration; null keeps the server's value."""
    found = {name: body.pop(name) for name in [k for k in body if k in knobs]} if isinstance(body, dict) else {}
    for name, value in found.items():
        if value is not None and (problem := knobs[name][0].problem(value)) is not None:
            raise RequestError(400, problem, name)
    return found


def parse_request(body: Any, kind: type[_Sampling] = CompletionRequest) -> Any:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) == 1)
        where = where.split(".")[0] if where else ""
        if err["type"] == "extra_forbidden":
            field = ".".join(str(p) for p in err["loc"])
            raise RequestError(400, f"unknown field {field!r}", where) from None
        value = err.get("input")
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RequestError(400, f"invalid {where or 'request'}: {err['msg']} (got {shown})", where or None) from None


def token_prompts(req: CompletionRequest, tokenizer, vocab_size: int, max_chars: int,
                  max_prompts: int) -> list[list[int]]:
    """The request's prompts as token ids (strings are tokenized; id lists are checked). Strings longer
    than `max_chars`, and more prompts than `max_prompts` (the queue could not take them), are refused
    before the tokenizer sees any."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise RequestError(400, "prompt is empty", "prompt")
    if len(prompts) > max_prompts:
        raise RequestError(400, f"{len(prompts)} prompts in one request; this server queues at most {max_prompts} "
                                "(--max-queue)", "prompt")
    for p in prompts:
        check_prompt_chars(p, max_chars)
    out = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
        if not ids:
            raise RequestError(400, "prompt is empty", "prompt")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                               "prompt")
        out.append(ids)
    return out


def check_prompt_chars(prompt: Any, max_chars: int, param: str = "prompt") -> None:
    if isinstance(prompt, str) and len(prompt) > max_chars:
        raise RequestError(400, f"the prompt has {len(prompt)} characters; this server accepts at most {max_chars} "
                                "(--max-prompt-chars)", param)


def _logprobs_body(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, lps, tops, offsets = [], [], [], []
    for item in items:
        tokens.append(item.token)
        lps.append(_finite(item.logprob))
        tops.append(None if item.top is None else {k: _finite(v) for k, v in item.top.items()})
        offsets.append(offset)
        offset += len(item.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs_body(items: list[TokenLogprob], k: int) -> dict[str, Any]:
    """Chat's logprobs shape: one entry per token with its UTF-8 bytes and its top `k` alternatives."""
    def entry(token: str, logprob: float | None) -> dict[str, Any]:
        return {"token": token, "logprob": _finite(logprob), "bytes": list(token.encode("utf-8", "replace"))}

    return {"content": [{**entry(item.token, item.logprob),
                         "top_logprobs": [entry(t, lp) for t, lp in sorted((item.top or {}).items(),
                                                                             key=lambda kv: -kv[1])[:k]]}
                        for item in items]}


def _finite(x: float | None) -> float | None:
    # JSON has no -inf: an impossible token's log-probability is reported as the most negative float.
    if x is None or math.isfinite(x):
        return x
    return -3.4e38


class ChoiceBuffer:
    """Accumulates one choice's events into the OpenAI choice object."""

    def __init__(self, index: int, prompt_text: str | None, prompt_logprobs: list[TokenLogprob] | None) -> None:
        self.index = index
        self.text = prompt_text or ""
        self.logprobs = list(prompt_logprobs or [])
        self.steps: list[float] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None

    def add(self, event: Event) -> None:
        self.text += event.text
        self.logprobs += event.logprobs
        self.steps += event.steps
        self.tokens += len(event.token_ids)
        if event.finish_reason is not None:
            self.finish_reason, self.stop_reason = event.finish_reason, event.stop_reason

    def body(self, with_logprobs: bool) -> dict[str, Any]:
        return chunk_choice(self.index, self.text, self.logprobs if with_logprobs else None, 0, self.steps,
                            self.finish_reason, self.stop_reason)

    def chat_body(self, top_logprobs: int | None) -> dict[str, Any]:
        return {"index": self.index, "message": {"role": "assistant", "content": self.text},
                "logprobs": None if top_logprobs is None else chat_logprobs_body(self.logprobs, top_logprobs),
                "finish_reason": self.finish_reason, "stop_reason": self.stop_reason,
                "ponder_steps": self.steps}


def chunk_choice(index: int, text: str, logprobs: list[TokenLogprob] | None, offset: int, steps: list[float],
                 finish_reason: str | None, stop_reason: str | None) -> dict[str, Any]:
    """One choice of a streamed chunk (text delta, its logprobs and executed steps)."""
    return {"index": index, "text": text, "logprobs": None if logprobs is None else _logprobs_body(logprobs, offset),
            "finish_reason": finish_reason, "stop_reason": stop_reason, "ponder_steps": steps}


def chat_chunk_choice(index: int, text: str, first: bool, logprobs: list[TokenLogprob] | None, k: int,
                      steps: list[float], finish_reason: str | None, stop_reason: str | None) -> dict[str, Any]:
    """One choice of a streamed chat chunk; a choice's first delta carries the assistant role."""
    delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
    return {"index": index, "delta": delta,
            "logprobs": None if logprobs is None else chat_logprobs_body(logprobs, k),
            "finish_reason": finish_reason, "stop_reason": stop_reason, "ponder_steps": steps}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
