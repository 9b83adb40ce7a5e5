"""Every benchmark script outside the performance suite still runs (at toy sizes, in a fresh interpreter).

Benchmarks call internal APIs; when one of those changes, a script breaks silently until someone next measures
with it (bench_prefill.py once called `prefill` with the model where the backbone was due). Timings are not
asserted; the scripts' own side-by-side ratios are what PERFORMANCE.md records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPTS = {
    "bench_ponderlm2_train.py": "--hidden 64 --layers 1 --heads 2 --vocab 256 --seq 16 --batch 1 --repeats 1",
    "bench_latent_cot.py": "--hidden 64 --layers 1 --seq 16 --batch 1 --decode-tokens 4 --repeats 1 --skip-sweep "
                           "--synthetic",
    "bench_compile.py": "--methods vanilla --hidden 64 --layers 1 --seq 16 --batch 1 --new-tokens 4 --repeats 1",
    "bench_serve.py": "--clients 1 2 --prompt-len 4 --new-tokens 4 --repeats 1 --hidden 64 --layers 1",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs_at_toy_size(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, *SCRIPTS[script].split(), "--threads", "1"], cwd=BENCHMARKS,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), f"{script} printed nothing"
