"""`ponderlm serve` throughput vs offline batched `generate`, and the early-exit speedup through the server.

One AdaPonderLM (d=256, 4 layers, K=3, gate biases calibrated as in bench_adaponder_decode.py so that
30% of the tokens reaching each gate halt there) is saved with the shipped tokenizer and served by
`ponderlm serve` in a subprocess. For each client count C, C prompts of --prompt-len random tokens
each ask for --new-tokens tokens (greedy, ignore_eos so every request generates exactly that many):

- server: C client threads, each with a kept-alive HTTP connection, send their request at once
  (non-streaming); tokens/s = C x new tokens / wall time from the release to the last answer;
- offline: `model.generate` on the same C prompts as one batch, in this process;
- engine: the server's scheduler in this process without HTTP (all C requests submitted at once),
  which splits the server's overhead into scheduling and the HTTP / client side.

Both at the model's adaptive tau and at full depth (tau = 0, every token runs all K steps), four
timings interleaved round-robin (medians). The server and the offline run use the same thread count.

Usage: python benchmarks/bench_serve.py [--clients 1 8 32] [--new-tokens 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from argparse import Namespace
from pathlib import Path

import torch
from bench_adaponder_decode import build
from common import interleaved_medians, print_table, setup_threads

from ponderlm.data.tokenizer import load_tokenizer

try:  # the openai client's HTTP library; newer releases publish it as httpx2
    import httpx2 as httpx
except ImportError:
    import httpx
from ponderlm.serve.scheduler import Engine, EngineRequest, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_server(model_dir: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ponderlm", "serve", "--model", str(model_dir), "--port", str(port),
                             "--max-batch", str(max_batch), "--threads", str(threads)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit("ponderlm serve exited during startup")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("ponderlm serve did not start within 300 s")
        time.sleep(0.2)


def serve_run(url: str, clients: list[httpx.Client], prompts: list[list[int]], new_tokens: int, tau: float | None,
              out: dict) -> None:
    """Every prompt sent by its own thread and kept-alive client, released together by a barrier, so the
    requests arrive at once (connection setup is not part of the timing)."""
    results: list[dict] = [{}] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def client(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        if tau is not None:
            body["tau"] = tau
        barrier.wait()
        resp = clients[i].post(url + "/v1/completions", json=body)
        resp.raise_for_status()
        results[i] = resp.json()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steps = [s for r in results for s in r["choices"][0]["ponder_steps"]]
    out["tokens"] = sum(r["usage"]["completion_tokens"] for r in results)
    out["avg_steps"] = sum(steps) / len(steps)


def engine_run(model, tokenizer, prompts: list[list[int]], new_tokens: int, out: dict) -> None:
    """The server's engine in this process, without HTTP: all prompts submitted at once."""
    engine = Engine(model, tokenizer, max_batch=len(prompts))
    finished, lock, all_done = [], threading.Lock(), threading.Event()

    def emit(event) -> None:
        if isinstance(event, Exception):
            raise event
        if event.finish_reason is not None:
            with lock:
                finished.append(len(event.token_ids))
                if len(finished) == len(prompts):
                    all_done.set()

    for p in prompts:  # queued before the engine starts: they arrive at once
        engine.submit(EngineRequest(prompt_ids=p, emit=emit, stream=False,
                                    params=SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)))
    engine.start()
    try:
        if not all_done.wait(timeout=600):
            raise RuntimeError("the engine did not finish within 600 s")
    finally:
        engine.stop()
    out["tokens"] = sum(finished)


@torch.no_grad()
def offline_run(model, prompts: list[list[int]], new_tokens: int, tau: float | None, out: dict) -> None:
    ids = torch.tensor(prompts)
    res = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, tau=tau, eos_token_id=None,
                         return_dict_in_generate=True)
    out["tokens"] = res.new_tokens.numel()
    out["avg_steps"] = float(res.executed_steps[:, ids.shape[1] - 1:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--halt-frac", type=float, default=0.3)
    args = parser.parse_args()
    setup_threads(args.threads)
    model = build(Namespace(model=None, hidden=args.hidden, layers=args.layers, K=args.K, halt_frac=args.halt_frac,
                            gate_std=1.0))
    tokenizer = load_tokenizer("default")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "bench-adaponder"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        proc, url = start_server(model_dir, args.threads, max(args.clients))
        try:
            rows = measure(model, tokenizer, url, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cfg = model.config
    print(f"\nAdaPonderLM d={cfg.hidden_size} L={cfg.num_hidden_layers} K={cfg.max_steps} tau={cfg.tau} "
          f"prompt={args.prompt_len} new={args.new_tokens} threads={args.threads} repeats={args.repeats} "
          f"(medians, interleaved)")
    print_table(rows)


def measure(model, tokenizer, url: str, args) -> list[dict]:
    rows = []
    for clients in args.clients:
        gen = torch.Generator().manual_seed(clients)
        prompts = torch.randint(0, model.config.vocab_size, (clients, args.prompt_len), generator=gen).tolist()
        outs: dict[str, dict] = {k: {} for k in ("offline", "offline full", "server", "server full", "engine")}
        http = [httpx.Client(timeout=600) for _ in range(clients)]  # kept alive across runs
        fns = {
            "offline": lambda o=outs["offline"], p=prompts: offline_run(model, p, args.new_tokens, None, o),
            "offline full": lambda o=outs["offline full"], p=prompts: offline_run(model, p, args.new_tokens, 0.0, o),
            "server": lambda o=outs["server"], p=prompts, h=http: serve_run(url, h, p, args.new_tokens, None, o),
            "server full": lambda o=outs["server full"], p=prompts, h=http: serve_run(url, h, p, args.new_tokens, 0.0,
                                                                                      o),
            "engine": lambda o=outs["engine"], p=prompts: engine_run(model, tokenizer, p, args.new_tokens, o),
        }
        before = load()
        times = interleaved_medians(fns, repeats=args.repeats)
        for client in http:
            client.close()
        tps = {k: outs[k]["tokens"] / times[k] for k in times}
        offline_speedup = tps["offline"] / tps["offline full"]
        server_speedup = tps["server"] / tps["server full"]
        rows.append({"clients": clients, "avg steps server / offline":
                     f"{outs['server']['avg_steps']:.2f} / {outs['offline']['avg_steps']:.2f}",
                     "server tok/s": tps["server"], "offline tok/s": tps["offline"],
                     "server / offline": tps["server"] / tps["offline"],
                     "engine (no HTTP) / offline": tps["engine"] / tps["offline"],
                     "full: server / offline": tps["server full"] / tps["offline full"],
                     "speedup server": server_speedup, "speedup offline": offline_speedup,
                     "speedup server / offline": server_speedup / offline_speedup,
                     "load before / after": f"{before} / {load()}"})
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
