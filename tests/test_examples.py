"""Every script in examples/ runs, at tiny sizes, as a user would run it (a fresh process each): the training
example writes the checkpoint the others load."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORDS = ("the cat sat on a mat while a dog ran to the red door and then the bird sang a song about rain over the "
         "hill near old town where people walk slowly every morning").split()


def run_example(name: str, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # Prepared data goes to a temporary cache, not the user's; one thread keeps the shared machine usable.
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "PONDERLM_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(200)))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env, corpus) -> Path:
    out = tmp_path_factory.mktemp("examples") / "run"
    printed = run_example("train_tiny.py", "--out", str(out), "--steps", "3", "--hidden", "32", "--layers", "1",
                          "--seq-len", "32", "--text", str(corpus), env=env)
    assert "trained 3 steps" in printed and (out / "final" / "config.json").is_file()
    return out


def test_every_example_is_tested():
    tested = {"train_tiny.py", "generate_early_exit.py", "ppl_vs_steps.py", "load_checkpoint.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_generate_early_exit(run_dir, env):
    out = run_example("generate_early_exit.py", "--model", str(run_dir), "--max-new-tokens", "4", "--tau", "0.5",
                      env=env)
    assert "steps (of K=1)" in out and "additional steps per token" in out


def test_ppl_vs_steps(run_dir, env, corpus):
    out = run_example("ppl_vs_steps.py", "--model", str(run_dir), "--taus", "0.001,0.5", "--data", str(corpus),
                      "--seq-len", "32", "--max-batches", "1", env=env)
    rows = [line for line in out.splitlines() if "learned, tau=" in line]
    assert len(rows) == 2 and out.count("uniform fixed pruning") == 2
    assert float(rows[0].split()[-2]) >= float(rows[1].split()[-2])  # a higher threshold never adds steps


def test_load_checkpoint(run_dir, env):
    out = run_example("load_checkpoint.py", "--model", str(run_dir), env=env)
    assert "both loads agree" in out
