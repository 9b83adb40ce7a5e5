"""The small-scale reproduction study on the faithful recipe: every method, one backbone, one budget.

    python benchmarks/study.py all                 # prepare, lr, train, eval, analyze, decode, report
    python benchmarks/study.py train --workers 2   # one phase; every phase skips finished work

Each training run is a plain `ponderlm train` invocation (the exact command lines are written to
`<out>/commands.txt`), run one thread per process, `--workers` processes at a time. Runs interrupted
by a kill resume from their newest checkpoint on the next call, so the study can span sessions.

The recipe follows the official PonderLM-2 / PonderingLM code (docs/RESULTS.md, METHODS.md): untied
input / output embeddings, the "ponder" initialisation (`model.init=ponder`), K=1 latent step for every
pondering method. Fixed across methods: the bundled corpus prepared once with the shipped tokenizer and
its fixed validation split, a Llama backbone (d=128, 4 layers, 4 heads), the optimizer and schedule, the
token budget (steps x batch x seq_len), the seeds, and ONE learning rate, chosen by the `lr` phase (a small
sweep over vanilla and PonderLM-2, seed 0, reported). Each method uses its documented defaults.

Phases and their outputs (under --out, default results/study):
  prepare  data/                                   token shards (train / val) shared by all runs
  lr       runs/lr<LR>-<method>-s0/, lr.json       the learning-rate sweep and the chosen rate
  train    runs/<method>-s<seed>/                  the main runs (val loss every 50 steps: the curves)
  extra    runs/old-<method>-s<seed>/              vanilla, PonderLM v1, PonderLM-2 on the previous
           runs/k<K>-ponderlm2-s<seed>/            recipe (tied, HF init); PonderLM-2 at K = 2, 3
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
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ponderlm.registry import REGISTRY, method_class, method_names

# The study's lineup in report order (vanilla first: its embedding-scale control is reported next to it).
METHODS = ("vanilla", "pause", "looped", "ponderlm", "ponderlm2", "ponderlm3", "adaponder", "latent_cot")
SEEDS = (0, 1, 2)
K = 1
SEQ_LEN = 64
BATCH = 8
STEPS = 200
EVAL_EVERY = 50  # validation loss curve points (train.eval_batches windows each)
EVAL_BATCHES = 48  # 48 x 8 x 64 = 24,576 validation tokens, the same windows for every model
LRS = ("1e-3", "2e-3", "4e-3")  # the sweep; the study uses the one with the lowest mean val loss
LR_METHODS = ("vanilla", "ponderlm2")
OLD_RECIPE = ["model.tie_word_embeddings=true", "model.init=hf"]  # what the study used before
OLD_METHODS = ("vanilla", "ponderlm", "ponderlm2")
K_SWEEP = (2, 3)  # PonderLM-2 beyond the main runs' K=1
# A control for the embedding scale: vanilla fed the interleaved methods' sqrt(2.5 d)-scaled embeddings, so a
# pondering method's gain over vanilla cannot come from the input scale alone.
SCALED_VANILLA = [f"model.embed_scale={(2.5 * 128) ** 0.5!r}"]
ALPHAS = "-4,-2,-1,0,1"
TAUS = "1e-4,0.2,0.4,0.6,0.8"
# Rough single-thread seconds per training step at K=1 (ponderlm bench train at this shape), used only to
# start the longest runs first so that the worker pool finishes evenly.
COST = {"vanilla": 0.14, "pause": 0.3, "looped": 0.3, "ponderlm": 0.45, "ponderlm2": 1.2, "ponderlm3": 1.2,
        "adaponder": 0.4, "latent_cot": 0.35}

COMMON = [
    "model.backbone=llama", "model.hidden_size=128", "model.num_hidden_layers=4",
    "model.num_attention_heads=4", "model.max_position_embeddings=256", "model.tie_word_embeddings=false",
    "model.init=ponder", f"data.seq_len={SEQ_LEN}", "optim.weight_decay=0.1", "optim.warmup_frac=0.05",
    "optim.min_lr_ratio=0.1", f"train.batch_size={BATCH}", "train.grad_accum=1",
    "train.device=cpu", "train.dtype=fp32", "train.eval_batches=10",
    "train.save_every=50", "train.keep_last=1", "train.sample_tokens=0", "log.tensorboard=false",
]
ANALYSES = {  # which CLI analyses apply to which method
    "pareto": METHODS,
    "difficulty": method_names(adaptive=True),
    "alpha": tuple(m for m in METHODS if "alpha" in method_class(m).knobs()),
    "gates": ("adaponder",),  # the study's choice: the halting method with gates
    "jacobi": tuple(m for m in METHODS if "jacobi_iters_eval" in method_class(m).knobs()),
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

    def _train_jobs(self, specs: list[tuple[str, str, int, list[str]]], evaluate: bool = False
                    ) -> list[tuple[list[str], Path]]:
        """(run name, method, seed, extra overrides) -> `ponderlm train` jobs, finished ones skipped.

        Jobs keep the order of `specs` (priority) except that each seed's jobs start longest first, so the
        worker pool finishes a seed evenly. With `evaluate`, each job also evaluates its run when it finishes,
        so a study stopped early has every finished run evaluated.
        """
        jobs = []
        order = {seed: i for i, seed in enumerate(dict.fromkeys(r[2] for r in specs))}
        for name, method, seed, extra in sorted(specs, key=lambda r: (order[r[2]], -COST[r[1]] * _k_of(r[3]))):
            run = self.runs / name
            if (run / "summary.json").exists() or (run / "final" / "config.json").exists():
                continue
            cmd = self._cli() + ["train", "--out", str(run)]
            if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
                cmd.append("--resume")
            steps = K if method_class(method).takes_steps else 0
            cmd += [*COMMON, f"model.max_steps={steps}", f"train.steps={self.steps}",
                    f"train.eval_every={EVAL_EVERY}", f"model.method={method}", f"data.data_dir={self.data}",
                    f"train.seed={seed}", f"name={name}", *extra]
            if evaluate:
                evaluation = [sys.executable, __file__, "_eval_one", str(run), *self._data_args()]
                cmd = [sys.executable, __file__, "_chain", json.dumps([cmd, evaluation])]
            jobs.append((cmd, self.out / "logs" / f"train-{name}.log"))
        return jobs

    def lr_sweep(self) -> None:
        specs = [(f"lr{lr}-{m}-s0", m, 0, [f"optim.lr={lr}"]) for lr in LRS for m in LR_METHODS]
        self._pool(self._train_jobs(specs))
        losses = {lr: {m: _final_val_loss(self.runs / f"lr{lr}-{m}-s0") for m in LR_METHODS} for lr in LRS}
        mean = {lr: sum(v.values()) / len(v) for lr, v in losses.items()}
        best = min(mean, key=mean.get)
        (self.out / "lr.json").write_text(json.dumps({"val_loss": losses, "mean_val_loss": mean, "chosen": best,
                                                      "rule": "lowest mean final val loss of "
                                                              + " and ".join(LR_METHODS) + ", seed 0"}, indent=1))
        print(f"learning rate: {best} (mean val loss {mean[best]:.4f})", flush=True)

    @property
    def lr(self) -> str:
        path = self.out / "lr.json"
        if not path.exists():
            raise SystemExit("study: run the `lr` phase first (it chooses the learning rate)")
        return json.loads(path.read_text())["chosen"]

    def train(self) -> None:
        """The main runs and the extra ones (old recipe, K sweep) in one queue, by priority: every run of seed 0
        first, then seed 1, ...; the K sweep last. Each run is evaluated as soon as it finishes."""
        # Seed-0 runs of the sweep at the chosen rate are exactly the main runs (same command but the name):
        # reuse them instead of training twice.
        for m in LR_METHODS:
            src, dst = self.runs / f"lr{self.lr}-{m}-s0", self.runs / run_name(m, 0)
            if m in self.methods and 0 in self.seeds and (src / "final" / "config.json").exists() and not dst.exists():
                shutil.copytree(src, dst)
        lr = f"optim.lr={self.lr}"
        specs = []
        for s in self.seeds:
            specs += [(run_name(m, s), m, s, [lr]) for m in self.methods]
            specs += [(f"old-{m}-s{s}", m, s, [lr, *OLD_RECIPE]) for m in OLD_METHODS if m in self.methods]
        # The K sweep is queued as seed -1 of the priority order: after every seed's main and old-recipe runs.
        sweep = [(f"k{k}-ponderlm2-s{s}", "ponderlm2", s, [lr, f"model.max_steps={k}"]) for k in K_SWEEP
                 for s in self.seeds[:1]]
        jobs = self._train_jobs(specs, evaluate=True) + self._train_jobs(sweep, evaluate=True)
        self._pool(jobs)

    def controls(self) -> None:
        """Vanilla with the interleaved methods' embedding scale, every seed (cheap: one pass per token)."""
        specs = [(f"vscale-vanilla-s{s}", "vanilla", s, [f"optim.lr={self.lr}", *SCALED_VANILLA]) for s in self.seeds]
        self._pool(self._train_jobs(specs, evaluate=True))

    def extra(self) -> None:
        """Kept for older command lines: the extra runs are part of `train`'s queue."""
        self.train()

    def _extra_runs(self) -> list[Path]:
        runs = [self.runs / f"old-{m}-s{s}" for s in self.seeds for m in OLD_METHODS if m in self.methods]
        return runs + [self.runs / f"k{k}-ponderlm2-s{s}" for k in K_SWEEP for s in self.seeds[:1]]

    def _data_args(self) -> list[str]:
        return ["--data", str(self.data), "--split", "val", "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH),
                "--max-batches", str(self.eval_batches), "--no-progress"]

    def evaluate(self) -> None:
        jobs = []
        lr_runs = [self.runs / f"lr{lr}-{m}-s0" for lr in LRS for m in LR_METHODS]
        controls = [self.runs / f"vscale-vanilla-s{s}" for s in self.seeds]
        for run in [self.runs / run_name(m, s) for m, s in self._all_runs()] + self._extra_runs() + lr_runs + controls:
            if (run / "eval.json").exists() or not (run / "final" / "config.json").exists():
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
                    knob = [f"--alpha={ALPHAS}"] if "alpha" in method_class(method).knobs() else [f"--tau={TAUS}"]
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


def _k_of(extra: list[str]) -> int:
    """Cost factor of a run's K override (the K sweep's runs are the longest)."""
    ks = [int(o.split("=", 1)[1]) for o in extra if o.startswith("model.max_steps=")]
    return (ks[-1] + 1) if ks else K + 1


def _final_val_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not evals:
        raise SystemExit(f"study: {run} has no evaluation rows")
    return evals[-1]["val_loss"]


def _chain(argv: list[str]) -> int:
    """Run the commands of a JSON list one after the other, stopping at the first failure."""
    for cmd in json.loads(argv[0]):
        print(f"$ {shlex.join(cmd)}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            return rc
    return 0


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
    if argv and argv[0] == "_chain":
        return _chain(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["all", "prepare", "lr", "train", "extra", "controls", "eval", "analyze", "decode",
                                     "report"])
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
    unknown = sorted(set(methods) - set(REGISTRY))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(method_names())}")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    study = Study(args.out, args.docs, args.workers, seeds, methods, steps=args.steps, eval_batches=args.eval_batches,
                  threads=args.threads)
    phases = ["prepare", "lr", "train", "controls", "eval", "analyze", "decode", "report"] if args.phase == "all" \
        else [args.phase]
    for phase in phases:
        start = time.time()
        {"prepare": study.prepare, "lr": study.lr_sweep, "train": study.train, "extra": study.extra,
         "controls": study.controls,
         "eval": study.evaluate, "analyze": study.analyze, "decode": study.decode, "report": study.report}[phase]()
        print(f"== {phase} done in {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
