"""`ponderlm serve` against real clients on loopback: the official `openai` client, raw HTTP, lm-eval's
`local-completions` and headless Chromium. References are computed independently, on a separate copy
of the model: `model.generate` and `sequential_logits` (the token-by-token decode path)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import single_thread, split_tau, tiny_checkpoint

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install 'ponderlm[test]'")
httpx = pytest.importorskip("httpx")

from ponderlm.eval.perplexity import load_model  # noqa: E402
from ponderlm.inference import sequential_logits  # noqa: E402
from ponderlm.serve.app import build_app  # noqa: E402
from ponderlm.serve.scheduler import Engine, EngineRequest, SamplingParams  # noqa: E402

NAME = "tiny"
TEXT = ("The old man walked slowly along the river bank, watching the boats drift past while the evening light "
        "faded over the hills and the town behind him grew quiet.")
WAIT_S = 60  # bound on every wait for the server; a hang fails the test instead of blocking CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Server:
    """The app under uvicorn in a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self, checkpoint: Path, **engine_options) -> None:
        model, self.tokenizer = load_model(checkpoint, "cpu")
        self.engine = Engine(model, self.tokenizer, **engine_options)
        self.port = free_port()
        config = uvicorn.Config(build_app(self.engine, NAME), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.engine.start()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "the server to start")
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", timeout=WAIT_S, max_retries=0)

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


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def reference(checkpoint):
    """A separate copy of the model for the references (the server's copy is used by its engine thread)."""
    model, tok = load_model(checkpoint, "cpu")
    return model, tok


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = Server(checkpoint, max_batch=8, max_queue=64)
    yield srv
    srv.close()


def taus(model, tok) -> list[float]:
    """Thresholds that give this barely trained router a spread of depths (the default runs everything at K)."""
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    _, steps = sequential_logits(model, ids, tau=0.0)
    split = split_tau(model, ids)
    assert float(steps.mean()) == model.config.max_steps  # tau=0: full depth
    return [0.0, split, 0.3]


def reference_generate(model, ids: list[int], max_tokens: int, tau: float) -> tuple[list[int], list[float]]:
    """Greedy `model.generate`: the new tokens and the executed steps that produced each one."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, tau=tau, return_dict_in_generate=True,
                         do_sample=False)
    new = out.new_tokens[0].tolist()
    steps = out.executed_steps[0, len(ids) - 1:].tolist()  # consuming token t produces token t+1
    return new, steps[: len(new)]


# ------------------------------------------------------------------ the official client vs model.generate
def test_greedy_completions_equal_generate_token_for_token(server, reference):
    model, tok = reference
    seen_steps = set()
    for tau, (start, length) in zip(taus(model, tok), [(0, 3), (5, 9), (12, 20)], strict=True):
        prompt = tok.decode(tok(TEXT)["input_ids"][start:start + length])
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        new, steps = reference_generate(model, ids, 12, tau)
        seen_steps.update(steps)
        pieces = [tok.decode([t]) for t in new]
        out = server.client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=0,
                                               extra_body={"tau": tau})
        choice = out.choices[0]
        assert choice.logprobs.tokens == pieces  # token for token
        assert choice.text == tok.decode(new, skip_special_tokens=True)
        assert choice.model_extra["ponder_steps"] == steps  # the steps each token really cost
        assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(new)

        stream = server.client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0,
                                                  stream=True, extra_body={"tau": tau})
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks) == choice.text
        assert sum((c.choices[0].model_extra["ponder_steps"] for c in chunks), []) == steps
        assert chunks[-1].choices[0].finish_reason == "length"
    assert len(seen_steps) > 1  # the thresholds really exercised early exit


def test_echo_and_logprobs_equal_the_models_log_probabilities(server, reference):
    model, tok = reference
    tau = taus(model, tok)[1]
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:24]
    out = server.client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0, logprobs=3,
                                           echo=True, extra_body={"tau": tau})
    lp = out.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert len(lp.tokens) == len(ids) + 6
    new = reference_generate(model, ids, 6, tau)[0]
    full = torch.tensor([ids + new])
    logits, _ = sequential_logits(model, full, tau=tau)  # the decode path's own distribution, token by token
    expected = torch.log_softmax(logits[0, :-1].float(), -1).gather(1, full[0, 1:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:]), expected, atol=1e-4)
    for t, top in enumerate(lp.top_logprobs[1:]):
        best = torch.log_softmax(logits[0, t].float(), -1).topk(3)
        assert sorted(top.values(), reverse=True)[:3] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert out.choices[0].text == tok.decode(ids + new)

    # Scoring only (what evaluation clients send): max_tokens=0 returns the prompt's log-probabilities.
    score = server.client.completions.create(model=NAME, prompt=ids, max_tokens=0, logprobs=1, echo=True,
                                             extra_body={"tau": tau})
    assert score.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected[: len(ids) - 1].tolist(), abs=1e-4)
    assert score.usage.completion_tokens == 0


# ------------------------------------------------------------------ continuous batching
def mixed_requests(tok, taus_: list[float]) -> list[dict]:
    words = tok(TEXT)["input_ids"]
    reqs = []
    for i in range(16):
        req = {"prompt": tok.decode(words[i % 5: i % 5 + 2 + 3 * i]), "max_tokens": 4 + (7 * i) % 17,
               "temperature": 0.0, "logprobs": 1, "extra_body": {"tau": taus_[i % len(taus_)]}}
        if i % 4 == 1:  # sampled, reproducibly
            req.update(temperature=0.8, top_p=0.9, seed=i)
        if i % 5 == 2:
            req["n"] = 2
            req.update(temperature=1.0, seed=100 + i)
        if i % 7 == 3:
            req["stop"] = [" the"]
        reqs.append(req)
    return reqs


def summary(out) -> list[tuple]:
    return [(c.index, c.text, c.finish_reason, tuple(c.logprobs.tokens), tuple(c.model_extra["ponder_steps"]),
             tuple(c.logprobs.token_logprobs)) for c in out.choices]


def test_16_concurrent_mixed_requests_equal_each_served_alone(server, reference):
    model, tok = reference
    reqs = mixed_requests(tok, taus(model, tok))
    server.engine.peak_running = 0
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: server.client.completions.create(model=NAME, **r), reqs))
    assert server.engine.peak_running > 1  # requests really shared backbone calls
    for req, both in zip(reqs, together, strict=True):
        if req["temperature"] == 0 and "n" not in req and not req.get("stop"):  # the independent reference too
            ids = tok(req["prompt"], add_special_tokens=False)["input_ids"]
            new, steps = reference_generate(model, ids, req["max_tokens"], req["extra_body"]["tau"])
            assert list(both.choices[0].logprobs.tokens) == [tok.decode([t]) for t in new]
            assert both.choices[0].model_extra["ponder_steps"] == steps
        alone = server.client.completions.create(model=NAME, **req)
        a, b = summary(alone), summary(both)
        assert [x[:5] for x in a] == [x[:5] for x in b]  # same tokens, texts, finish reasons and steps
        for x, y in zip(a, b, strict=True):
            assert x[5] == pytest.approx(y[5], abs=1e-4)
        if req.get("stop"):
            assert all(" the" not in c.text for c in alone.choices)


def test_rows_join_grow_leave_and_compact_without_changing_results(checkpoint, reference):
    """The engine driven by hand, one iteration (admission + one backbone call) at a time, so the order of
    events is fixed: A and B start together in a 2-row batch; B finishes; C and D join (C takes B's row,
    D makes the batch grow to 4 rows); A leaves while C and D run, and the cache is compacted. Every
    request still equals `model.generate` alone, token for token and step for step."""
    model, tok = reference
    served, _ = load_model(checkpoint, "cpu")
    engine = Engine(served, tok, max_batch=4)
    engine.compact_min_entries, engine.compact_ratio = 0, 1.0  # compact whenever a row left columns behind
    tau = taus(model, tok)[1]
    words = tok(TEXT)["input_ids"]
    prompts = {"A": words[:6], "B": words[3:14], "C": words[10:13], "D": words[20:28]}
    lengths = {"A": 10, "B": 3, "C": 12, "D": 14}
    events: dict[str, list] = {name: [] for name in prompts}

    def submit(name: str) -> None:
        params = SamplingParams(max_tokens=lengths[name], temperature=0.0, tau=tau)
        engine.submit(EngineRequest(prompt_ids=prompts[name], params=params, emit=events[name].append))

    def finished(name: str) -> bool:
        return any(e.finish_reason for e in events[name])

    def run_until(condition) -> None:
        for _ in range(500):
            if condition():
                return
            engine._iteration()
        raise AssertionError("the engine made no progress")

    submit("A")
    submit("B")
    run_until(lambda: finished("B"))
    assert [len(b.choices) for b in engine._batches.values()] == [2]
    submit("C")
    submit("D")
    run_until(lambda: finished("A"))
    assert [len(b.choices) for b in engine._batches.values()] == [4] and engine.compactions > 0
    assert not finished("C") and not finished("D")  # A left a running batch
    run_until(lambda: finished("C") and finished("D"))
    for name, ids in prompts.items():
        new, steps = reference_generate(model, ids, lengths[name], tau)
        assert [t for e in events[name] for t in e.token_ids] == new, name
        assert [s for e in events[name] for s in e.steps] == steps, name


def test_cancelled_stream_frees_its_row_and_a_full_queue_answers_429(checkpoint):
    srv = Server(checkpoint, max_batch=1, max_queue=1)
    try:
        gate = srv.gate()  # the engine admits requests but makes no backbone call until the gate opens
        body = {"model": NAME, "prompt": TEXT[:40], "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as http:
            with http.stream("POST", "/v1/completions", json=body) as first:
                assert first.status_code == 200
                lines = first.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))  # its first token, from prefill
                with http.stream("POST", "/v1/completions", json=body) as second:  # waits: no free row
                    assert second.status_code == 200
                    wait_until(lambda: srv.engine.counts() == {"running": 1, "waiting": 1}, "one queued request")
                    third = http.post("/v1/completions", json=body)
                    assert third.status_code == 429
                    message = third.json()["error"]["message"]
                    assert "queue is full" in message and "\n" not in message
            # Both streams are closed: the running one is cancelled and gives its row back.
            engine = srv.engine
            wait_until(lambda: all(r.cancelled for r in engine._waiting) and all(
                c.req.cancelled for b in engine._batches.values() for c in b.choices if c is not None),
                "both cancellations to arrive")
            gate.set()
            wait_until(lambda: srv.engine.counts() == {"running": 0, "waiting": 0}, "the row to be freed")
            metrics = http.get("/metrics").text
            assert 'ponderlm_requests_total{outcome="cancelled"} 2' in metrics
            generated = int(next(v for k, v in (line.split() for line in metrics.splitlines() if line[0] != "#")
                                 if k == "ponderlm_generation_tokens_total"))
            assert generated < 100  # stopped long before max_tokens
            # The freed row serves the next request.
            done = srv.client.completions.create(model=NAME, prompt=TEXT[:20], max_tokens=3, temperature=0)
            assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 3
    finally:
        srv.close()


# ------------------------------------------------------------------ errors
BAD_REQUESTS = [
    ({"prompt": "hi", "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": 3}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ({"prompt": "hi", "tau": 1.5}, 400, "tau"),
    ({"prompt": "hi", "n": 9}, 400, "max-batch"),
    ({"prompt": "hi", "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"prompt": []}, 400, "prompt is empty"),
    ({"prompt": [1, 2, 10**9]}, 400, "outside the vocabulary"),
    ({"prompt": list(range(1, 101)), "max_tokens": 40}, 400, "maximum context length is 128"),
    ({"prompt": {"text": "hi"}}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
    ([1, 2], 400, "JSON object"),
]


def test_bad_requests_get_4xx_with_one_line_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        for body, status, reason in BAD_REQUESTS:
            resp = http.post("/v1/completions", json=body)
            assert resp.status_code == status, (body, resp.text)
            message = resp.json()["error"]["message"]
            assert reason in message and "\n" not in message, (body, message)
        resp = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        server.client.completions.create(model=NAME, prompt="hi", extra_body={"nonsense": True})
    out = server.client.completions.create(model=NAME, prompt="hi", max_tokens=2, temperature=0)
    assert out.choices[0].finish_reason == "length"


def test_models_health_and_metrics(server):
    models = server.client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].model_extra["max_model_len"] == 128
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        assert http.get("/health").json()["status"] == "ok"
        before = http.get("/metrics").text
        server.client.completions.create(model=NAME, prompt="hi there", max_tokens=5, temperature=0)
        after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")

    def value(text: str, key: str) -> float:
        return float(next(line.split()[1] for line in text.splitlines() if line.split()[0] == key))

    tokens = "ponderlm_generation_tokens_total"
    assert value(after.text, tokens) == value(before, tokens) + 5
    assert value(after.text, "ponderlm_executed_steps_count") == value(after.text, "ponderlm_generation_tokens_total")
    assert value(after.text, 'ponderlm_executed_steps_bucket{le="+Inf"}') == value(after.text,
                                                                                    "ponderlm_executed_steps_count")
    for key in ("ponderlm_queue_depth", "ponderlm_tokens_per_second", "ponderlm_running_sequences",
                "ponderlm_backbone_calls_total"):
        assert value(after.text, key) >= 0


# ------------------------------------------------------------------ other methods: both step modes
@pytest.mark.parametrize("method", ["adaponder", "vanilla"])
def test_other_methods_match_generate_under_concurrency(method, tmp_path_factory):
    """AdaPonderLM (per-row schedule, parallel prompt prefill) and vanilla (one token per call)."""
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp(f"serve-{method}"), method, train_steps=5)
    model, tok = load_model(ckpt, "cpu")
    srv = Server(ckpt, max_batch=4)
    try:
        words = tok(TEXT)["input_ids"]
        prompts = [words[: 2 + 5 * i] for i in range(6)]
        tau = 0.5 if method == "adaponder" else None
        extra = {"tau": tau} if tau is not None else {}
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(lambda p: srv.client.completions.create(
                model=NAME, prompt=p, max_tokens=8, temperature=0, logprobs=0, extra_body=extra), prompts))
        for ids, out in zip(prompts, outs, strict=True):
            new, steps = reference_generate(model, ids, 8, tau)
            assert out.choices[0].logprobs.tokens == [tok.decode([t]) for t in new]
            assert out.choices[0].model_extra["ponder_steps"] == steps
    finally:
        srv.close()


# ------------------------------------------------------------------ lm-evaluation-harness
def test_lm_eval_local_completions_matches_ponderlm_lm_eval(server, checkpoint, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'ponderlm[eval]'")
    pytest.importorskip("tenacity", reason="lm-eval's API client needs its api extra: pip install 'ponderlm[eval]'")
    from lm_eval.tasks import TaskManager

    from ponderlm.eval.lm_eval_adapter import run_lm_eval
    from ponderlm.eval.perplexity import DecodeSettings
    from ponderlm.eval.tasks import build_tasks

    for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PONDERLM_CACHE": str(tmp_path / "cache"),
                       "HF_DATASETS_CACHE": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(key, value)
    tasks = ["ponder_cloze"]
    model, tok = load_model(checkpoint, "cpu")
    # Both at the checkpoint's own tau: lm-eval's client sends no ponderlm fields.
    ours = run_lm_eval(model, tok, tasks, settings=DecodeSettings(), limit=8, batch_size=4, bootstrap_iters=0)
    manager = TaskManager(include_path=str(build_tasks()), include_defaults=False)
    served = lm_eval.simple_evaluate(
        model="local-completions", tasks=tasks, limit=8, bootstrap_iters=0, task_manager=manager,
        model_args=f"model={NAME},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={checkpoint},tokenized_requests=True,num_concurrent=4,max_retries=1,max_length=128",
        gen_kwargs=None)
    for metric in ("acc,none", "perplexity,none"):
        assert served["results"]["ponder_cloze"][metric] == pytest.approx(
            ours["results"]["ponder_cloze"][metric], rel=1e-3), metric


# ------------------------------------------------------------------ the command and the page
def test_ponderlm_serve_command(checkpoint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ponderlm", "serve", "--model", str(checkpoint), "--port", str(port),
                             "--served-model-name", NAME, "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "ponderlm serve to listen")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=WAIT_S, max_retries=0)
        out = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens == 4
        page = httpx.get(url + "/", timeout=WAIT_S).text
        assert "/v1/completions" in page and "ponder_steps" in page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_streams_depth_coloured_tokens_in_headless_chromium(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium): page not screenshotted")
    screenshot(chromium, f"{server.url}/?prompt=Once%20upon%20a%20time&max_tokens=24&tau=0.3&autorun=1", tmp_path)


def screenshot(chromium: str, url: str, tmp_path: Path) -> None:
    """Open the page in headless Chromium (driven over the DevTools protocol), wait until the stream has
    finished, then check the DOM and the pixels of the screenshot: streamed tokens in several depth colours."""
    import base64
    import urllib.request

    ws_client = pytest.importorskip("websockets.sync.client", reason="the websockets package drives Chromium")
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    port = free_port()
    browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=900,600",
                                f"--remote-debugging-port={port}", "--remote-allow-origins=*",
                                f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets: list = []

        def listening() -> bool:
            try:
                targets[:] = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5))
            except OSError:
                return False
            return any(t["type"] == "page" for t in targets)

        wait_until(listening, "Chromium's DevTools endpoint")
        page = next(t for t in targets if t["type"] == "page")
        with ws_client.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            ids = iter(range(1, 10**6))

            def call(method: str, **params) -> dict:
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=WAIT_S))
                    if msg.get("id") == n:
                        return msg.get("result", {})

            def js(expression: str):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            call("Page.navigate", url=url)
            wait_until(lambda: (js("document.getElementById('status').textContent") or "").startswith("finished"),
                       "the page's stream to finish")
            backgrounds = js("[...document.querySelectorAll('#out .tok.gen')].map(e => e.style.background)")
            box = js("(() => { const r = document.getElementById('out').getBoundingClientRect();"
                     " return [r.left, r.top, r.right, r.bottom]; })()")
            png = tmp_path / "page.png"
            png.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
    finally:
        browser.terminate()
        browser.wait(timeout=WAIT_S)
    assert len(backgrounds) > 3 and len(set(backgrounds)) > 1  # streamed tokens, more than one depth
    from ponderlm.inference.render import HTML_RAMP

    ramp = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in HTML_RAMP}
    text_area = Image.open(png).convert("RGB").crop(tuple(int(v) for v in box))
    shown = {colour for _, colour in text_area.getcolors(maxcolors=1 << 24)} & ramp
    assert len(shown) > 1, f"the streamed text shows {len(shown)} depth colour(s)"
