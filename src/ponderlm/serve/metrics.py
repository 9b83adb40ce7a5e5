"""The server's Prometheus metrics, kept by `prometheus_client` in a registry of their own (one per engine, so
several servers in one process, as in the tests, do not share counters)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Updated by the engine thread and the HTTP layer, read by `/metrics`. prometheus_client's metrics are
    thread-safe; only the tokens/s window needs a lock of its own."""

    window = 10.0  # seconds of generated tokens behind ponderlm_tokens_per_second

    def __init__(self, max_steps: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("ponderlm_requests", "Completion requests by outcome.", ["outcome"], registry=r)
        for outcome in ("ok", "cancelled", "error", "rejected"):  # present from the start, at 0
            self._requests.labels(outcome)
        self._prompt_tokens = Counter("ponderlm_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self._generated = Counter("ponderlm_generation_tokens", "Tokens generated.", registry=r)
        self._calls = Counter("ponderlm_backbone_calls",
                              "Decoding backbone calls (one slot per running row each).", registry=r)
        self._queue = Gauge("ponderlm_queue_depth", "Requests waiting for a row.", registry=r)
        self._running = Gauge("ponderlm_running_sequences", "Choices holding a batch row.", registry=r)
        self._tps = Gauge("ponderlm_tokens_per_second", "Generated tokens per second over the last 10 s.",
                          registry=r)
        self._tps.set_function(self.tokens_per_second)
        # One bucket per possible integer step count 0..K (a fractional count falls in the next one up).
        self._steps = Histogram("ponderlm_executed_steps", "Additional latent steps executed per generated token.",
                                buckets=[float(k) for k in range(max_steps + 1)], registry=r)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()  # times of generated tokens in the last window

    def finished(self, outcome: str) -> None:
        self._requests.labels(outcome).inc()

    def set_queue(self, depth: int) -> None:
        self._queue.set(depth)

    def prompt_tokens(self, n: int) -> None:
        self._prompt_tokens.inc(n)

    def backbone_calls(self, n: int) -> None:
        self._calls.inc(n)

    def generated(self, steps: float) -> None:
        self._generated.inc()
        self._steps.observe(steps)
        now = time.monotonic()
        with self._lock:
            self._recent.append(now)
            self._trim(now)

    def tokens_per_second(self) -> float:
        with self._lock:
            self._trim(time.monotonic())
            return len(self._recent) / self.window

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] < now - self.window:
            self._recent.popleft()

    def render(self, running: int) -> bytes:
        """The exposition text (`running`: choices holding a row now, counted by the engine)."""
        self._running.set(running)
        return generate_latest(self.registry)
