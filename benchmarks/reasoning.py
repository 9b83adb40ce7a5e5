"""The reasoning-testbed benchmark (docs/REASONING.md): every method on k-hop pointer chasing with mixed hop
counts, equal parameters, several seeds, K = 1, 2, 3, and iso-FLOPs fixed-pruning controls.

    nice -n 10 python benchmarks/reasoning.py run       # data, then train + evaluate every run not done yet
    python benchmarks/reasoning.py sweep                # alpha / tau sweeps + fixed pruning of adaptive runs
    python benchmarks/reasoning.py forced               # adaptive runs at forced depth 0..K (what depth buys)
    python benchmarks/reasoning.py extra                # investigation runs (one recipe change each), not tabled
    python benchmarks/reasoning.py report               # table + plots into docs/results/reasoning/
    python benchmarks/reasoning.py run --max-minutes 45 # stop starting new runs after 45 minutes

Everything is the public CLI / Python API: `ponderlm data synth`, `ponderlm train` (called in-process through
`ponderlm.cli.main`, so the exact command lines in `<out>/commands.txt` reproduce each run) and
`ponderlm.eval.reasoning.reasoning_eval` (what `ponderlm eval reasoning` prints). One thread
(`torch.set_num_threads(1)`); run it under `nice`. Each finished run leaves `runs/<name>/eval.json`, which
is skipped on the next call; a run killed during training resumes from its newest checkpoint.

Runs go in priority order, so a partial benchmark still answers the main questions: seed 0 of vanilla,
PonderLM-2 K = 1, the three adaptive methods at K = 3 (cheapest first), PonderLM-2 K = 2, 3 and pause /
looped / PonderLM at K = 3; then the other seeds of those; then K = 1, 2 of the other methods. Nothing is
tuned per method: one recipe (below) for all, method options at their documented defaults.

What is fixed: the data (`hops`, 8 symbols in a single 8-cycle, hop counts 1 and 2 uniform, 7 queries per
example, 32 tokens per example, 20,000 train / 500 val / 2,000 test examples, split by permutation), a Llama
backbone with d = 64, 1 layer, 4 heads (explicit `model.init=ponder`, untied embeddings), AdamW lr 3e-3 with
5 % warmup and cosine decay, batch 32 examples, 800 steps, answer-only loss. Why hop counts {1, 2} and not
1..4: docs/REASONING.md (what the CPU budget can train).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("vanilla", "pause", "looped", "ponderlm", "ponderlm2", "ponderlm3", "adaponder", "latent_cot")
ADAPTIVE = ("ponderlm3", "adaponder", "latent_cot")
SEEDS = (0, 1, 2)
KS = (1, 2, 3)
STEPS = 800
BATCH = 32
DATA_ARGS = ["--task", "hops", "--symbols", "8", "--hops", "1,2", "--queries", "7", "--example-len", "32",
             "--train", "20000", "--val", "500", "--test", "2000", "--seed", "0"]
SEQ_LEN = 32
SWEEP_ALPHAS = (-4.0, -2.0, -1.0)  # PonderLM-3 router bias (alpha = 0 is the main evaluation)
SWEEP_TAUS = (0.05, 0.2, 0.5, 0.8)  # AdaPonderLM / latent CoT halting threshold (1e-4 is the main evaluation)
SWEEP_EXAMPLES = 500  # the first 500 test examples (3,500 answers) per sweep point
COMMON = [
    "model.backbone=llama", "model.hidden_size=64", "model.num_hidden_layers=1", "model.num_attention_heads=4",
    "model.max_position_embeddings=64", "model.init=ponder", "model.tie_word_embeddings=false",
    f"data.seq_len={SEQ_LEN}", "optim.lr=3e-3", "optim.warmup_frac=0.05", "optim.min_lr_ratio=0.1",
    f"train.batch_size={BATCH}", "train.grad_accum=1", "train.device=cpu", "train.dtype=fp32",
    "train.eval_batches=8", "train.save_every=200", "train.keep_last=1", "train.sample_tokens=0",
    "log.tensorboard=false", "log.log_every=100",
]


def run_name(method: str, k: int, seed: int, variant: str = "") -> str:
    return f"{method}-k{k}{'-' + variant if variant else ''}-s{seed}"


# Investigation runs (`extra` phase), not part of the table: one recipe change each, named in the run.
VARIANTS = {
    "lam0.1": ["model.lambda_steps=0.1"],  # PonderLM-3: a compute penalty, so the router has a reason to prune
    "ramp200": ["model.halt_k_frac_ramp_steps=200"],  # AdaPonderLM: the bottom-k halting ramp ends inside the run
}
EXTRA = [("ponderlm3", 3, 0, "lam0.1"), ("adaponder", 3, 0, "ramp200")]


def plan(seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int, int]]:
    """(method, K, seed) in priority order; vanilla has K = 0."""
    core = [("vanilla", 0), ("ponderlm2", 1), ("adaponder", 3), ("latent_cot", 3), ("ponderlm3", 3), ("ponderlm2", 2),
            ("ponderlm2", 3), ("pause", 3), ("looped", 3), ("ponderlm", 3)]
    rest = [(m, k) for m in METHODS if m not in ("vanilla", "ponderlm2") for k in KS if k != 3]
    out = [(m, k, s) for s in seeds[:1] for m, k in core]
    out += [(m, k, s) for s in seeds[1:] for m, k in core]
    out += [(m, k, s) for s in seeds for m, k in rest]
    return out


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, out: Path, steps: int, seeds: tuple[int, ...], max_minutes: float | None):
        self.out, self.steps, self.seeds, self.max_minutes = out, steps, seeds, max_minutes
        self.data = out / "data"
        self.runs = out / "runs"
        self.log_path = out / "bench.log"

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg} (load {load_avg()})"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def cli(self, argv: list[str], log: Path) -> int:
        """`ponderlm ARGV` in this process with stdout/stderr appended to `log`; the line goes to commands.txt."""
        from ponderlm.cli import main

        line = "ponderlm " + shlex.join(argv)
        with open(self.out / "commands.txt", "a") as f:
            f.write(line + "\n")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            print(f"$ {line}", flush=True)
            return main(argv)

    def prepare(self) -> None:
        if (self.data / "meta.json").is_file():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rc = self.cli(["data", "synth", *DATA_ARGS, "--out", str(self.data), "--no-progress"], self.out / "data.log")
        if rc:
            raise SystemExit(f"data synth failed (see {self.out / 'data.log'})")

    def train(self, method: str, k: int, seed: int, variant: str = "") -> float:
        run = self.runs / run_name(method, k, seed, variant)
        if (run / "final" / "config.json").is_file():
            return 0.0
        argv = ["train", "--out", str(run)]
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            argv.append("--resume")
        argv += [*COMMON, f"model.method={method}", f"model.max_steps={k}", f"data.data_dir={self.data}",
                 f"train.steps={self.steps}", f"train.eval_every={self.steps}", f"train.seed={seed}",
                 f"name={run.name}", *VARIANTS.get(variant, [])]
        start = time.time()
        rc = self.cli(argv, self.out / "logs" / f"{run.name}.log")
        if rc:
            raise SystemExit(f"training {run.name} failed with exit code {rc} (see logs/{run.name}.log)")
        return time.time() - start

    def evaluate(self, method: str, k: int, seed: int, train_seconds: float, variant: str = "") -> dict[str, Any]:
        from ponderlm.eval.perplexity import DecodeSettings, load_model
        from ponderlm.eval.reasoning import reasoning_eval

        run = self.runs / run_name(method, k, seed, variant)
        start = time.time()
        model, tokenizer = load_model(run, "cpu")
        learned = reasoning_eval(model, self.data, split="test", progress=False, tokenizer=tokenizer)
        fixed = {}
        if method in ADAPTIVE:  # iso-FLOPs controls: same checkpoint, depth drawn independently of content
            target = learned["avg_steps"]
            for policy in ("uniform", "geometric"):
                if 0.0 < target < k:
                    settings = DecodeSettings(depth_policy=policy, depth_target=target)
                    fixed[policy] = reasoning_eval(model, self.data, settings, split="test", progress=False)
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        result = {"run": run.name, "method": method, "K": k, "seed": seed, "steps": self.steps, "variant": variant,
                  "val_answer_loss": summary.get("val_loss"),
                  "params": sum(p.numel() for p in model.parameters()), "learned": learned, "fixed": fixed,
                  "train_seconds": train_seconds, "eval_seconds": time.time() - start, "load": load_avg()}
        (run / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
        return result

    def sweep(self) -> None:
        """Pareto points of every finished adaptive run: its inference knob (alpha for PonderLM-3, tau for the
        halting methods) swept, each learned point with uniform / geometric fixed pruning at the same average
        steps. Writes runs/<name>/sweep.json (skipped when present)."""
        import torch

        from ponderlm.eval.perplexity import DecodeSettings, load_model
        from ponderlm.eval.reasoning import reasoning_eval

        torch.set_num_threads(1)
        for path in sorted(self.runs.glob("*/eval.json")):
            run = path.parent
            info = json.loads(path.read_text())
            if info["method"] not in ADAPTIVE or (run / "sweep.json").is_file():
                continue
            start = time.time()
            model, tokenizer = load_model(run, "cpu")
            knobs = ([DecodeSettings(alpha=a) for a in SWEEP_ALPHAS] if info["method"] == "ponderlm3"
                     else [DecodeSettings(tau=t) for t in SWEEP_TAUS])
            points = []
            for settings in knobs:
                learned = reasoning_eval(model, self.data, settings, progress=False, tokenizer=tokenizer,
                                         max_examples=SWEEP_EXAMPLES)
                point = {"alpha": settings.alpha, "tau": settings.tau, "learned": learned, "fixed": {}}
                target = learned["avg_steps"]
                if 0.0 < target < info["K"]:
                    for policy in ("uniform", "geometric"):
                        fixed = DecodeSettings(tau=settings.tau, depth_policy=policy, depth_target=target)
                        point["fixed"][policy] = reasoning_eval(model, self.data, fixed, progress=False,
                                                                max_examples=SWEEP_EXAMPLES)
                points.append(point)
            (run / "sweep.json").write_text(json.dumps({"run": run.name, "points": points}, indent=1) + "\n")
            self.log(f"sweep {run.name}: {len(points)} points in {time.time() - start:.0f}s")

    def forced(self) -> None:
        """Forced constant depth 0..K for every finished adaptive run (500 test examples each): how much each
        hop count gains from depth in that checkpoint, whatever its router does. Writes runs/<name>/forced.json."""
        import torch

        from ponderlm.eval.perplexity import DecodeSettings, load_model
        from ponderlm.eval.reasoning import reasoning_eval

        torch.set_num_threads(1)
        for path in sorted(self.runs.glob("*/eval.json")):
            run, info = path.parent, json.loads(path.read_text())
            if info["method"] not in ADAPTIVE or (run / "forced.json").is_file():
                continue
            model, tokenizer = load_model(run, "cpu")
            rows = []
            for depth in range(info["K"] + 1):
                settings = DecodeSettings(depth_policy="constant", depth_target=float(depth))
                r = reasoning_eval(model, self.data, settings, progress=False, tokenizer=tokenizer,
                                   max_examples=SWEEP_EXAMPLES)
                rows.append({"depth": depth, "accuracy": r["accuracy"], "per_difficulty": r["per_difficulty"]})
            (run / "forced.json").write_text(json.dumps({"run": run.name, "depths": rows}, indent=1) + "\n")
            self.log(f"forced depths {run.name}: " + ", ".join(
                f"{row['depth']}: " + "/".join(f"{p['accuracy']:.2f}" for p in row["per_difficulty"]) for row in rows))

    def extra(self) -> None:
        """The investigation runs in EXTRA (train + evaluate), then their sweeps."""
        import torch

        torch.set_num_threads(1)
        self.prepare()
        for method, k, seed, variant in EXTRA:
            if (self.runs / run_name(method, k, seed, variant) / "eval.json").is_file():
                continue
            t = self.train(method, k, seed, variant)
            r = self.evaluate(method, k, seed, t, variant)
            self.log(f"extra {r['run']}: train {t:.0f}s | acc {r['learned']['accuracy']:.3f} "
                     f"steps {r['learned']['avg_steps']:.2f} rho {r['learned']['spearman_steps_difficulty']}")
        self.sweep()

    def run(self) -> None:
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.prepare()
        begin = time.time()
        todo = [r for r in plan(self.seeds) if not (self.runs / run_name(*r) / "eval.json").is_file()]
        self.log(f"start: {len(todo)} runs to do, {self.steps} steps each")
        for i, (method, k, seed) in enumerate(todo):
            if self.max_minutes is not None and time.time() - begin > 60 * self.max_minutes:
                self.log(f"stop: --max-minutes {self.max_minutes} reached, {len(todo) - i} runs left")
                return
            t = self.train(method, k, seed)
            r = self.evaluate(method, k, seed, t)
            per = " ".join(f"h{p['difficulty']} {p['accuracy']:.2f}" for p in r["learned"]["per_difficulty"])
            rho = r["learned"]["spearman_steps_difficulty"]
            self.log(f"{i + 1}/{len(todo)} {r['run']}: train {t:.0f}s eval {r['eval_seconds']:.0f}s | acc "
                     f"{r['learned']['accuracy']:.3f} ({per}) steps {r['learned']['avg_steps']:.2f} "
                     f"rho {'n/a' if rho is None else f'{rho:.2f}'}")
        self.log("done")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["run", "sweep", "forced", "extra", "report"])
    p.add_argument("--out", default=str(ROOT / "results" / "reasoning"), help="work directory")
    p.add_argument("--docs", default=str(ROOT / "docs" / "results" / "reasoning"), help="where the report goes")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps per run (default {STEPS})")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--max-minutes", type=float, help="start no new run after this many minutes")
    args = p.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    if args.phase in ("run", "sweep", "forced", "extra"):
        bench = Bench(Path(args.out), args.steps, seeds, args.max_minutes)
        {"run": bench.run, "sweep": bench.sweep, "forced": bench.forced, "extra": bench.extra}[args.phase]()
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reasoning_report import report

    report(Path(args.out), Path(args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
