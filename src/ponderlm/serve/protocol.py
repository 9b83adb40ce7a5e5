"""Request validation and response shapes of `/v1/completions` (OpenAI's / vLLM's conventions).

Every rejection is a `RequestError` with an HTTP status and a one-line reason, rendered as
`{"error": {"message", "type", "param", "code"}}`, the body the official clients parse.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ponderlm.serve.scheduler import Event, SamplingParams, TokenLogprob

MAX_LOGPROBS = 20  # as vLLM's default cap (OpenAI allows 5)


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(self.status, "ServerError")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The OpenAI completions fields, plus the ponderlm extensions `tau` and `alpha`. Unknown fields are
    errors; known fields this server cannot honour are accepted only at their neutral values."""

    model_config = ConfigDict(extra="forbid", strict=False)

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None
    # extensions: vLLM's ignore_eos (benchmarks: fixed output lengths), ponderlm's tau / alpha
    ignore_eos: bool = False
    tau: float | None = Field(None, ge=0.0, lt=1.0)
    alpha: float | None = None

    def sampling(self) -> SamplingParams:
        for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0)):
            if getattr(self, name) not in (None, neutral):
                raise RequestError(400, f"{name} is not supported by this server (use 0)", name)
        if self.best_of not in (None, self.n):
            raise RequestError(400, "best_of is not supported by this server (omit it or set it to n)", "best_of")
        if self.logit_bias:
            raise RequestError(400, "logit_bias is not supported by this server", "logit_bias")
        if self.suffix:
            raise RequestError(400, "suffix is not supported by this server", "suffix")
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise RequestError(400, "alpha must be finite", "alpha")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise RequestError(400, "stop must be at most 4 non-empty strings", "stop")
        return SamplingParams(max_tokens=16 if self.max_tokens is None else self.max_tokens,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, stop=stops, seed=self.seed,
                              logprobs=self.logprobs, echo=self.echo, tau=self.tau, alpha=self.alpha,
                              ignore_eos=self.ignore_eos)


def parse_request(body: Any) -> CompletionRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    try:
        return CompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) == 1)
        where = where.split(".")[0] if where else ""
        if err["type"] == "extra_forbidden":
            raise RequestError(400, f"unknown field {where!r}", where) from None
        value = err.get("input")
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RequestError(400, f"invalid {where or 'request'}: {err['msg']} (got {shown})", where or None) from None


def token_prompts(req: CompletionRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    """The request's prompts as token ids (strings are tokenized; id lists are checked)."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise RequestError(400, "prompt is empty", "prompt")
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


def _logprobs_body(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, lps, tops, offsets = [], [], [], []
    for item in items:
        tokens.append(item.token)
        lps.append(_finite(item.logprob))
        tops.append(None if item.top is None else {k: _finite(v) for k, v in item.top.items()})
        offsets.append(offset)
        offset += len(item.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


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
        return {"index": self.index, "text": self.text,
                "logprobs": _logprobs_body(self.logprobs, 0) if with_logprobs else None,
                "finish_reason": self.finish_reason, "stop_reason": self.stop_reason,
                "ponder_steps": self.steps}


def chunk_choice(index: int, text: str, logprobs: list[TokenLogprob] | None, offset: int, steps: list[float],
                 finish_reason: str | None, stop_reason: str | None) -> dict[str, Any]:
    """One choice of a streamed chunk (text delta, its logprobs and executed steps)."""
    return {"index": index, "text": text, "logprobs": None if logprobs is None else _logprobs_body(logprobs, offset),
            "finish_reason": finish_reason, "stop_reason": stop_reason, "ponder_steps": steps}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


