"""The serving engine: one thread owns the model and runs continuous batching across requests.

Requests wait in a bounded queue. Between backbone calls the engine admits waiting requests into
free rows (each prompt prefilled alone by the method's own `prefill`, then spliced into the running
batch, see `DecodeState.splice_row`), removes finished and cancelled ones, and advances every running row by
one backbone call of the library's schedule: `PonderMethod.step_rows` (one slot of each row's own token: real
per-token early exit, skipped steps never computed) for methods with a per-row schedule,
the method's `decode_token` (one token per running row) for the others. Rows with different knob values
(a request may set any knob the methods declare: tau, alpha, ...) cannot share a call (the decode state carries
one `DecodeOptions`), so each distinct set runs as its own batch and the engine visits the batches in turn.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from ponderlm.inference.sequential import decode_options, new_state
from ponderlm.methods.options import DecodeOptions
from ponderlm.serve.metrics import Metrics


class QueueFull(Exception):
    """The waiting queue is at --max-queue: the HTTP layer answers 429."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: the chosen token's plus the top k
    echo: bool = False
    knobs: dict[str, Any] = field(default_factory=dict)  # decoding knobs over the server's (checked by the protocol)
    ignore_eos: bool = False


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: dict[str, float] | None


@dataclass
class Event:
    """New output of one choice: text delta, its tokens, executed steps that produced each, logprobs."""

    choice: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None


@dataclass
class EngineRequest:
    """One prompt with n choices. `emit` is called from the engine thread with Events, or an Exception."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event | Exception], None]
    n: int = 1
    stream: bool = True  # False: one Event per choice when it finishes (fewer cross-thread hand-offs)
    cancelled: bool = False
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    open_choices: int = -1  # set to n on admission; the request is finished when it reaches 0


@dataclass
class _Choice:
    req: EngineRequest
    index: int
    generator: torch.Generator
    processors: LogitsProcessorList | None  # None: greedy
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # decoded text of `tokens` (up to an incomplete trailing character)
    prefix_offset: int = 0  # incremental detokenization window, as in vLLM
    read_offset: int = 0
    sent: int = 0  # characters of text already emitted
    held: Event | None = None  # output not yet emitted (non-streaming requests)
    pending: int = 0  # last sampled token, consumed by the next lockstep call


class _Batch:
    """Running rows that share decoding options: one DecodeState, grown by doubling up to max_batch rows."""

    def __init__(self, model, options: DecodeOptions, rows: int, max_batch: int) -> None:
        self.model = model
        self.max_batch = max_batch
        self.state = new_state(model, rows, 64, options=options)  # validated when its first requests were prefilled
        self.choices: list[_Choice | None] = [None] * rows
        self.released = False  # a row left since the last compaction check

    def free_row(self) -> int:
        """A free row; the batch doubles (up to max_batch) when all are taken. Rows are never fewer than needed:
        the engine admits only while the running rows of all batches stay within max_batch."""
        row = next((r for r, c in enumerate(self.choices) if c is None), None)
        if row is None:
            row = len(self.choices)
            size = min(self.max_batch, 2 * row)
            self.state.grow_rows(size, self.model.method.new_rows(size, self.model.device, self.model.dtype))
            self.choices += [None] * (size - row)
        return row

    def running(self) -> int:
        return sum(c is not None for c in self.choices)


class Engine:
    """Owns the model on one worker thread; `submit` and `cancel` are safe from any thread."""

    # Compact a batch's cache when a row has left and its columns exceed this many and this multiple of
    # the longest row's visible entries: copying the cache costs about as much as attending over it once.
    compact_min_entries = 64
    compact_ratio = 2.0

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256,
                 options: DecodeOptions | None = None, metrics: Metrics | None = None, **knobs: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.options = decode_options(model, options, **knobs)  # the server's knob values (requests override them)
        self.metrics = metrics or Metrics(model.config.max_steps)
        self.row_schedule = model.method.supports_row_schedule
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))
        self._waiting: deque[EngineRequest] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._batches: dict[DecodeOptions, _Batch] = {}
        self._thread: threading.Thread | None = None
        self.peak_running = 0  # most choices ever decoded together (tests check that batching happened)
        self.compactions = 0

    # ------------------------------------------------------------------ thread-safe API
    def submit(self, req: EngineRequest) -> None:
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later")
            self._waiting.append(req)
            self.metrics.set_queue(len(self._waiting))
        self._wake.set()

    def cancel(self, req: EngineRequest) -> None:
        req.cancelled = True
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ponderlm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def counts(self) -> dict[str, int]:
        with self._lock:
            waiting = len(self._waiting)
        return {"running": sum(b.running() for b in list(self._batches.values())), "waiting": waiting}

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while not self._stop:
            try:
                self._iteration()
            except Exception as exc:  # a bug must not leave clients waiting forever: fail what runs, go on
                for batch in self._batches.values():
                    for row, choice in enumerate(batch.choices):
                        if choice is not None:
                            choice.req.emit(exc)
                            batch.choices[row] = None
                            self.metrics.finished("error")
                self._batches = {}

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        batches = [b for b in self._batches.values() if b.running()]
        self.peak_running = max(self.peak_running, sum(b.running() for b in batches))
        if not batches:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            return
        for batch in batches:
            self._step(batch)
        self._tidy()

    def _free_rows(self) -> int:
        return self.max_batch - sum(b.running() for b in self._batches.values())

    def _admit(self) -> None:
        """Move waiting requests into free rows, in arrival order; those sharing decoding options are
        prefilled together as one left-padded batch (one set of prefill calls instead of one per request)."""
        admitted: list[EngineRequest] = []
        with self._lock:
            free = self._free_rows()
            while self._waiting:
                req = self._waiting[0]
                need = req.n if req.params.max_tokens > 0 else 0
                if req.cancelled:
                    self._waiting.popleft()
                    self.metrics.finished("cancelled")
                    continue
                if need > free:
                    break
                free -= need
                admitted.append(self._waiting.popleft())
            self.metrics.set_queue(len(self._waiting))
        groups: dict[DecodeOptions, list[EngineRequest]] = {}
        for req in admitted:
            try:
                groups.setdefault(self.options_for(req.params), []).append(req)
            except ValueError as exc:  # checked when the request was parsed; never take the engine down
                req.emit(exc)
                self.metrics.finished("error")
        for options, reqs in groups.items():
            try:
                self._prefill_and_place(options, reqs)
            except Exception as exc:  # a request must never take the engine down
                for req in reqs:
                    req.emit(exc)
                    self.metrics.finished("error")

    def options_for(self, params: SamplingParams) -> DecodeOptions:
        """The knob values a request decodes with: the server's, with the request's (a ValueError if bad)."""
        return decode_options(self.model, self.options, **params.knobs)

    @torch.no_grad()
    def _prefill_and_place(self, options: DecodeOptions, reqs: list[EngineRequest]) -> None:
        """Prefill `reqs` (same options) with the method's own `prefill`, then splice each into free rows."""
        model = self.model
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.zeros(len(reqs), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, req in enumerate(reqs):  # left padding, as `generate` batches prompts
            ids[i, width - len(req.prompt_ids):] = torch.tensor(req.prompt_ids)
            mask[i, width - len(req.prompt_ids):] = 1
        state = new_state(model, len(reqs), width + max(r.params.max_tokens for r in reqs), options=options)
        logits, steps = model.method.prefill(model.backbone, state, ids, mask)
        batch, starts = self._batches.get(options), []  # all of reqs go to this one batch (same options)
        for i, req in enumerate(reqs):
            params = req.params
            self.metrics.prompt_tokens(len(req.prompt_ids))
            if params.echo and params.logprobs is not None:
                own = logits[i, width - len(req.prompt_ids):]
                req.prompt_logprobs = self._prompt_logprobs(req.prompt_ids, own, params.logprobs)
            req.open_choices = req.n
            if params.max_tokens == 0:  # echo / scoring only: nothing to decode
                self.metrics.finished("ok")
                for c in range(req.n):
                    req.emit(Event(choice=c, finish_reason="length"))
                continue
            batch = self._batches.get(options)
            if batch is None:  # start at the rows this admission needs; grown by doubling later
                need = sum(r.n for r in reqs if r.params.max_tokens > 0)
                rows = min(self.max_batch, 1 << max(need - 1, 0).bit_length())
                batch = self._batches[options] = _Batch(model, options, rows, self.max_batch)
            for c in range(req.n):
                row = batch.free_row()
                batch.state.splice_row(row, state, src_row=i)
                choice = self._new_choice(req, c)
                batch.choices[row] = choice
                if self._sample(batch, row, choice, logits[i, -1], float(steps[i, -1])):
                    starts.append(row)
        if batch is not None:
            self._start_rows(batch, starts)

    def _new_choice(self, req: EngineRequest, index: int) -> _Choice:
        p = req.params
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little")
        # One generator per choice, seeded from (seed, index): a choice's samples do not depend on
        # which other requests share its batch or in which order rows finish.
        generator = torch.Generator(device=self.device).manual_seed((seed * 1_000_003 + index) % 2**63)
        processors = None
        if p.temperature > 0:  # the same transformers warpers `generate` applies when sampling
            processors = LogitsProcessorList([TemperatureLogitsWarper(p.temperature)])
            if p.top_p < 1.0:
                processors.append(TopPLogitsWarper(p.top_p))
        return _Choice(req=req, index=index, generator=generator, processors=processors)

    def _start_rows(self, batch: _Batch, rows: list[int]) -> None:
        """Rows whose sampled token must be consumed next."""
        if not rows or not self.row_schedule:
            return
        state = batch.state
        tokens = torch.zeros(len(batch.choices), dtype=torch.long, device=self.device)
        mask = torch.zeros(len(batch.choices), dtype=torch.bool, device=self.device)
        for row in rows:
            tokens[row], mask[row] = batch.choices[row].pending, True
        self.model.method.row_start(self.model.backbone, state, tokens, mask)

    @torch.no_grad()
    def _step(self, batch: _Batch) -> None:
        """One backbone call of this batch, then sample for every row whose token completed."""
        model, state = self.model, batch.state
        calls = state.backbone_calls
        try:
            if self.row_schedule:
                done, logits, steps = model.method.step_rows(model.backbone, state)
                finished = done.nonzero()[:, 0].tolist()
            else:
                running = torch.tensor([c is not None for c in batch.choices], device=self.device)
                tokens = torch.tensor([c.pending if c is not None else 0 for c in batch.choices], device=self.device)
                logits, steps = model.method.decode_token(model.backbone, state, tokens, running)
                finished = running.nonzero()[:, 0].tolist()
        except Exception as exc:  # fail this batch's requests, keep serving the others
            for row, choice in enumerate(batch.choices):
                if choice is not None:
                    choice.req.emit(exc)
                    self._release(batch, row, "error")
            self._batches = {k: b for k, b in self._batches.items() if b is not batch}
            return
        self.metrics.backbone_calls(state.backbone_calls - calls)
        starts = []
        for row in finished:
            choice = batch.choices[row]
            if choice is not None and self._sample(batch, row, choice, logits[row], float(steps[row])):
                starts.append(row)
        self._start_rows(batch, starts)

    def _sample(self, batch: _Batch, row: int, choice: _Choice, logits: torch.Tensor, steps: float) -> bool:
        """Pick the choice's next token from `logits` (produced with `steps` executed steps) and emit it.
        Returns whether the row continues (its token must be consumed)."""
        logits = logits.float()
        if choice.processors is None:
            token = int(logits.argmax())  # greedy, as `generate` without sampling
        else:
            seq = torch.tensor([choice.req.prompt_ids + choice.tokens], device=logits.device)
            scores = choice.processors(seq, logits[None])
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=choice.generator)[0, 0])
        choice.tokens.append(token)
        choice.pending = token
        p = choice.req.params
        event = Event(choice=choice.index, token_ids=[token], steps=[steps])
        if p.logprobs is not None:
            event.logprobs = [self._token_logprob(torch.log_softmax(logits, -1), token, p.logprobs)]
        self.metrics.generated(steps)
        finish, stop_reason = None, None
        if token in self.eos_ids and not p.ignore_eos:
            finish = "stop"
        elif len(choice.tokens) >= p.max_tokens:
            finish = "length"
        self._detokenize(choice, flush=finish is not None)
        text = choice.text
        hits = [(text.find(s), s) for s in p.stop if s in text]
        if hits:
            cut, stop_reason = min(hits)
            text, finish = text[:cut], "stop"
        if finish is None:
            # Hold back what could still become a stop string (an incomplete character never gets into text).
            hold = max((len(s) - 1 for s in p.stop), default=0)
            text = text[:max(len(text) - hold, choice.sent)]
        event.text = text[choice.sent:]
        choice.sent = len(text)
        event.finish_reason, event.stop_reason = finish, stop_reason
        if not choice.req.stream:
            if choice.held is not None:
                event = _merge(choice.held, event)
            choice.held = event if finish is None else None
        if finish is not None:  # counted before the client can see the end, so /metrics agrees with it
            self._release(batch, row, "ok")
        if choice.req.stream or finish is not None:
            choice.req.emit(event)
        return finish is None

    def _detokenize(self, choice: _Choice, flush: bool) -> None:
        """Append the text the newest token completes. Decoding only a short window of tokens keeps this O(1)
        per token instead of re-decoding the whole output (vLLM's incremental detokenization); the window
        starts where the previous text was complete, so byte-level pieces join exactly."""
        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        prefix = decode(choice.tokens[choice.prefix_offset:choice.read_offset])
        window = decode(choice.tokens[choice.prefix_offset:])
        if len(window) > len(prefix) and (flush or not window.endswith("\ufffd")):
            choice.text += window[len(prefix):]
            choice.prefix_offset, choice.read_offset = choice.read_offset, len(choice.tokens)

    def _release(self, batch: _Batch, row: int, outcome: str) -> None:
        req = batch.choices[row].req
        batch.choices[row] = None
        batch.state.release_row(row)
        batch.released = True
        req.open_choices -= 1
        if req.open_choices == 0:
            self.metrics.finished(outcome)

    def _token_logprob(self, logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
        values, ids = logprobs.topk(k) if k > 0 else (logprobs[:0], torch.zeros(0, dtype=torch.long))
        top = {self._piece(int(i)): float(v) for v, i in zip(values.tolist(), ids.tolist())}
        top.setdefault(self._piece(token), float(logprobs[token]))  # as vLLM: the chosen token is always listed
        return TokenLogprob(token=self._piece(token), logprob=float(logprobs[token]), top=top)

    def _prompt_logprobs(self, ids: list[int], logits: torch.Tensor, k: int) -> list[TokenLogprob]:
        """Log-probability of every prompt token under the prefix before it (the first has none)."""
        logprobs = torch.log_softmax(logits.float(), -1)
        out = [TokenLogprob(token=self._piece(ids[0]), logprob=None, top=None)]
        out += [self._token_logprob(logprobs[t - 1], ids[t], k) for t in range(1, len(ids))]
        return out

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _drop_cancelled(self) -> None:
        for batch in self._batches.values():
            for row, choice in enumerate(batch.choices):
                if choice is not None and choice.req.cancelled:
                    self._release(batch, row, "cancelled")

    def _tidy(self) -> None:
        """Drop empty batches (frees their cache); compact a batch whose cache is mostly invisible columns."""
        for key, batch in list(self._batches.items()):
            if not batch.running():
                del self._batches[key]
            elif batch.released:
                batch.released = False
                cache = batch.state.caches[0]
                longest = int(cache.visible_counts().max())
                if cache.length > max(self.compact_min_entries, self.compact_ratio * longest):
                    batch.state.compact()
                    self.compactions += 1


def _merge(first: Event, second: Event) -> Event:
    """One event carrying both events' output, in order."""
    return Event(choice=first.choice, text=first.text + second.text, token_ids=first.token_ids + second.token_ids,
                 steps=first.steps + second.steps, logprobs=first.logprobs + second.logprobs,
                 finish_reason=second.finish_reason, stop_reason=second.stop_reason)
