"""Shared by the tests/test_serve*.py files: an in-process server on loopback, bounded waits, the HTTP client.

Import this only after `pytest.importorskip` of the serve extra (it imports uvicorn and the app)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import uvicorn

from ponderlm.eval.perplexity import load_model
from ponderlm.serve.app import build_app
from ponderlm.serve.limits import Limits
from ponderlm.serve.scheduler import Engine

try:  # the openai client depends on httpx, which newer releases publish as httpx2
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older environments
    import httpx  # type: ignore[no-redef]

__all__ = ["NAME", "TEXT", "WAIT_S", "Server", "free_port", "httpx", "metric", "wait_until"]

NAME = "tiny"
TEXT = ("The old man walked slowly along the river bank, watching the boats drift past while the evening light "
        "faded over the hills and the town behind him grew quiet.")
WAIT_S = 60  # bound on every wait for the server; a hang fails the test instead of blocking CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Server:
    """The app under uvicorn in a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self, checkpoint: Path, *, api_key: str | None = None, limits: Limits | None = None,
                 wrap_tokenizer: Callable[[Any], Any] | None = None, **engine_options: Any) -> None:
        model, self.tokenizer = load_model(checkpoint, "cpu")
        if wrap_tokenizer is not None:
            self.tokenizer = wrap_tokenizer(self.tokenizer)
        self.engine = Engine(model, self.tokenizer, **engine_options)
        self.port = free_port()
        app = build_app(self.engine, NAME, api_key=api_key, limits=limits)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.engine.start()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "the server to start")
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or "unused", timeout=WAIT_S,
                                    max_retries=0)

    def http(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=WAIT_S, headers=headers)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=WAIT_S)
        self.engine.stop()

    def gate(self) -> threading.Event:
        """Hold the engine before each backbone call until the returned event is set (admission still runs)."""
        gate = threading.Event()
        step = self.engine._step

        def gated(batch) -> None:
            assert gate.wait(timeout=WAIT_S), "gate never opened"
            step(batch)

        self.engine._step = gated
        return gate


def metric(text: str, key: str) -> float:
    """One sample's value from Prometheus exposition text."""
    return float(next(line.rsplit(" ", 1)[1] for line in text.splitlines() if line.rsplit(" ", 1)[0] == key))
