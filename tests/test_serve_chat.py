"""`/v1/chat/completions` on a model whose tokenizer has a chat template: the official `openai` client's chat
calls (streaming too) equal a completion of the prompt the template renders, token for token and step for step.
(Without a template the endpoint answers a 400 saying the model is completions-only: tests/test_serve_errors.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import single_thread

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install 'ponderlm[test]'")

from serve_helpers import NAME, Server  # noqa: E402

from ponderlm.eval.perplexity import load_model  # noqa: E402
from ponderlm.serve.limits import Limits  # noqa: E402

# A small template in the usual style; like many real ones it refuses a conversation it cannot format.
TEMPLATE = ("{% for m in messages %}{% if loop.first and m['role'] == 'assistant' %}"
            "{{ raise_exception('a conversation starts with a system or user message') }}{% endif %}"
            "<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
MESSAGES = [{"role": "system", "content": "You tell short stories."},
            {"role": "user", "content": "Once upon a time"}]
MAX_CHARS = 400


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def chat_checkpoint(checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(checkpoint, out)
    _, tok = load_model(checkpoint, "cpu")
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(chat_checkpoint: Path) -> Iterator[Server]:
    srv = Server(chat_checkpoint, max_batch=4, limits=Limits(max_prompt_chars=MAX_CHARS))
    yield srv
    srv.close()


def rendered_ids(server: Server, messages: list[dict[str, str]]) -> list[int]:
    text = server.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<assistant>")
    return server.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_model_card_says_chat_is_available(server):
    assert server.client.models.retrieve(NAME).model_extra["chat"] is True


def test_greedy_chat_equals_a_completion_of_the_rendered_prompt(server):
    ids = rendered_ids(server, MESSAGES)
    tau = {"tau": 0.3}
    done = server.client.completions.create(model=NAME, prompt=ids, max_tokens=10, temperature=0, logprobs=2,
                                            extra_body=tau)
    chat = server.client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0,
                                                 logprobs=True, top_logprobs=2, extra_body=tau)
    want, got = done.choices[0], chat.choices[0]
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert got.message.role == "assistant" and got.message.content == want.text
    assert got.finish_reason == want.finish_reason == "length"
    assert got.model_extra["ponder_steps"] == want.model_extra["ponder_steps"]
    assert [t.token for t in got.logprobs.content] == want.logprobs.tokens
    assert [t.logprob for t in got.logprobs.content] == pytest.approx(want.logprobs.token_logprobs, abs=1e-5)
    for entry, top in zip(got.logprobs.content, want.logprobs.top_logprobs, strict=True):
        assert len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
        assert {t.token: t.logprob for t in entry.top_logprobs} == pytest.approx(
            dict(sorted(top.items(), key=lambda kv: -kv[1])[:2]), abs=1e-5)
    assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == 10


def test_streamed_chat_equals_the_whole_answer(server):
    kwargs: dict[str, Any] = {"model": NAME, "messages": MESSAGES, "max_completion_tokens": 12, "temperature": 0}
    whole = server.client.chat.completions.create(**kwargs)
    chunks = list(server.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant" and all(d.delta.role is None for d in deltas[1:])
    assert "".join(d.delta.content for d in deltas) == whole.choices[0].message.content
    assert sum((d.model_extra["ponder_steps"] for d in deltas), []) == whole.choices[0].model_extra["ponder_steps"]
    assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_seeded_sampled_choices_are_reproducible(server):
    kwargs: dict[str, Any] = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0, "n": 2,
                              "seed": 7}
    first = server.client.chat.completions.create(**kwargs)
    again = server.client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_without_max_tokens_a_chat_may_fill_the_context(server):
    ids = rendered_ids(server, MESSAGES)
    out = server.client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0,
                                                extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 128 - len(ids) and out.choices[0].finish_reason == "length"


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


USER = {"role": "user", "content": "hi"}
BAD_CHAT: list[tuple[str, bytes, int, str, str | None]] = [
    ("messages-missing", raw({"max_tokens": 2}), 400, "messages", "messages"),
    ("messages-empty", raw({"messages": []}), 400, "messages", "messages"),
    ("messages-not-a-list", raw({"messages": "hi"}), 400, "messages", "messages"),
    ("role-unknown", raw({"messages": [{"role": "robot", "content": "hi"}]}), 400, "messages", "messages"),
    ("role-tool", raw({"messages": [{"role": "tool", "content": "hi"}]}), 400, "messages", "messages"),
    ("image-part", raw({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
     400, "messages", "messages"),
    ("tool-calls", raw({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}), 400,
     "unknown field 'messages.0.tool_calls'", "messages"),
    ("tools", raw({"messages": [USER], "tools": []}), 400, "unknown field 'tools'", "tools"),
    ("top-logprobs-alone", raw({"messages": [USER], "top_logprobs": 2}), 400, "needs logprobs", "top_logprobs"),
    ("top-logprobs-50", raw({"messages": [USER], "logprobs": True, "top_logprobs": 50}), 400, "top_logprobs",
     "top_logprobs"),
    ("max-completion-tokens-negative", raw({"messages": [USER], "max_completion_tokens": -1}), 400,
     "max_completion_tokens", "max_completion_tokens"),
    ("too-long-for-context", raw({"messages": [USER], "max_tokens": 500}), 400, "maximum context length", "prompt"),
    ("template-refuses", raw({"messages": [{"role": "assistant", "content": "hi"}]}), 400,
     "chat template cannot format these messages", "messages"),
    ("content-over-max-chars", raw({"messages": [{"role": "user", "content": "a" * (MAX_CHARS + 1)}]}), 400,
     "--max-prompt-chars", "messages"),
    ("content-lone-surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "lone surrogate",
     "messages"),
    ("unknown-model", raw({"messages": [USER], "model": "gpt-4"}), 404, "does not exist", "model"),
    ("nested-100000", b"[" * 100_000 + b"]" * 100_000, 400, "nests deeper", None),
    ("body-list", raw([USER]), 400, "JSON object", None),
]


@pytest.mark.parametrize(("body", "status", "reason", "param"), [c[1:] for c in BAD_CHAT], ids=[c[0] for c in BAD_CHAT])
def test_malformed_chat_requests_get_4xx_in_openai_shape(server, body, status, reason, param):
    with server.http() as http:
        resp = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert reason in error["message"] and "\n" not in error["message"], error
    assert error["param"] == param and error["code"] == status, error
