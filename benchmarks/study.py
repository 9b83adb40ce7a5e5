"""The small-scale reproduction study: every method, one backbone, one token budget (docs/RESULTS.md).

    python benchmarks/study.py all                 # prepare, train, eval, analyze, decode, report
    python benchmarks/study.py train --workers 2   # one phase; every phase skips finished work

Each training run is a plain `ponderlm train` invocation (the exact command lines are written to
`<out>/commands.txt`), run one thread per process, `--workers` processes at a time. Runs interrupted
by a kill resume from their newest checkpoint on the next call, so the study can span sessions.

What is fixed across methods: the bundled corpus prepared once with the shipped tokenizer and its
fixed validation split, a Llama backbone (d=128, 4 layers, 4 heads, tied embeddings), the optimizer and
schedule, the token budget (steps x batch x seq_len), the seed list and K=3 for every pondering method.
Each method uses its documented defaults (METHODS.md) — nothing is tuned per method.

Phases and their outputs (under --out, default results/study):
  prepare  data/                                   token shards (train / val) shared by all runs
  train    runs/<method>-s<seed>/                  `ponderlm train` run directories
  eval     runs/<...>/eval.json                    `ponderlm eval ppl --json` on the validation windows
  analyze  analysis/s<seed>/<method>/*.json|png    pareto (+ fixed-pruning controls), difficulty, alpha,
                                                   gates, jacobi — the CLI analyses
  decode   decode.json                             greedy decode tokens/s of every seed-0 model, batch 1,
                                                   one thread, measured side by side (interleaved)
  report   summary.json, table.md, plots in --docs (default docs/results/)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

METHODS = ("vanilla", "pause", "looped", "ponderlm", "ponderlm2", "ponderlm3", "adaponder", "latent_cot")
SEEDS = (0, 1)
K = 3
SEQ_LEN = 128
BATCH = 8
STEPS = 300
EVAL_BATCHES = 24  # 24 x 8 x 128 = 24,576 validation tokens, the same windows for every model
ALPHAS = "-4,-2,-1,0,1"
TAUS = "1e-4,0.2,0.4,0.6,0.8"
# Rough single-thread seconds per training step (ponderlm bench train at this shape), used only to
# start the longest runs first so that the worker pool finishes evenly.
COST = {"vanilla": 0.14, "pause": 0.6, "looped": 0.54, "ponderlm": 0.88, "ponderlm2": 3.4, "ponderlm3": 3.1,
        "adaponder": 0.71, "latent_cot": 0.58}

COMMON = [
    "model.backbone=llama", f"model.max_steps={K}", "model.hidden_size=128", "model.num_hidden_layers=4",
    "model.num_attention_heads=4", "model.max_position_embeddings=256", "model.tie_word_embeddings=true",
    f"data.seq_len={SEQ_LEN}", "optim.lr=2e-3", "optim.weight_decay=0.1", "optim.warmup_frac=0.05",
    "optim.min_lr_ratio=0.1", f"train.batch_size={BATCH}", "train.grad_accum=1",
    "train.device=cpu", "train.dtype=fp32", "train.eval_batches=20",
    "train.save_every=50", "train.keep_last=1", "train.sample_tokens=0", "log.tensorboard=false",
]
ANALYSES = {  # which CLI analyses apply to which method
    "pareto": METHODS,
    "difficulty": ("ponderlm3", "adaponder", "latent_cot"),
    "alpha": ("ponderlm3",),
    "gates": ("adaponder",),
    "jacobi": ("ponderlm2", "ponderlm3"),
}


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


class Study:
    def __init__(self, out: Path, docs: Path, workers: int, seeds: tuple[int, ...], methods: tuple[str, ...],
                 steps: int = STEPS, eval_batches: int = EVAL_BATCHES, threads: int = 1):
        self.out, self.docs, self.workers, self.seeds, self.methods = out, docs, workers, seeds, methods
        self.steps, self.eval_batches, self.threads = steps, eval_batches, threads
        self.data = out / "data"
        self.runs = out / "runs"

    # ------------------------------------------------------------------ plumbing
    def _run(self, cmd: list[str], log: Path) -> int:
        """Run one CLI command single-threaded, appending its output to `log` and the command to commands.txt."""
        threads = str(self.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
        log.parent.mkdir(parents=True, exist_ok=True)
        line = " ".join(shlex.quote(c) for c in cmd)
        with open(self.out / "commands.txt", "a") as f:
            f.write(line + "\n")
        start = time.time()
        with open(log, "a") as f:
            f.write(f"$ {line}\n")
            f.flush()
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        print(f"[{time.strftime('%H:%M:%S')}] rc={rc} {time.time() - start:7.1f}s  {log.name}", flush=True)
        return rc

    def _pool(self, jobs: list[tuple[list[str], Path]]) -> None:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            codes = list(pool.map(lambda job: self._run(*job), jobs))
        failed = [shlex.join(cmd) for (cmd, _), rc in zip(jobs, codes) if rc != 0]
        if failed:
            raise SystemExit("study: failed commands (see the logs next to their outputs):\n  " + "\n  ".join(failed))

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "ponderlm"]

    def _all_runs(self) -> list[tuple[str, int]]:
        return [(m, s) for s in self.seeds for m in self.methods]

    # ------------------------------------------------------------------ phases
    def prepare(self) -> None:
        if (self.data / "meta.json").exists():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._pool([(self._cli() + ["data", "prepare", "--input", "default", "--out", str(self.data)],
                     self.out / "prepare.log")])

    def train(self) -> None:
        jobs = []
        for method, seed in sorted(self._all_runs(), key=lambda r: -COST[r[0]]):
            run = self.runs / run_name(method, seed)
            if (run / "summary.json").exists() or (run / "final" / "config.json").exists():
                continue
            cmd = self._cli() + ["train", "--out", str(run)]
            if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
                cmd.append("--resume")
            cmd += [*COMMON, f"train.steps={self.steps}", f"train.eval_every={self.steps}", f"model.method={method}",
                    f"data.data_dir={self.data}", f"train.seed={seed}",
                    f"name={run_name(method, seed)}"]
            if method == "vanilla":
                cmd.append("model.max_steps=0")
            jobs.append((cmd, self.out / "logs" / f"train-{run.name}.log"))
        self._pool(jobs)

    def _data_args(self) -> list[str]:
        return ["--data", str(self.data), "--split", "val", "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH),
                "--max-batches", str(self.eval_batches), "--no-progress"]

    def evaluate(self) -> None:
        jobs = []
        for method, seed in self._all_runs():
            run = self.runs / run_name(method, seed)
            if (run / "eval.json").exists():
                continue
            # `--json` prints one object; the shell-free runner captures it through a small wrapper.
            cmd = [sys.executable, __file__, "_eval_one", str(run), *self._data_args()]
            jobs.append((cmd, self.out / "logs" / f"eval-{run.name}.log"))
        self._pool(jobs)

    def analyze(self) -> None:
        jobs = []
        for method, seed in self._all_runs():
            run = self.runs / run_name(method, seed)
            for analysis, methods in ANALYSES.items():
                if method not in methods:
                    continue
                out = self.out / "analysis" / f"s{seed}" / method
                if (out / f"{analysis}.json").exists():
                    continue
                cmd = self._cli()
                if analysis == "pareto":
                    # alpha is PonderLM-3's knob (tau stays the checkpoint's); the halting methods sweep tau.
                    knob = [f"--alpha={ALPHAS}"] if method == "ponderlm3" else [f"--tau={TAUS}"]
                    cmd += ["pareto", "--model", str(run), *self._data_args(), *knob]
                elif analysis == "jacobi":
                    cmd += ["analyze", "jacobi", "--model", str(run), "--data", str(self.data), "--no-progress"]
                else:
                    cmd += ["analyze", analysis, "--model", str(run), *self._data_args()]
                jobs.append((cmd + ["--out", str(out)], self.out / "logs" / f"{analysis}-{run.name}.log"))
        # Longest first: PonderLM-2/3 sweeps dominate.
        jobs.sort(key=lambda job: -COST[Path(job[1]).stem.split("-", 1)[1].rsplit("-s", 1)[0]])
        self._pool(jobs)

    def decode(self, repeats: int = 3, prompt_len: int = 32, new_tokens: int = 64) -> None:
        path = self.out / "decode.json"
        if path.exists():
            return
        # In-process so that every model is timed in the same interleaved rounds (this machine is noisy).
        import torch

        from ponderlm.benchmarking import decode_run, interleaved_medians
        from ponderlm.eval.perplexity import eval_batches, load_model

        torch.set_num_threads(1)
        seed = self.seeds[0]
        models = {m: load_model(self.runs / run_name(m, seed), device="cpu") for m in self.methods}
        _, tokenizer = models[self.methods[0]]
        prompt = eval_batches(self.data, tokenizer, split="val", seq_len=prompt_len, batch_size=1, max_batches=1)[0]
        results: dict[str, dict[str, Any]] = {}

        def job(method: str):
            def fn() -> None:
                results[method] = decode_run(models[method][0], prompt, new_tokens)
            return fn

        with torch.inference_mode():
            times = interleaved_medians({m: job(m) for m in self.methods}, repeats=repeats)
        tokens = prompt_len + new_tokens
        rows = {m: {"tok_per_s": tokens / times[m], "ms_per_token": 1e3 * times[m] / tokens,
                    "avg_steps": results[m]["avg_steps"], "kv_MB": results[m]["kv_bytes"] / 2**20}
                for m in self.methods}
        path.write_text(json.dumps({"batch": 1, "threads": 1, "prompt_len": prompt_len, "new_tokens": new_tokens,
                                    "repeats": repeats, "seed": seed, "rows": rows}, indent=1))

    def report(self) -> None:
        from study_report import write_report  # benchmarks/ is this script's directory

        write_report(self.out, self.docs, self.methods, self.seeds, seq_len=SEQ_LEN)


def _eval_one(argv: list[str]) -> int:
    """`ponderlm eval ppl --json` for one run, saving the JSON as <run>/eval.json (atomically)."""
    run = Path(argv[0])
    cmd = [sys.executable, "-m", "ponderlm", "eval", "ppl", "--model", str(run), *argv[1:], "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        return out.returncode
    result = json.loads(out.stdout.strip().splitlines()[-1])
    tmp = run / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(run / "eval.json")
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_eval_one":
        return _eval_one(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["all", "prepare", "train", "eval", "analyze", "decode", "report"])
    p.add_argument("--out", default="results/study", type=Path)
    p.add_argument("--docs", default="docs/results", type=Path, help="where the report's table and plots go")
    p.add_argument("--workers", type=int, default=2, help="processes at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps per run (default {STEPS})")
    p.add_argument("--eval-batches", type=int, default=EVAL_BATCHES,
                   help=f"validation batches of {BATCH}x{SEQ_LEN} tokens (default {EVAL_BATCHES})")
    args = p.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    study = Study(args.out, args.docs, args.workers, seeds, methods, steps=args.steps, eval_batches=args.eval_batches,
                  threads=args.threads)
    phases = ["prepare", "train", "eval", "analyze", "decode", "report"] if args.phase == "all" else [args.phase]
    for phase in phases:
        start = time.time()
        {"prepare": study.prepare, "train": study.train, "eval": study.evaluate, "analyze": study.analyze,
         "decode": study.decode, "report": study.report}[phase]()
        print(f"== {phase} done in {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
