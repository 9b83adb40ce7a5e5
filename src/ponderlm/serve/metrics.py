"""Prometheus text exposition of the server's counters (no client library: a handful of series)."""

from __future__ import annotations

import threading
import time
from collections import deque


class Metrics:
    """Counters updated by the engine thread and read by `/metrics`; one lock, cheap updates."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {"ok": 0, "cancelled": 0, "error": 0, "rejected": 0}
        self.generated_tokens = 0
        self.prompt_tokens_total = 0
        self.calls = 0
        self.queue_depth = 0
        self.running = 0
        # Executed additional steps per generated token: one bucket per possible integer count 0..K.
        self.step_counts = [0] * (max_steps + 1)
        self.step_sum = 0.0
        self._recent: deque[float] = deque()  # times of generated tokens in the last window (tokens/s)
        self.window = 10.0

    def finished(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def set_queue(self, depth: int) -> None:
        self.queue_depth = depth

    def prompt_tokens(self, n: int) -> None:
        with self._lock:
            self.prompt_tokens_total += n

    def backbone_calls(self, n: int) -> None:
        with self._lock:
            self.calls += n

    def generated(self, steps: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += 1
            self.step_counts[min(self.max_steps, max(0, round(steps)))] += 1
            self.step_sum += steps
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.window:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] < now - self.window:
                self._recent.popleft()
            return len(self._recent) / self.window

    def render(self, running: int) -> str:
        tps = self.tokens_per_second()
        with self._lock:
            lines = [
                "# HELP ponderlm_requests_total Completion requests by outcome.",
                "# TYPE ponderlm_requests_total counter",
                *(f'ponderlm_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())),
                "# HELP ponderlm_prompt_tokens_total Prompt tokens prefilled.",
                "# TYPE ponderlm_prompt_tokens_total counter",
                f"ponderlm_prompt_tokens_total {self.prompt_tokens_total}",
                "# HELP ponderlm_generation_tokens_total Tokens generated.",
                "# TYPE ponderlm_generation_tokens_total counter",
                f"ponderlm_generation_tokens_total {self.generated_tokens}",
                "# HELP ponderlm_tokens_per_second Generated tokens per second over the last 10 s.",
                "# TYPE ponderlm_tokens_per_second gauge",
                f"ponderlm_tokens_per_second {tps:.3f}",
                "# HELP ponderlm_backbone_calls_total Decoding backbone calls (one slot per running row each).",
                "# TYPE ponderlm_backbone_calls_total counter",
                f"ponderlm_backbone_calls_total {self.calls}",
                "# HELP ponderlm_queue_depth Requests waiting for a row.",
                "# TYPE ponderlm_queue_depth gauge",
                f"ponderlm_queue_depth {self.queue_depth}",
                "# HELP ponderlm_running_sequences Choices holding a batch row.",
                "# TYPE ponderlm_running_sequences gauge",
                f"ponderlm_running_sequences {running}",
                "# HELP ponderlm_executed_steps Additional latent steps executed per generated token.",
                "# TYPE ponderlm_executed_steps histogram",
            ]
            cumulative = 0
            for k, count in enumerate(self.step_counts):
                cumulative += count
                lines.append(f'ponderlm_executed_steps_bucket{{le="{k}"}} {cumulative}')
            lines += [f'ponderlm_executed_steps_bucket{{le="+Inf"}} {cumulative}',
                      f"ponderlm_executed_steps_sum {self.step_sum:g}",
                      f"ponderlm_executed_steps_count {cumulative}"]
        return "\n".join(lines) + "\n"
