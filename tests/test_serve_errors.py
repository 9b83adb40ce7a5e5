"""`ponderlm serve` refuses every malformed request with a 4xx in OpenAI's error shape (never a 500), on every
route; enforces its body / prompt limits and `--api-key`; tokenizes off the event loop.

Table-driven: each bad request is a raw body (bytes, so invalid UTF-8, lone surrogates and 100,000-deep
nesting reach the server exactly as an attacker sends them), the expected status and a piece of the message."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import single_thread

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install 'ponderlm[test]'")

from serve_helpers import NAME, TEXT, WAIT_S, Server, httpx, metric  # noqa: E402

from ponderlm.serve.limits import Limits  # noqa: E402

MAX_BYTES, MAX_CHARS, KEY = 16384, 100, "test-key"


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


# (id, body, status, substring of the message, param)
BAD_COMPLETIONS: list[tuple[str, bytes, int, str, str | None]] = [
    ("unknown-field", raw({"prompt": "hi", "bogus": 1}), 400, "unknown field 'bogus'", "bogus"),
    ("max-tokens-negative", raw({"prompt": "hi", "max_tokens": -1}), 400, "max_tokens", "max_tokens"),
    ("max-tokens-string", raw({"prompt": "hi", "max_tokens": "many"}), 400, "max_tokens", "max_tokens"),
    ("max-tokens-inf", b'{"prompt": "hi", "max_tokens": 1e400}', 400, "max_tokens", "max_tokens"),
    ("max-tokens-5000-digits", b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}", 400, "not valid JSON", None),
    ("max-tokens-huge", raw({"prompt": "hi", "max_tokens": 10**18}), 400, "maximum context length", "prompt"),
    ("temperature", raw({"prompt": "hi", "temperature": 3}), 400, "temperature", "temperature"),
    ("temperature-nan", b'{"prompt": "hi", "temperature": NaN}', 400, "temperature", "temperature"),
    ("top-p", raw({"prompt": "hi", "top_p": 0}), 400, "top_p", "top_p"),
    ("logprobs", raw({"prompt": "hi", "logprobs": 50}), 400, "logprobs", "logprobs"),
    ("tau", raw({"prompt": "hi", "tau": 1.5}), 400, "tau", "tau"),
    ("tau-nan", b'{"prompt": "hi", "tau": NaN}', 400, "tau", "tau"),
    ("alpha-inf", b'{"prompt": "hi", "alpha": Infinity}', 400, "alpha", "alpha"),
    ("seed-2**70", raw({"prompt": "hi", "seed": 2**70}), 400, "seed", "seed"),
    ("n-over-batch", raw({"prompt": "hi", "n": 9}), 400, "max-batch", "n"),
    ("n-10**30", raw({"prompt": "hi", "n": 10**30}), 400, "max-batch", "n"),
    ("presence-penalty", raw({"prompt": "hi", "presence_penalty": 1.0}), 400, "presence_penalty", "presence_penalty"),
    ("logit-bias", raw({"prompt": "hi", "logit_bias": {"1": "x"}}), 400, "logit_bias", "logit_bias"),
    ("five-stops", raw({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}), 400, "stop", "stop"),
    ("stream-options-field", raw({"prompt": "hi", "stream_options": {"x": 1}}), 400, "unknown field",
     "stream_options"),
    ("prompt-empty", raw({"prompt": ""}), 400, "prompt is empty", "prompt"),
    ("prompt-empty-list", raw({"prompt": []}), 400, "prompt is empty", "prompt"),
    ("prompt-empty-inner", raw({"prompt": [[]]}), 400, "prompt is empty", "prompt"),
    ("token-outside-vocab", raw({"prompt": [1, 2, 10**9]}), 400, "outside the vocabulary", "prompt"),
    ("token-negative", raw({"prompt": [[1, -1]]}), 400, "outside the vocabulary", "prompt"),
    ("too-long-for-context", raw({"prompt": list(range(1, 101)), "max_tokens": 40}), 400,
     "maximum context length is 128", "prompt"),
    ("prompt-over-max-chars", raw({"prompt": "a" * (MAX_CHARS + 1)}), 400, "--max-prompt-chars", "prompt"),
    ("one-of-prompts-over-max-chars", raw({"prompt": ["hi", "a" * (MAX_CHARS + 1)]}), 400, "--max-prompt-chars",
     "prompt"),
    ("more-prompts-than-the-queue", raw({"prompt": ["hi"] * 65}), 400, "queues at most 64", "prompt"),
    ("prompt-object", raw({"prompt": {"text": "hi"}}), 400, "prompt", "prompt"),
    ("prompt-mixed-list", raw({"prompt": [[1, 2], "a"]}), 400, "prompt", "prompt"),
    ("prompt-missing", raw({"max_tokens": 3}), 400, "prompt", "prompt"),
    ("unknown-model", raw({"prompt": "hi", "model": "gpt-4"}), 404, "does not exist", "model"),
    ("body-list", raw([1, 2]), 400, "JSON object", None),
    ("body-null", b"null", 400, "JSON object", None),
    ("body-empty", b"", 400, "not valid JSON", None),
    ("not-json", b"{not json", 400, "not valid JSON", None),
    ("not-utf8", b'{"prompt": "\xff\xfe"}', 400, "not valid JSON", None),
    ("nested-100000-arrays", deep(100_000), 400, "nests deeper", None),
    ("nested-100000-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "nests deeper", None),
    ("prompt-nested-40", b'{"prompt": ' + deep(40) + b"}", 400, "nests deeper", "prompt"),
    ("prompt-nested-900", b'{"prompt": ' + deep(900) + b"}", 400, "nests deeper", "prompt"),
    ("prompt-lone-surrogate", b'{"prompt": "\\ud800"}', 400, "lone surrogate", "prompt"),
    ("prompts-lone-surrogate", b'{"prompt": ["ok", "a\\udfffb"]}', 400, "lone surrogate", "prompt"),
    ("model-lone-surrogate", b'{"prompt": "hi", "model": "\\udfff"}', 400, "lone surrogate", "model"),
    ("stop-lone-surrogate", b'{"prompt": "hi", "stop": ["\\ud800"]}', 400, "lone surrogate", "stop"),
    ("key-lone-surrogate", b'{"prompt": "hi", "\\ud800": 1}', 400, "lone surrogate", None),
]

BAD_CHAT: list[tuple[str, bytes, int, str, str | None]] = [
    ("completions-only", raw({"messages": [{"role": "user", "content": "hi"}]}), 400, "completions-only",
     "messages"),
    ("completions-only-even-when-malformed", b"{not json", 400, "completions-only", "messages"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


class WatchedTokenizer:
    """The server's tokenizer, recording what it is asked to encode; a prompt starting with "BLOCK" holds its
    caller until `release` is set (to observe what the server does meanwhile)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.seen: list[Any] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        self.seen.append(text)
        if isinstance(text, str) and text.startswith("BLOCK"):
            self.entered.set()
            assert self.release.wait(WAIT_S), "never released"
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def server(checkpoint) -> Iterator[Server]:
    srv = Server(checkpoint, max_batch=8, max_queue=64, limits=Limits(max_prompt_chars=MAX_CHARS))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def guarded(checkpoint) -> Iterator[Server]:
    """A server with --api-key, a small body limit and a watched tokenizer."""
    srv = Server(checkpoint, max_batch=4, api_key=KEY, limits=Limits(max_request_bytes=MAX_BYTES),
                 wrap_tokenizer=WatchedTokenizer)
    yield srv
    srv.close()


def check_error(resp: httpx.Response, status: int, reason: str, param: str | None = None) -> None:
    """The response is OpenAI's error object: status, one-line message, type, param and code."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert reason in error["message"] and "\n" not in error["message"], error
    assert error["type"].endswith("Error") and error["param"] == param, error


@pytest.mark.parametrize(("path", "cases"), [("/v1/completions", BAD_COMPLETIONS), ("/v1/chat/completions", BAD_CHAT)],
                         ids=["completions", "chat"])
def test_malformed_requests_get_4xx_in_openai_shape_and_the_server_keeps_serving(server, capfd, path, cases):
    before = server.http().get("/metrics").text
    with server.http() as http:
        for case_id, body, status, reason, param in cases:
            resp = http.post(path, content=body, headers={"content-type": "application/json"})
            try:
                check_error(resp, status, reason, param)
            except AssertionError as exc:
                raise AssertionError(f"{case_id}: {exc}") from None
        after = http.get("/metrics").text
    rejected = 'ponderlm_requests_total{outcome="rejected"}'
    assert metric(after, rejected) - metric(before, rejected) == sum(c[2] != 404 for c in cases)
    assert "Traceback" not in capfd.readouterr().err  # nothing reached the 500 handler
    out = server.client.completions.create(model=NAME, prompt="hi", max_tokens=2, temperature=0)
    assert out.choices[0].finish_reason == "length"


def test_the_official_client_reads_the_errors(server):
    client = server.client
    with pytest.raises(openai.BadRequestError, match="unknown field 'nonsense'"):
        client.completions.create(model=NAME, prompt="hi", extra_body={"nonsense": True})
    with pytest.raises(openai.BadRequestError, match="completions-only"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.NotFoundError, match="no route '/v1/embeddings'"):
        client.embeddings.create(model=NAME, input="hi")


ROUTES = [
    ("GET", "/nope", 404, "no route '/nope'"),
    ("POST", "/v1/nope", 404, "no route '/v1/nope'"),
    ("GET", "/v1/completions", 405, "method GET is not allowed"),
    ("PUT", "/v1/chat/completions", 405, "method PUT is not allowed"),
    ("DELETE", "/v1/models", 405, "method DELETE is not allowed"),
    ("POST", "/health", 405, "method POST is not allowed"),
    ("GET", "/v1/models/gpt-4", 404, "The model `gpt-4` does not exist."),
    ("GET", "/v1/models/a/b", 404, "The model `a/b` does not exist."),
]


@pytest.mark.parametrize(("method", "path", "status", "reason"), ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_unknown_routes_and_wrong_methods_answer_in_openai_shape(server, method, path, status, reason):
    with server.http() as http:
        resp = http.request(method, path)
    check_error(resp, status, reason, "model" if "/v1/models/" in path else None)
    if status == 405:
        assert resp.headers["allow"]  # which methods the route takes


# ------------------------------------------------------------------ --api-key
def test_api_key_is_required_on_v1_routes_only(guarded):
    with guarded.http() as http:
        for method, path in [("GET", "/v1/models"), ("GET", f"/v1/models/{NAME}"), ("POST", "/v1/completions"),
                             ("POST", "/v1/chat/completions"), ("GET", "/v1/nope")]:
            resp = http.request(method, path, json={"prompt": "hi"})
            check_error(resp, 401, "missing API key")
            assert resp.headers["www-authenticate"] == "Bearer"
            check_error(http.request(method, path, headers={"Authorization": "Bearer nope"}), 401, "incorrect API key")
            check_error(http.request(method, path, headers={"Authorization": KEY}), 401, "incorrect API key")
        for path in ("/health", "/metrics", "/"):  # probes, scrapers and the page (which asks for the key)
            assert http.get(path).status_code == 200
        assert 'id="api_key"' in http.get("/").text
        authorised = http.get("/v1/nope", headers={"Authorization": f"Bearer {KEY}"})
        check_error(authorised, 404, "no route")
    wrong = openai.OpenAI(base_url=guarded.url + "/v1", api_key="nope", timeout=WAIT_S, max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        wrong.models.list()
    assert [m.id for m in guarded.client.models.list().data] == [NAME]  # the right key
    out = guarded.client.completions.create(model=NAME, prompt="hi", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2


# ------------------------------------------------------------------ limits
def test_request_body_limit(guarded):
    auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    padding = " " * (MAX_BYTES - len(raw({"prompt": "hi", "max_tokens": 1})))
    fits = raw({"prompt": "hi", "max_tokens": 1}) + padding.encode()
    assert len(fits) == MAX_BYTES
    with guarded.http() as http:
        assert http.post("/v1/completions", content=fits, headers=auth).status_code == 200
        check_error(http.post("/v1/completions", content=fits + b" ", headers=auth), 413, "--max-request-bytes")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
            yield fits
            yield b" " * 100

        check_error(http.post("/v1/completions", content=chunks(), headers=auth), 413, "--max-request-bytes")
        check_error(http.post("/v1/chat/completions", content=fits + b" ", headers=auth), 413, "--max-request-bytes")
        assert http.get("/health").json()["status"] == "ok"


def test_prompt_char_limit_is_checked_before_tokenizing(guarded):
    limit = Limits().prompt_chars(guarded.engine.model.config.max_position_embeddings)
    assert limit == 32 * 128  # the default: 32 characters per position
    tokenizer = guarded.tokenizer
    with pytest.raises(openai.BadRequestError, match=rf"{limit + 1} characters.*at most {limit}"):
        guarded.client.completions.create(model=NAME, prompt="x" * (limit + 1), max_tokens=1)
    assert all(len(text) <= limit for text in tokenizer.seen if isinstance(text, str))  # never tokenized
    out = guarded.client.completions.create(model=NAME, prompt=TEXT, max_tokens=1, temperature=0)
    assert out.usage.completion_tokens == 1


def test_tokenizing_runs_off_the_event_loop(guarded):
    """While one request's prompt is being tokenized, the server answers /health, its page and another
    completion: tokenization does not hold the event loop (it once blocked /health for 14.5 s)."""
    tokenizer = guarded.tokenizer
    auth = {"Authorization": f"Bearer {KEY}"}
    results: dict[str, Any] = {}

    def blocked() -> None:
        with guarded.http(**auth) as http:
            results["blocked"] = http.post("/v1/completions", json={"prompt": "BLOCK " + TEXT, "max_tokens": 2})

    thread = threading.Thread(target=blocked)
    thread.start()
    try:
        assert tokenizer.entered.wait(WAIT_S), "the blocking prompt never reached the tokenizer"
        with guarded.http(**auth) as http:
            assert http.get("/health").json()["status"] == "ok"  # would hang with tokenization on the loop
            assert http.get("/v1/models").status_code == 200
        assert "blocked" not in results  # the tokenization is still in flight
    finally:
        tokenizer.release.set()
        thread.join(WAIT_S)
    assert results["blocked"].status_code == 200 and results["blocked"].json()["usage"]["completion_tokens"] == 2
