"""`ponderlm serve` against real clients on loopback: the official `openai` client, raw HTTP, lm-eval's
`local-completions` and headless Chromium. References are computed independently, on a separate copy
of the model: `model.generate` and `sequential_logits` (the token-by-token decode path)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import single_thread, split_tau, tiny_checkpoint

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install 'ponderlm[test]'")

from serve_helpers import NAME, TEXT, WAIT_S, Server, httpx, metric, wait_until  # noqa: E402

from ponderlm.eval.perplexity import load_model  # noqa: E402
from ponderlm.inference import sequential_logits  # noqa: E402
from ponderlm.serve.scheduler import Engine, EngineRequest, SamplingParams  # noqa: E402


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
        params = SamplingParams(max_tokens=lengths[name], temperature=0.0, knobs={"tau": tau})
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
            assert metric(metrics, 'ponderlm_requests_total{outcome="cancelled"}') == 2
            assert metric(metrics, "ponderlm_generation_tokens_total") < 100  # stopped long before max_tokens
            # The freed row serves the next request.
            done = srv.client.completions.create(model=NAME, prompt=TEXT[:20], max_tokens=3, temperature=0)
            assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 3
    finally:
        srv.close()


# ------------------------------------------------------------------ models, health, metrics
def test_models_health_and_metrics(server):
    models = server.client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].model_extra["max_model_len"] == 128
    one = server.client.models.retrieve(NAME)  # GET /v1/models/{id}
    assert one.id == NAME and one.model_extra["max_model_len"] == 128
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        server.client.models.retrieve("gpt-4")
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        before = http.get("/metrics").text
        server.client.completions.create(model=NAME, prompt="hi there", max_tokens=5, temperature=0)
        after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    tokens = "ponderlm_generation_tokens_total"
    assert metric(text, tokens) == metric(before, tokens) + 5
    assert metric(text, "ponderlm_executed_steps_count") == metric(text, tokens)
    assert metric(text, 'ponderlm_executed_steps_bucket{le="+Inf"}') == metric(text, "ponderlm_executed_steps_count")
    assert metric(text, 'ponderlm_requests_total{outcome="ok"}') >= 1
    for key in ("ponderlm_queue_depth", "ponderlm_tokens_per_second", "ponderlm_running_sequences",
                "ponderlm_backbone_calls_total", "ponderlm_prompt_tokens_total"):
        assert metric(text, key) >= 0


def test_metrics_are_prometheus_clients_exposition(server):
    """The text parses with prometheus_client's own parser, with the types and buckets it declares."""
    from prometheus_client.parser import text_string_to_metric_families

    with server.http() as http:
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    assert families["ponderlm_requests"].type == "counter"
    assert families["ponderlm_queue_depth"].type == "gauge"
    steps = families["ponderlm_executed_steps"]
    assert steps.type == "histogram"
    buckets = [s.labels["le"] for s in steps.samples if s.name.endswith("_bucket")]
    assert buckets == ["0.0", "1.0", "2.0", "+Inf"]  # one per possible step count 0..K (K = 2)


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
DOCS = Path(__file__).resolve().parent.parent / "docs" / "SERVING.md"
DOC_URL = "http://127.0.0.1:8000"


def lm_eval_example() -> tuple[str, str]:
    """docs/SERVING.md's lm-eval example: the shell line that reads the context length, and --model_args."""
    block = next(b for b in DOCS.read_text().split("```") if "lm_eval --model local-completions" in b)
    read_len = next(line for line in block.splitlines() if line.startswith("MAX_LEN="))
    model_args = block.split("--model_args", 1)[1].split()[0]
    return read_len, model_args


def test_serving_docs_lm_eval_example_passes_the_models_real_context_length(server):
    """The example once passed max_length=2048 to a 256-position model (every rolling window over 256 tokens
    then failed with HTTP 400). It must read the length from /v1/models instead of hard-coding one."""
    read_len, model_args = lm_eval_example()
    assert "max_length=$MAX_LEN" in model_args and not any(c.isdigit() for c in model_args.split("max_length=")[1])
    script = read_len.replace(DOC_URL, server.url) + '\necho "$MAX_LEN"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0 and out.stdout.strip() == str(server.engine.model.config.max_position_embeddings), out


def test_lm_eval_local_completions_matches_ponderlm_lm_eval(server, checkpoint, tmp_path, monkeypatch):
    """lm-eval's `local-completions`, configured as docs/SERVING.md shows, scores as `ponderlm lm-eval` does."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'ponderlm[eval]'")
    pytest.importorskip("tenacity", reason="lm-eval's API client needs its api extra: pip install 'ponderlm[eval]'")
    from lm_eval.tasks import TaskManager

    from ponderlm.eval.lm_eval_adapter import run_lm_eval
    from ponderlm.eval.tasks import build_tasks

    for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PONDERLM_CACHE": str(tmp_path / "cache"),
                       "HF_DATASETS_CACHE": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(key, value)
    tasks = ["ponder_cloze"]
    model, tok = load_model(checkpoint, "cpu")
    # Both at the checkpoint's own tau: lm-eval's client sends no ponderlm fields.
    ours = run_lm_eval(model, tok, tasks, limit=8, batch_size=4, bootstrap_iters=0)
    manager = TaskManager(include_path=str(build_tasks()), include_defaults=False)
    max_len = server.client.models.list().data[0].model_extra["max_model_len"]
    model_args = (lm_eval_example()[1].replace("model=quickstart", f"model={NAME}").replace(DOC_URL, server.url)
                  .replace("runs/quickstart/final", str(checkpoint)).replace("$MAX_LEN", str(max_len)))
    served = lm_eval.simple_evaluate(
        model="local-completions", tasks=tasks, limit=8, bootstrap_iters=0, task_manager=manager,
        model_args=model_args + ",num_concurrent=4,max_retries=1", gen_kwargs=None)
    for key in ("acc,none", "perplexity,none"):
        assert served["results"]["ponder_cloze"][key] == pytest.approx(
            ours["results"]["ponder_cloze"][key], rel=1e-3), key


# ------------------------------------------------------------------ the command
def test_ponderlm_serve_command_with_an_api_key_from_the_environment(checkpoint):
    """`ponderlm serve --port 0` as a subprocess: it prints the port it got; PONDERLM_API_KEY protects /v1."""
    env = {**os.environ, "PONDERLM_API_KEY": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "ponderlm", "serve", "--model", str(checkpoint), "--port", "0",
                             "--served-model-name", NAME, "--threads", "1"], stderr=subprocess.PIPE, text=True,
                            env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=WAIT_S)
        assert first.startswith(f"serving '{NAME}'") and first.rstrip().endswith("(API key required)"), first
        url = first.split(" on ")[1].split()[0]
        assert httpx.get(url + "/health", timeout=WAIT_S).status_code == 200  # open to probes, as in vLLM

        wrong = openai.OpenAI(base_url=url + "/v1", api_key="guess", timeout=WAIT_S, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            wrong.completions.create(model=NAME, prompt="Once upon a time", max_tokens=4)
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", timeout=WAIT_S, max_retries=0)
        out = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens == 4
        page = httpx.get(url + "/", timeout=WAIT_S).text
        assert "/v1/completions" in page and "ponder_steps" in page and 'id="api_key"' in page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
