"""Crash trials: SIGKILL `ponderlm train` at random moments, recover, and compare with an uninterrupted run.

Each trial starts a tiny run, kills it with SIGKILL after a random delay (anywhere from start-up to the final
export, including mid-checkpoint), then runs `ponderlm train RECIPE --out DIR --resume` (the original
command if DIR does not exist yet; itself killed again at random with probability --rekill) until one
exits 0. A trial passes when every recovery command was accepted
(exit 0 or killed, never a refusal) and the finished run matches the uninterrupted reference bit for bit:
every per-step loss, the eval rows and the sha256 of final/model.safetensors. docs/RELIABILITY.md has results.

    python scripts/crash_trials.py --trials 12 --work /tmp/crash
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """\
name: crash
model: {{backbone: llama, method: ponderlm2, max_steps: 1, hidden_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 64}}
data: {{data_dir: {data}, seq_len: 32}}
optim: {{lr: 3.0e-3, warmup_steps: 1}}
train: {{steps: {steps}, batch_size: 2, eval_every: 4, eval_batches: 1, save_every: 3, keep_last: 2,
        sample_tokens: 0, device: cpu}}
log: {{tensorboard: false}}
"""


def run(argv: list[str], kill_after: float | None) -> tuple[int, str, float]:
    """(exit code, stderr, seconds); SIGKILLed after `kill_after` seconds if still running."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ponderlm", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err, time.monotonic() - t0


def state(out: Path) -> str:
    """Where a kill left the run: last logged step, complete checkpoints, half-written files."""
    if not out.exists():
        return "no dir"
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    steps = [r["step"] for r in rows if r.get("kind") == "train"]
    ckpts = sorted(p.name[5:].lstrip("0") or "0" for p in (out / "checkpoints").glob("step_*")
                   if (p / "manifest.json").is_file()) if (out / "checkpoints").is_dir() else []
    partial = [p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (out / "checkpoints").glob(".tmp-*")] \
        if (out / "checkpoints").is_dir() else []
    partial += [".tmp-final"] if list(out.glob(".tmp-final-*")) else []
    final = " final/" if (out / "final").is_dir() else ""
    return (f"step {max(steps) if steps else 0}, ckpt [{','.join(ckpts)}]{final}"
            + (f", partial {','.join(partial)}" if partial else ""))


def fingerprint(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    evals = [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"]
    weights = hashlib.sha256((out / "final" / "model.safetensors").read_bytes()).hexdigest()
    return {"train": train, "eval": evals, "weights": weights}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rekill", type=float, default=0.3, help="probability that a recovery run is killed too")
    p.add_argument("--work", default="/tmp/ponderlm-crash-trials")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from ponderlm.data.prepare import prepare_data

    words = "the cat sat on a mat while a dog ran to the red door and a bird sang".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(200))
    (work / "corpus.txt").write_text(text)
    prepare_data([str(work / "corpus.txt")], "default", work / "data", val_fraction=0.1, num_proc=1, progress=False)
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(data=work / "data", steps=args.steps))

    code, err, duration = run(["train", str(recipe), "--out", str(work / "reference")], None)
    assert code == 0, err
    reference = fingerprint(work / "reference")
    print(f"reference run: {duration:.1f} s, {args.steps} steps", flush=True)

    passed = 0
    for trial in range(args.trials):
        out = work / f"trial{trial:02d}"
        delay = rng.uniform(0.2, duration)
        code, err, took = run(["train", str(recipe), "--out", str(out)], delay)
        if code == 0:  # the machine got faster than the reference run: aim the next kills within this time
            duration = took
        kills = [f"{delay:.1f}s ({state(out)})"] if code == -signal.SIGKILL else []
        refused = None
        for _ in range(20):
            if code == 0:
                break
            if code != -signal.SIGKILL:
                refused = err.strip().splitlines()[-1:] if err.strip() else [f"exit {code}"]
                break
            again = rng.uniform(0.2, duration) if rng.random() < args.rekill else None
            # What a user would do: --resume once the run directory exists, else the original command again.
            argv = ["train", str(recipe), "--out", str(out)] + (["--resume"] if out.exists() else [])
            code, err, _ = run(argv, again)
            if code == -signal.SIGKILL:
                kills.append(f"again {again:.1f}s ({state(out)})")
        ok = refused is None and code == 0 and fingerprint(out) == reference
        passed += ok
        verdict = ("PASS" if ok else "FAIL") + ("" if refused is None else f" refused: {refused}")
        print(f"trial {trial:2d}: {verdict}; killed {'; '.join(kills) or 'never (finished first)'}", flush=True)
    print(f"{passed}/{args.trials} trials recovered bit-exactly")
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
