"""The decisive experiments, Part A (docs/protocols/DECISIVE.md): every arm at >= 1M tokens, its own swept learning
rate, paired seeds, FLOP-matched controls, held-out text.

    nice python benchmarks/decisive.py run --workers 2 --max-minutes 120   # the grid in the protocol's order
    python benchmarks/decisive.py status                                  # what is done, what is left
    python benchmarks/decisive.py plan                                    # every run of the grid, in order

Each run is a plain `ponderlm train` (the exact command lines go to `<work>/commands.txt`), evaluated with
`ponderlm eval ppl --json` on the validation windows and the held-out text. A finished run leaves one compact
record, `docs/results/decisive/runs/<run>.json` (settings with their sources, evaluations, the validation curve
against tokens and training FLOPs, wall time and load): that file is the unit of resumption, so the grid spans
sessions once the records are committed; a run killed mid-training resumes from its checkpoint while its work
directory (`results/decisive/`, not committed) survives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "results" / "decisive"
D, LAYERS, HEADS, SEQ_LEN, BATCH, STEPS = 128, 4, 4, 128, 8, 1000
SWEEP_STEPS = 250
RATES = (1e-3, 2e-3, 4e-3, 8e-3)
SEEDS = (0, 1)
EVAL_BATCHES, CURVE_EVERY, CURVE_BATCHES = 96, 100, 20
SCALE = math.sqrt(2.5 * D)
COMMON = [
    "model.backbone=llama", f"model.hidden_size={D}", f"model.num_hidden_layers={LAYERS}",
    f"model.num_attention_heads={HEADS}", "model.max_position_embeddings=512", "model.tie_word_embeddings=false",
    "optim.warmup_frac=0.02", "optim.min_lr_ratio=0.1", "train.grad_accum=1", "train.device=cpu", "train.dtype=fp32",
    f"train.eval_every={CURVE_EVERY}", f"train.eval_batches={CURVE_BATCHES}", "train.save_every=100",
    "train.keep_last=1", "train.sample_tokens=0", "log.tensorboard=false", "log.log_every=100",
]


def arms() -> dict[str, dict[str, Any]]:
    """Arm name -> recipe file (or None: the documented defaults) and overrides (the protocol's table)."""
    scaled = ["model.method=vanilla", "model.max_steps=0", f"model.embed_scale={SCALE!r}"]
    return {
        "vanilla_official": {"recipe": "benchmarks/recipes/vanilla_official.yaml", "overrides": []},
        "vanilla_scaled": {"recipe": None, "overrides": scaled},
        "vanilla_deep": {"recipe": None, "overrides": [*scaled, f"model.num_hidden_layers={deep_layers()}"],
                         "rate_of": "vanilla_scaled"},
        "vanilla_long_p2": {"recipe": None, "overrides": scaled, "steps_factor": train_ratio("ponderlm2"),
                            "rate_of": "vanilla_scaled"},
        "vanilla_long_lcot": {"recipe": None, "overrides": scaled, "steps_factor": train_ratio("latent_cot"),
                              "rate_of": "vanilla_scaled"},
        "ponderlm": {"recipe": None, "overrides": ["model.method=ponderlm", "model.max_steps=1"]},
        "ponderlm2": {"recipe": None, "overrides": ["model.method=ponderlm2", "model.max_steps=1"]},
        "ponderlm3": {"recipe": None, "overrides": ["model.method=ponderlm3", "model.max_steps=1"]},
        "latent_cot": {"recipe": None, "overrides": ["model.method=latent_cot", "model.max_steps=1"]},
        "looped_k3": {"recipe": None, "overrides": ["model.method=looped", "model.max_steps=3"]},
        "pause_k3": {"recipe": None, "overrides": ["model.method=pause", "model.max_steps=3"]},
        "ponderlm_k3": {"recipe": None, "overrides": ["model.method=ponderlm", "model.max_steps=3"]},
    }


def _config(**kw: Any) -> Any:
    from ponderlm.config import PonderConfig

    base = dict(backbone="llama", hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=4096,
                max_position_embeddings=512, tie_word_embeddings=False)
    return PonderConfig(**{**base, **kw})


def deep_layers() -> int:
    """Layers of the vanilla model whose inference FLOPs per token are closest to PonderLM-2 K = 1's."""
    from ponderlm.flops import flops

    target = flops(_config(method="ponderlm2", max_steps=1), SEQ_LEN)["forward"]
    return min(range(LAYERS, 4 * LAYERS + 1),
               key=lambda n: abs(flops(_config(method="vanilla", num_hidden_layers=n), SEQ_LEN)["forward"] - target))


def train_ratio(method: str) -> float:
    """Training FLOPs per token of `method` at K = 1 over vanilla's (`ponderlm.flops`, the analytic cost model)."""
    from ponderlm.flops import flops

    return flops(_config(method=method, max_steps=1), SEQ_LEN, training=True)["training_ratio"]


SWEEP_ARMS = ("vanilla_scaled", "ponderlm2", "vanilla_official", "ponderlm3", "latent_cot", "ponderlm")
MAIN_ARMS = ("vanilla_scaled", "vanilla_official", "ponderlm2", "ponderlm3", "latent_cot", "ponderlm", "vanilla_deep")
THIRD_SEED = ("vanilla_scaled", "ponderlm2", "ponderlm3", "latent_cot", "vanilla_official", "ponderlm", "vanilla_deep")
# Runs added by a dated post-hoc amendment of the protocol, run last at the shared rate: (arm, seed) -> its date.
# The report marks them (decisive_report.exploratory). 2026-12-08: a second seed of the K = 3 runs, for an interval.
POST_HOC_SEEDS = {("looped_k3", 1): "2026-12-08", ("pause_k3", 1): "2026-12-08", ("ponderlm_k3", 1): "2026-12-08"}


def portable(text: str) -> str:
    """A committed record names paths relative to the repository, never this machine's."""
    return text.replace(f"{ROOT}/", "")


def rate_name(rate: float) -> str:
    """1e-3 -> "1e-3", 1.6e-2 -> "1.6e-2": short, and distinct for the doubled / halved rates of an extension."""
    mantissa, exponent = f"{rate:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class Grid:
    def __init__(self, work: Path, workers: int, threads: int = 1, docs: Path = DOCS):
        """work: the runs' directories (not committed); docs: the committed records the grid resumes from."""
        self.work, self.workers, self.threads, self.docs = work, workers, threads, docs
        self.data = work / "data"
        self.arms = arms()

    # ------------------------------------------------------------------ bookkeeping
    def record_path(self, run: str) -> Path:
        return self.docs / "runs" / f"{run}.json"

    def done(self, run: str) -> bool:
        return self.record_path(run).is_file()

    def sweep_result(self, arm: str) -> dict[str, Any] | None:
        path = self.docs / "lr" / f"{arm}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def best_rate(self, arm: str) -> float | None:
        spec = self.arms[arm]
        source = spec.get("rate_of", arm)
        result = self.sweep_result(source)
        return None if result is None or not result.get("final") else result["best"]

    # ------------------------------------------------------------------ one run
    def command(self, run: str, arm: str, seed: int, rate: float, steps: int, extra: list[str]) -> list[str]:
        spec = self.arms[arm]
        out = self.work / "runs" / run
        cmd = [sys.executable, "-m", "ponderlm", "train"]
        if spec["recipe"]:
            cmd.append(str(ROOT / spec["recipe"]))
        cmd += ["--out", str(out)]
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            cmd.append("--resume")
        return cmd + [*COMMON, *spec["overrides"], f"data.data_dir={self.data}", f"data.seq_len={SEQ_LEN}",
                      f"train.batch_size={BATCH}", f"train.steps={steps}", f"train.seed={seed}", f"optim.lr={rate}",
                      f"name={run}", *extra]

    def _call(self, cmd: list[str], log: Path) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false"}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.work / "commands.txt", "a") as f:
            f.write(shlex.join(cmd) + "\n")
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)

    def _eval(self, run_dir: Path, data: str, seq_len: int, log: Path) -> dict[str, Any] | None:
        cmd = [sys.executable, "-m", "ponderlm", "eval", "ppl", "--model", str(run_dir), "--data", data,
               "--split", "val", "--seq-len", str(seq_len), "--batch-size", str(BATCH), "--max-batches",
               str(EVAL_BATCHES), "--no-progress", "--json"]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{out.stderr}")
        if out.returncode != 0:
            return None
        return json.loads(out.stdout.strip().splitlines()[-1])

    def run_one(self, job: dict[str, Any]) -> int:
        run = job["run"]
        if self.done(run):
            return 0
        log = self.work / "logs" / f"{run}.log"
        load_before = os.getloadavg()[0]
        start = time.time()
        rc = self._call(self.command(run, job["arm"], job["seed"], job["rate"], job["steps"], job.get("extra", [])),
                        log)
        if rc != 0:
            print(f"[{time.strftime('%H:%M:%S')}] {run}: train rc={rc} (see {log})", flush=True)
            return rc
        run_dir = self.work / "runs" / run
        seq_len = job.get("seq_len", SEQ_LEN)
        val = self._eval(run_dir, str(self.data), seq_len, log)
        heldout = self._eval(run_dir, "heldout", seq_len, log)
        record = make_record(run_dir, job, val, heldout, wall=time.time() - start,
                             load=(load_before, os.getloadavg()[0]))
        path = self.record_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(portable(json.dumps(record, indent=1)) + "\n")
        tmp.replace(path)
        print(f"[{time.strftime('%H:%M:%S')}] {run}: val loss {record['val']['loss'] if val else 'n/a'} "
              f"({time.time() - start:.0f}s, load {load_before:.1f})", flush=True)
        return 0

    # ------------------------------------------------------------------ the grid
    def sweep_jobs(self, arm: str) -> list[dict[str, Any]]:
        """The next rates to try for `arm` (empty when its sweep is final): the protocol's four rates, extended by
        a factor 2 past an end that wins, at most twice."""
        result = self.sweep_result(arm) or {"rates": list(RATES), "extensions": 0}
        rates = result["rates"]
        missing = [r for r in rates if not self.done(f"lr{rate_name(r)}-{arm}-s0")]
        return [{"run": f"lr{rate_name(r)}-{arm}-s0", "arm": arm, "seed": 0, "rate": r, "steps": SWEEP_STEPS,
                 "phase": "lr"} for r in missing]

    def close_sweep(self, arm: str) -> None:
        """Pick the best rate once every rate of the current range is done; extend the range past a winning end."""
        result = self.sweep_result(arm) or {"rates": list(RATES), "extensions": 0}
        if result.get("final"):
            return
        runs = {r: f"lr{rate_name(r)}-{arm}-s0" for r in result["rates"]}
        if not all(self.done(run) for run in runs.values()):
            return
        losses = {r: json.loads(self.record_path(run).read_text())["curve"][-1]["val_loss"] for r, run in runs.items()}
        best = min(losses, key=losses.get)
        rates = sorted(result["rates"])
        edge = best in (rates[0], rates[-1])
        if edge and result["extensions"] < 2:
            result["rates"] = sorted({*rates, best * 2 if best == rates[-1] else best / 2})
            result["extensions"] += 1
        else:
            result.update(best=best, final=True, edge=edge)
        result["losses"] = {rate_name(r): v for r, v in sorted(losses.items())}
        result["rule"] = ("lowest final trainer val loss at seed 0 over a quarter-budget run; range extended by 2x "
                          "past a winning end, at most twice (docs/protocols/DECISIVE.md)")
        path = self.docs / "lr" / f"{arm}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")

    def main_jobs(self) -> list[dict[str, Any]]:
        """Main runs in the protocol's order, for the arms whose rate is known."""
        jobs = []

        def add(arm: str, seed: int, rate: float | None, tag: str = "", **extra: Any) -> None:
            if rate is None:
                return
            steps = round(STEPS * self.arms[arm].get("steps_factor", 1.0))
            run = f"{arm}{tag}-s{seed}"
            if not self.done(run):
                jobs.append({"run": run, "arm": arm, "seed": seed, "rate": rate, "steps": steps, "phase": "main",
                             **extra})

        for seed in SEEDS:
            for arm in MAIN_ARMS:
                add(arm, seed, self.best_rate(arm))
        shared = self.best_rate("vanilla_scaled")
        for seed in SEEDS:
            for arm in MAIN_ARMS:
                own = self.best_rate(arm)
                if shared is not None and own is not None and own != shared:
                    add(arm, seed, shared, tag="-shared")
        for seed in SEEDS:
            for arm in ("vanilla_long_lcot", "vanilla_long_p2"):
                add(arm, seed, self.best_rate(arm))
        for arm in ("looped_k3", "pause_k3", "ponderlm_k3"):
            add(arm, 0, shared)
        for seed in SEEDS:
            for arm in ("vanilla_scaled", "ponderlm2"):
                for seq, batch in ((64, 16), (256, 4)):
                    add(arm, seed, self.best_rate(arm), tag=f"-seq{seq}", seq_len=seq,
                        extra=[f"data.seq_len={seq}", f"train.batch_size={batch}"])
        for arm in THIRD_SEED:
            add(arm, 2, self.best_rate(arm))
        for arm, seed in POST_HOC_SEEDS:
            add(arm, seed, shared)
        return jobs

    def plan(self) -> list[dict[str, Any]]:
        jobs = []
        for arm in SWEEP_ARMS:
            self.close_sweep(arm)
            jobs += self.sweep_jobs(arm) if not (self.sweep_result(arm) or {}).get("final") else []
        return jobs + self.main_jobs()

    def prepare(self) -> None:
        if (self.data / "meta.json").exists():
            return
        self.work.mkdir(parents=True, exist_ok=True)
        self._call([sys.executable, "-m", "ponderlm", "data", "prepare", "--input", "default", "--out",
                    str(self.data)], self.work / "logs" / "prepare.log")

    def backfill(self) -> None:
        """Fill what records made before a field existed lack, while their work dir survives: the held-out score,
        and `train_seconds` (a record's `wall_seconds` covers only the stretch that finished the run)."""
        for path in sorted((self.docs / "runs").glob("*.json")) if (self.docs / "runs").is_dir() else []:
            record = json.loads(path.read_text())
            run_dir = self.work / "runs" / record["run"]
            changed = False
            if record.get("heldout") is None and (run_dir / "final" / "config.json").is_file():
                heldout = self._eval(run_dir, "heldout", record["seq_len"], self.work / "logs" / f"{record['run']}.log")
                if heldout is not None:
                    record["heldout"] = {k: heldout[k] for k in ("loss", "ppl", "avg_steps", "tokens", "conditions")
                                         if k in heldout}
                    changed = True
            if "train_seconds" not in record and (run_dir / "metrics.jsonl").is_file():
                record["train_seconds"] = train_seconds(run_dir)
                changed = True
            if changed:
                path.write_text(portable(json.dumps(record, indent=1)) + "\n")

    def run(self, max_minutes: float | None) -> None:
        self.prepare()
        deadline = None if max_minutes is None else time.time() + 60 * max_minutes
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            running: dict[str, Any] = {}
            while True:
                for name in [n for n, f in running.items() if f.done()]:
                    running.pop(name).result()
                if deadline is None or time.time() < deadline:
                    for job in self.plan():
                        if len(running) >= self.workers:
                            break
                        if job["run"] not in running:
                            running[job["run"]] = pool.submit(self.run_one, job)
                if not running:
                    break
                time.sleep(5)


def train_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps over every stretch of the run (each step's own time, from metrics.jsonl;
    evaluation and start-up excluded, steps repeated after a crash counted again)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train" and r.get("tokens_per_s")]
    per_step = {r["step"]: r["tokens_seen"] for r in train}
    previous = {step: per_step.get(step - 1, 0) for step in per_step}
    return sum((r["tokens_seen"] - previous[r["step"]]) / r["tokens_per_s"] for r in train)


def make_record(run_dir: Path, job: dict[str, Any], val: dict[str, Any] | None, heldout: dict[str, Any] | None,
                wall: float, load: tuple[float, float]) -> dict[str, Any]:
    """The committed record of one run: everything the report needs, read from the run's own files."""
    from ponderlm.config import PonderConfig
    from ponderlm.flops import flops

    summary = json.loads((run_dir / "summary.json").read_text())
    config = PonderConfig.from_pretrained(run_dir / "final")
    seq_len = job.get("seq_len", SEQ_LEN)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tokens = {r["step"]: r["tokens_seen"] for r in rows if r.get("kind") == "train"}
    train_steps = [r["executed_steps"] for r in rows if r.get("kind") == "train"]
    avg = sum(train_steps) / max(len(train_steps), 1)
    per_token = flops(config, seq_len, avg_steps=avg if config.method_class.adaptive else None,
                      training=True)["training"]
    curve = [{"step": r["step"], "tokens": tokens[r["step"]], "train_flops": per_token * tokens[r["step"]],
              "val_loss": r["val_loss"]} for r in rows if r.get("kind") == "eval" and r["step"] in tokens]
    return {"run": job["run"], "arm": job["arm"], "seed": job["seed"], "phase": job["phase"], "lr": job["rate"],
            "steps": job["steps"], "seq_len": seq_len, "method": config.method, "K": config.max_steps,
            "layers": config.num_hidden_layers, "parameters": summary.get("parameters"),
            "tokens_seen": summary["tokens_seen"], "settings": summary.get("settings"),
            "val": val and {k: val[k] for k in ("loss", "ppl", "avg_steps", "tokens", "conditions") if k in val},
            "heldout": heldout and {k: heldout[k] for k in ("loss", "ppl", "avg_steps", "tokens", "conditions")
                                    if k in heldout},
            "curve": curve, "train_flops_per_token": per_token, "wall_seconds": wall,
            "train_seconds": train_seconds(run_dir),
            "load_average": {"start": load[0], "end": load[1]}, "threads": 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["run", "plan", "status", "backfill", "heldout"])
    p.add_argument("--work", type=Path, default=ROOT / "results" / "decisive")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, help="start no new run after this many minutes")
    args = p.parse_args(argv)
    grid = Grid(args.work, args.workers, args.threads)
    if args.phase == "run":
        grid.run(args.max_minutes)
    if args.phase in ("heldout", "backfill"):
        grid.backfill()
    jobs = grid.plan()
    done = sorted(p.stem for p in (DOCS / "runs").glob("*.json")) if (DOCS / "runs").is_dir() else []
    if args.phase in ("plan", "status"):
        print(f"done ({len(done)}): {', '.join(done) or '-'}")
        print(f"next ({len(jobs)}, rates known so far): " + ", ".join(j["run"] for j in jobs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
