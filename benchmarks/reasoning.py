"""The reasoning-testbed benchmark (docs/REASONING.md): every method on k-hop pointer chasing with mixed hop
counts, equal parameters, several seeds, K = 1, 2, 3, and iso-FLOPs fixed-pruning controls.

    nice -n 10 python benchmarks/reasoning.py run       # data, then train + evaluate every run not done yet
    nice -n 10 python benchmarks/reasoning.py run &     # a second process shares the grid (runs are claimed)
    python benchmarks/reasoning.py sweep                # alpha / tau sweeps + fixed pruning of adaptive runs
    python benchmarks/reasoning.py forced               # adaptive runs at forced depth 0..K (what depth buys)
    python benchmarks/reasoning.py extra                # investigation runs (one recipe change each), not tabled
    python benchmarks/reasoning.py report               # table + plots into docs/results/reasoning/
    python benchmarks/reasoning.py run --max-minutes 45 # stop starting new runs after 45 minutes
    python benchmarks/reasoning.py run --setting n8-hops12   # the first protocol (8 symbols, hop counts 1, 2)
    python benchmarks/reasoning.py extra --only NAME,NAME    # just these runs (run names as in runs/)

Everything is the public CLI / Python API: `ponderlm data synth`, `ponderlm train` (called in-process through
`ponderlm.cli.main`, so the exact command lines in `<out>/commands.txt` reproduce each run) and
`ponderlm.eval.reasoning.reasoning_eval` (what `ponderlm eval reasoning` prints). One thread
(`torch.set_num_threads(1)`); run it under `nice`. Each finished run leaves `runs/<name>/eval.json`, which
is skipped on the next call; a run killed during training resumes from its newest checkpoint. The package
is imported from the environment (PYTHONPATH / the installed package), never from a path next to this file.

A setting (`SETTINGS`) fixes the data, the number of steps, the learning rate and the (method, K) grid; runs
go in priority order (the `core` grid for seed 0, then for the other seeds, then the `rest`), so a partial
benchmark still answers the main questions. Nothing is tuned per method: one recipe for all, method options
at their documented defaults. Common to every setting: a Llama backbone with d = 64, 1 layer, 4 heads
(explicit `model.init=ponder`, untied embeddings), AdamW with 5 % warmup and cosine decay to 0.1x, batch 32
examples of 32 tokens, answer-only loss. Why these settings: docs/REASONING.md.
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
BATCH = 32
SEQ_LEN = 32
SWEEP_ALPHAS = (-4.0, -2.0, -1.0)  # PonderLM-3 router bias (alpha = 0 is the main evaluation)
SWEEP_TAUS = (0.05, 0.2, 0.5, 0.8)  # AdaPonderLM / latent CoT halting threshold (1e-4 is the main evaluation)
# PonderLM-3 pruning threshold on w_k: a router trained with a small compute penalty keeps s_1 ~ 0.1 on the tokens
# it would prune, far above the default tau = 1e-4, so its allocation shows only at a larger tau
SWEEP_TAUS_P3 = (0.5, 0.9)
SWEEP_EXAMPLES = 500  # the first 500 test examples per sweep point
COMMON = [
    "model.backbone=llama", "model.hidden_size=64", "model.num_hidden_layers=1", "model.num_attention_heads=4",
    "model.max_position_embeddings=64", "model.init=ponder", "model.tie_word_embeddings=false",
    f"data.seq_len={SEQ_LEN}", "optim.warmup_frac=0.05", "optim.min_lr_ratio=0.1",
    f"train.batch_size={BATCH}", "train.grad_accum=1", "train.device=cpu", "train.dtype=fp32",
    "train.eval_batches=8", "train.save_every=200", "train.keep_last=1", "train.sample_tokens=0",
    "log.tensorboard=false", "log.log_every=100",
]
_DATA_COMMON = ["--example-len", "32", "--train", "20000", "--val", "500", "--test", "2000", "--seed", "0"]

# A setting fixes the data, the training length, the learning rate and the (method, K) grid. `core` runs go
# first for every seed (in that order), then `rest`. The first setting is the benchmark of docs/REASONING.md;
# "n8-hops12" is the first protocol (8 symbols, hop counts {1, 2}), kept so its recorded results reproduce.
SETTINGS: dict[str, dict[str, Any]] = {
    "n12-hops123": {
        "data": ["--task", "hops", "--symbols", "12", "--hops", "1,2,3", "--queries", "6", *_DATA_COMMON],
        "steps": 1500, "lr": 3e-3,
        "core": [("vanilla", 0), ("ponderlm", 1), ("ponderlm2", 1), ("adaponder", 1), ("latent_cot", 1),
                 ("ponderlm3", 1), ("ponderlm", 2), ("adaponder", 2), ("pause", 1), ("looped", 1)],
        "rest": [("ponderlm2", 2), ("latent_cot", 2), ("ponderlm3", 2), ("ponderlm", 3), ("adaponder", 3),
                 ("ponderlm2", 3), ("latent_cot", 3), ("ponderlm3", 3), ("looped", 2), ("pause", 2), ("looped", 3),
                 ("pause", 3)],
        "out": "results/reasoning-n12", "docs": "docs/results/reasoning",
    },
    "n8-hops12": {
        "data": ["--task", "hops", "--symbols", "8", "--hops", "1,2", "--queries", "7", *_DATA_COMMON],
        "steps": 800, "lr": 3e-3,
        "core": [("vanilla", 0), ("ponderlm2", 1), ("adaponder", 3), ("latent_cot", 3), ("ponderlm3", 3),
                 ("ponderlm2", 2), ("ponderlm2", 3), ("pause", 3), ("looped", 3), ("ponderlm", 3)],
        "rest": [(m, k) for m in METHODS if m not in ("vanilla", "ponderlm2") for k in (1, 2)],
        "out": "results/reasoning", "docs": "docs/results/reasoning/n8-hops12",
    },
}
# The decisive experiments' Part B (docs/protocols/DECISIVE.md, with its amendment): 1 layer, 3,000 steps, 3 seeds;
# grid entries are (method, K) or (method, K, variant). Controls: vanilla with K + 1 layers (equal FLOPs) and looped
# K = 1 (equal parameters); PonderLM-3 at its defaults and two-stage from this setting's PonderLM-2 K = 1 run;
# latent CoT with its penalty delayed (the documented recipes).
_PART_B = [("vanilla", 0), ("ponderlm", 1), ("ponderlm2", 1), ("ponderlm3", 1), ("ponderlm3", 1, "from-p2"),
           ("adaponder", 2), ("latent_cot", 1, "delay2000"), ("vanilla", 0, "layers2"), ("looped", 1),
           ("ponderlm", 2), ("ponderlm2", 2), ("vanilla", 0, "layers3")]
_HOPS_B = ["--task", "hops", "--hops", "1,2,3", *_DATA_COMMON]
SETTINGS.update({
    "nomarker-n12": {  # task 1: the query does not say how many hops it needs
        "data": [*_HOPS_B, "--symbols", "12", "--queries", "6", "--no-hop-marker"], "steps": 3000, "lr": 3e-3,
        "core": _PART_B, "rest": [],
        "out": "results/reasoning-nomarker-n12", "docs": "docs/results/reasoning/nomarker-n12",
    },
    "chains-closed": {  # task 2: chains with the elimination shortcut closed; 64-token examples (the amendment)
        "data": ["--task", "chains", "--symbols", "10", "--hops", "1,2,3,4", "--queries", "4", "--distractors", "3",
                 "--constants", "distinct", "--queries-with-replacement", "--example-len", "64",
                 *_DATA_COMMON[2:]],
        "train": ["data.seq_len=64", "model.max_position_embeddings=128"], "steps": 3000, "lr": 3e-3,
        # the validity check (1-layer vanilla) and the positive control (4 layers) come first
        "core": [("vanilla", 0), ("vanilla", 0, "layers4"), *_PART_B[1:]], "rest": [],
        "out": "results/reasoning-chains-closed", "docs": "docs/results/reasoning/chains-closed",
    },
    "hops-n10": {  # task 3: the marked task at two more sizes
        "data": [*_HOPS_B, "--symbols", "10", "--queries", "6"], "steps": 3000, "lr": 3e-3, "core": _PART_B,
        "rest": [], "out": "results/reasoning-hops-n10", "docs": "docs/results/reasoning/hops-n10",
    },
    "hops-n14": {
        "data": [*_HOPS_B, "--symbols", "14", "--queries", "5"], "steps": 3000, "lr": 3e-3, "core": _PART_B,
        "rest": [], "out": "results/reasoning-hops-n14", "docs": "docs/results/reasoning/hops-n14",
    },
})
DEFAULT_SETTING = "n12-hops123"


def run_name(method: str, k: int, seed: int, variant: str = "") -> str:
    return f"{method}-k{k}{'-' + variant if variant else ''}-s{seed}"


# Investigation runs (`extra` phase), not part of the table: one recipe change each, named in the run.
VARIANTS = {
    "lam0.1": ["model.lambda_steps=0.1"],  # PonderLM-3: a compute penalty, so the router has a reason to prune
    "ramp200": ["model.halt_k_frac_ramp_steps=200"],  # AdaPonderLM: the bottom-k halting ramp ends inside the run
    "steps3000": ["train.steps=3000", "train.eval_every=3000"],  # twice the budget: does K = 2 learn 3 hops?
    "tau0": ["model.tau=0"],  # AdaPonderLM: no hard halting in training (gates stay soft); halt only at eval
    # latent CoT at 3,000 steps: without the compute penalty, or without hard halting in training
    "steps3000-lam0": ["train.steps=3000", "train.eval_every=3000", "model.cot_lambda=0"],
    "steps3000-tau0": ["train.steps=3000", "train.eval_every=3000", "model.tau=0"],
    # ... or with the penalty turned on only after 2,000 steps (the lam0 run learns the step by ~1,800)
    "steps3000-delay2000": ["train.steps=3000", "train.eval_every=3000", "model.cot_lambda_delay_steps=2000"],
    # seeds 1 and 2 had not learned the step by 2,000 steps: a longer plateau allowance
    "steps4500-delay3000": ["train.steps=4500", "train.eval_every=4500", "model.cot_lambda_delay_steps=3000"],
}
# PonderLM-3 two-stage recipe (docs/REASONING.md, "Why PonderLM-3 does not use depth here"): continue from the
# trained PonderLM-2 K = 1 (3,000 steps, seed 1; it solves the 2-hop queries) with a fresh router, at
# METHODS.md's defaults (full-depth router init, tau 1e-4) unless the name says otherwise, 1,000 steps at lr 1e-3.
_FROM_P2 = ["model.init_from={runs}/ponderlm2-k1-steps3000-s1/final", "train.steps=1000", "train.eval_every=1000",
            "optim.lr=0.001", "model.router_init=full_depth", "model.tau=0.0001"]
# Checkpoints every 100 steps, kept for benchmarks/ponderlm3_trace.py.
_WARM2000 = ["train.steps=3000", "train.eval_every=3000", "model.router_init=full_depth", "model.tau=0.0001",
             "model.router_warmup_steps=2000", "train.save_every=100", "train.keep_last=40"]
VARIANTS.update({
    "from-p2s1-lam0": [*_FROM_P2, "model.lambda_steps=0"],
    "from-p2s1-lam0.05": [*_FROM_P2, "model.lambda_steps=0.05"],
    "from-p2s2-lam0.05": [*(o.replace("-s1/", "-s2/") for o in _FROM_P2), "model.lambda_steps=0.05"],  # 2nd start
    # K = 2: from PonderLM-2 K = 2 (3,000 steps, seed 0; it solves all three hop counts)
    "from-p2k2s0-lam0.05": [*(o.replace("-k1-steps3000-s1/", "-k2-steps3000-s0/") for o in _FROM_P2),
                            "model.lambda_steps=0.05"],
    # one stage: the router held at its prior for the first 2,000 of 3,000 steps
    "steps3000-warm2000-lam0": [*_WARM2000, "model.lambda_steps=0"],
    "steps3000-warm2000-lam0.05": [*_WARM2000, "model.lambda_steps=0.05"],
    # Part B (docs/protocols/DECISIVE.md): equal-FLOP vanilla controls, the documented two-stage and delayed recipes
    "layers2": ["model.num_hidden_layers=2"],
    "layers3": ["model.num_hidden_layers=3"],
    "layers4": ["model.num_hidden_layers=4"],
    "from-p2": ["model.init_from={runs}/ponderlm2-k1-s{seed}/final", "train.steps=1000", "train.eval_every=1000",
                "optim.lr=0.001", "model.lambda_steps=0.05"],
    "delay2000": ["model.cot_lambda_delay_steps=2000"],
    # Post hoc (after task 1's seed 0): is the 2-layer vanilla control, far below looped K = 1 (the same network with
    # its two layers tied), held back by the one shared learning rate?
    "layers2-lr1e-3": ["model.num_hidden_layers=2", "optim.lr=0.001"],
    "layers2-lr1e-2": ["model.num_hidden_layers=2", "optim.lr=0.01"],
    # ... and neither rate helped (seed 0): does it learn with twice the steps, as circuits that compose two layers
    # often do only after a plateau?
    "layers2-steps6000": ["model.num_hidden_layers=2", "train.steps=6000", "train.eval_every=6000"],
})
EXTRA = {
    "n8-hops12": [("ponderlm3", 3, 0, "lam0.1"), ("adaponder", 3, 0, "ramp200")],
    # twice the budget: PonderLM-2 K = 1 vs vanilla (3 seeds; seed 0 of PonderLM-2 K = 1 was a probe), K = 1 vs 2
    # on the 3-hop queries (PonderLM-2, PonderLM v1), and the adaptive methods built on PonderLM-2's latent slots
    "n12-hops123": [("vanilla", 0, 0, "steps3000"), ("ponderlm2", 1, 1, "steps3000"), ("vanilla", 0, 1, "steps3000"),
                    ("ponderlm2", 1, 2, "steps3000"), ("vanilla", 0, 2, "steps3000"), ("ponderlm2", 2, 0, "steps3000"),
                    ("ponderlm3", 2, 0, "steps3000"), ("latent_cot", 2, 0, "steps3000"),
                    ("ponderlm2", 2, 1, "steps3000"), ("latent_cot", 1, 0, "steps3000-lam0"),
                    ("latent_cot", 1, 0, "steps3000-tau0"), ("ponderlm2", 2, 2, "steps3000"),
                    ("ponderlm", 1, 0, "steps3000"), ("ponderlm", 2, 1, "steps3000"), ("ponderlm", 1, 1, "steps3000"),
                    ("ponderlm", 2, 2, "steps3000"), ("ponderlm", 1, 2, "steps3000"), ("ponderlm2", 1, 0, "steps3000"),
                    ("ponderlm", 2, 0, "steps3000"),
                    ("ponderlm3", 1, 0, "from-p2s1-lam0"), ("ponderlm3", 1, 0, "from-p2s1-lam0.05"),
                    ("ponderlm3", 1, 0, "steps3000-warm2000-lam0"), ("ponderlm3", 1, 0, "steps3000-warm2000-lam0.05"),
                    ("ponderlm3", 1, 0, "from-p2s2-lam0.05"), ("ponderlm3", 1, 1, "steps3000-warm2000-lam0.05"),
                    ("ponderlm3", 2, 0, "from-p2k2s0-lam0.05"), ("ponderlm3", 1, 2, "steps3000-warm2000-lam0.05"),
                    ("latent_cot", 1, 0, "steps3000-delay2000"), ("latent_cot", 1, 1, "steps3000-delay2000"),
                    ("latent_cot", 1, 2, "steps3000-delay2000"), ("latent_cot", 1, 0, "steps4500-delay3000"),
                    ("latent_cot", 1, 1, "steps4500-delay3000"), ("latent_cot", 1, 2, "steps4500-delay3000")],
    "nomarker-n12": [("vanilla", 0, 0, "layers2-lr1e-3"), ("vanilla", 0, 0, "layers2-lr1e-2"),
                     ("vanilla", 0, 0, "layers2-steps6000")],
}


def plan(setting: str, seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int, int, str]]:
    """(method, K, seed, variant) in priority order; vanilla has K = 0. Grid entries are (method, K) or
    (method, K, variant)."""
    core, rest = SETTINGS[setting]["core"], SETTINGS[setting]["rest"]

    def runs(entries: list[tuple], for_seeds: tuple[int, ...]) -> list[tuple[str, int, int, str]]:
        return [(e[0], e[1], s, e[2] if len(e) > 2 else "") for s in for_seeds for e in entries]

    return runs(core, seeds[:1]) + runs(core, seeds[1:]) + runs(rest, seeds)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run: Path) -> bool:
    """Atomically claim a run for this process (a `<run>.claim` file holding the pid), so that two `run`
    processes can share one grid; a claim whose process is gone is taken over."""
    path = run.parent / f"{run.name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and (pid == os.getpid() or _alive(pid)):
                return pid == os.getpid()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(run: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run.parent / f"{run.name}.claim").unlink()


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, setting: str, out: Path, steps: int | None, seeds: tuple[int, ...], max_minutes: float | None):
        self.setting, self.cfg = setting, SETTINGS[setting]
        self.out, self.seeds, self.max_minutes = out, seeds, max_minutes
        self.steps = steps if steps is not None else self.cfg["steps"]
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

        # Paths relative to the repository (the commands run from its root), never this machine's.
        line = "ponderlm " + shlex.join(argv).replace(f"{ROOT}/", "")
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
        rc = self.cli(["data", "synth", *self.cfg["data"], "--out", str(self.data), "--no-progress"],
                      self.out / "data.log")
        if rc:
            raise SystemExit(f"data synth failed (see {self.out / 'data.log'})")

    def train(self, method: str, k: int, seed: int, variant: str = "") -> float:
        run = self.runs / run_name(method, k, seed, variant)
        if (run / "final" / "config.json").is_file():
            return 0.0
        argv = ["train", "--out", str(run)]
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            argv.append("--resume")
        argv += [*COMMON, f"optim.lr={self.cfg['lr']}", f"model.method={method}", f"model.max_steps={k}",
                 f"data.data_dir={self.data}",
                 f"train.steps={self.steps}", f"train.eval_every={self.steps}", f"train.seed={seed}",
                 *self.cfg.get("train", []),  # the setting's own shape (e.g. 64-token examples)
                 f"name={run.name}", *(o.format(runs=self.runs, seed=seed) for o in VARIANTS.get(variant, []))]
        start = time.time()
        rc = self.cli(argv, self.out / "logs" / f"{run.name}.log")
        if rc:
            raise SystemExit(f"training {run.name} failed with exit code {rc} (see logs/{run.name}.log)")
        return time.time() - start

    def evaluate(self, method: str, k: int, seed: int, train_seconds: float, variant: str = "") -> dict[str, Any]:
        from ponderlm.eval.perplexity import load_model
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
                    fixed[policy] = reasoning_eval(model, self.data, split="test", progress=False, depth_policy=policy,
                                                   depth_target=target)
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        steps = next((int(o.split("=", 1)[1]) for o in VARIANTS.get(variant, []) if o.startswith("train.steps=")),
                     self.steps)
        result = {"run": run.name, "setting": self.setting, "method": method, "K": k, "seed": seed,
                  "steps": steps, "variant": variant,
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

        from ponderlm.eval.perplexity import load_model
        from ponderlm.eval.reasoning import reasoning_eval

        torch.set_num_threads(1)
        for path in sorted(self.runs.glob("*/eval.json")):
            run = path.parent
            info = json.loads(path.read_text())
            if info["method"] not in ADAPTIVE or (run / "sweep.json").is_file():
                continue
            start = time.time()
            model, tokenizer = load_model(run, "cpu")
            knobs = ([{"alpha": a} for a in SWEEP_ALPHAS] + [{"tau": t} for t in SWEEP_TAUS_P3]
                     if info["method"] == "ponderlm3" else [{"tau": t} for t in SWEEP_TAUS])
            points = []
            for setting in knobs:
                learned = reasoning_eval(model, self.data, progress=False, tokenizer=tokenizer,
                                         max_examples=SWEEP_EXAMPLES, **setting)
                point = {"alpha": setting.get("alpha"), "tau": setting.get("tau"), "learned": learned, "fixed": {}}
                target = learned["avg_steps"]
                if 0.0 < target < info["K"]:
                    for policy in ("uniform", "geometric"):
                        point["fixed"][policy] = reasoning_eval(model, self.data, progress=False,
                                                                max_examples=SWEEP_EXAMPLES, tau=setting.get("tau"),
                                                                depth_policy=policy, depth_target=target)
                points.append(point)
            (run / "sweep.json").write_text(json.dumps({"run": run.name, "points": points}, indent=1) + "\n")
            self.log(f"sweep {run.name}: {len(points)} points in {time.time() - start:.0f}s")

    def forced(self) -> None:
        """Forced constant depth 0..K for every finished adaptive run (500 test examples each): how much each
        hop count gains from depth in that checkpoint, whatever its router does. Writes runs/<name>/forced.json."""
        import torch

        from ponderlm.eval.perplexity import load_model
        from ponderlm.eval.reasoning import reasoning_eval

        torch.set_num_threads(1)
        for path in sorted(self.runs.glob("*/eval.json")):
            run, info = path.parent, json.loads(path.read_text())
            if info["method"] not in ADAPTIVE or (run / "forced.json").is_file():
                continue
            model, tokenizer = load_model(run, "cpu")
            rows = []
            for depth in range(info["K"] + 1):
                r = reasoning_eval(model, self.data, progress=False, tokenizer=tokenizer, max_examples=SWEEP_EXAMPLES,
                                   depth_policy="constant", depth_target=float(depth))
                rows.append({"depth": depth, "accuracy": r["accuracy"], "per_difficulty": r["per_difficulty"]})
            (run / "forced.json").write_text(json.dumps({"run": run.name, "depths": rows}, indent=1) + "\n")
            self.log(f"forced depths {run.name}: " + ", ".join(
                f"{row['depth']}: " + "/".join(f"{p['accuracy']:.2f}" for p in row["per_difficulty"]) for row in rows))

    def extra(self, only: tuple[str, ...] = ()) -> None:
        """The investigation runs in EXTRA (train + evaluate; with `only`, just the runs named there), then the
        sweeps of every finished adaptive run that has none."""
        import torch

        torch.set_num_threads(1)
        self.prepare()
        for method, k, seed, variant in EXTRA.get(self.setting, []):
            run = self.runs / run_name(method, k, seed, variant)
            if (only and run.name not in only) or (run / "eval.json").is_file() or not claim(run):
                continue
            try:
                t = self.train(method, k, seed, variant)
                r = self.evaluate(method, k, seed, t, variant)
            finally:
                release(run)
            self.log(f"extra {r['run']}: train {t:.0f}s | acc {r['learned']['accuracy']:.3f} "
                     f"steps {r['learned']['avg_steps']:.2f} rho {r['learned']['spearman_steps_difficulty']}")
        self.sweep()

    def run(self, only: tuple[str, ...] = ()) -> None:
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.prepare()
        begin = time.time()
        todo = [r for r in plan(self.setting, self.seeds) if not (self.runs / run_name(*r) / "eval.json").is_file()
                and (not only or run_name(*r) in only)]
        self.log(f"start ({self.setting}, pid {os.getpid()}): {len(todo)} runs to do, {self.steps} steps each")
        for i, (method, k, seed, variant) in enumerate(todo):
            if self.max_minutes is not None and time.time() - begin > 60 * self.max_minutes:
                self.log(f"stop: --max-minutes {self.max_minutes} reached, {len(todo) - i} runs left")
                return
            run = self.runs / run_name(method, k, seed, variant)
            if (run / "eval.json").is_file() or not claim(run):
                continue  # done meanwhile, or another `run` process has it
            try:
                t = self.train(method, k, seed, variant)
                r = self.evaluate(method, k, seed, t, variant)
            finally:
                release(run)
            per = " ".join(f"h{p['difficulty']} {p['accuracy']:.2f}" for p in r["learned"]["per_difficulty"])
            rho = r["learned"]["spearman_steps_difficulty"]
            self.log(f"{i + 1}/{len(todo)} {r['run']}: train {t:.0f}s eval {r['eval_seconds']:.0f}s | acc "
                     f"{r['learned']['accuracy']:.3f} ({per}) steps {r['learned']['avg_steps']:.2f} "
                     f"rho {'n/a' if rho is None else f'{rho:.2f}'}")
        self.log("done")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["run", "sweep", "forced", "extra", "report"])
    p.add_argument("--setting", default=DEFAULT_SETTING, choices=list(SETTINGS),
                   help=f"data + recipe + grid (default {DEFAULT_SETTING}; n8-hops12 is the first protocol)")
    p.add_argument("--out", help="work directory (default: the setting's, e.g. results/reasoning-n12)")
    p.add_argument("--docs", help="where the report goes (default: the setting's)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the setting's)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--max-minutes", type=float, help="start no new run after this many minutes")
    p.add_argument("--only", default="", help="run / extra: comma-separated run names to do (default: all)")
    args = p.parse_args(argv)
    cfg = SETTINGS[args.setting]
    out = Path(args.out) if args.out else ROOT / cfg["out"]
    docs = Path(args.docs) if args.docs else ROOT / cfg["docs"]
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    if args.phase in ("run", "sweep", "forced", "extra"):
        bench = Bench(args.setting, out, args.steps, seeds, args.max_minutes)
        only = tuple(name.strip() for name in args.only.split(",") if name.strip())
        if args.phase in ("run", "extra"):
            {"run": bench.run, "extra": bench.extra}[args.phase](only)
            return 0
        {"sweep": bench.sweep, "forced": bench.forced}[args.phase]()
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reasoning_report import report

    report(out, docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
