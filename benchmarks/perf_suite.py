"""Run the headline performance benchmarks and record what they print, for the generated tables of PERFORMANCE.md.

    python benchmarks/perf_suite.py run                 # every benchmark (about 15 min on 2 quiet cores)
    python benchmarks/perf_suite.py run --only prefill  # one of them
    python benchmarks/perf_suite.py list                # the commands, as a user would type them

Each benchmark runs in a fresh interpreter with its `--json` flag; its record,
docs/results/perf/headline/NAME.json, holds the command, the rows it printed, its header line, the date, the
commit, torch's version, the CPU count and the 1-minute load average before and after (a benchmark that ran beside
other work says so). `python benchmarks/render_reports.py` renders the `perf-headline` block of
docs/PERFORMANCE.md and the `readme-perf` block of README.md from these records (benchmarks/perf_report.py).
Only ratios measured side by side in one run are compared; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "results" / "perf" / "headline"

# name -> (the command as typed from the repository root, what it measures). Two threads: the CI machine's cores.
SUITE: dict[str, tuple[str, str]] = {
    "train": ("ponderlm bench train --methods vanilla,ponderlm2,ponderlm3 --max-steps 1 --repeats 3 --threads 2 "
              "--json", "training step time vs the matmul peak and vs transformers' Llama"),
    "decode-ponderlm3": ("ponderlm bench decode --method ponderlm3 --batch 1 8 32 --new-tokens 48 --repeats 5 "
                         "--continuous --threads 2 --json",
                         "PonderLM-3 early-exit decoding vs full depth (a spread stand-in router)"),
    "decode-adaponder": ("python benchmarks/bench_adaponder_decode.py --batch 1 8 32 --threads 2 --json",
                         "AdaPonderLM early-exit decoding vs full depth (gates calibrated so 30 % of the tokens "
                         "reaching each gate halt there)"),
    "decode-ponderlm3-large": ("ponderlm bench decode --method ponderlm3 --hidden 512 --layers 8 --batch 8 "
                               "--new-tokens 48 --repeats 3 --continuous --threads 2 --json",
                               "PonderLM-3 batch-8 decoding, larger model"),
    "decode-adaponder-large": ("python benchmarks/bench_adaponder_decode.py --hidden 512 --layers 8 --batch 8 "
                               "--repeats 3 --threads 2 --json", "AdaPonderLM batch-8 decoding, larger model"),
    "prefill": ("python benchmarks/bench_prefill.py --threads 2 --json",
                "parallel prompt prefill vs token by token (adaptive methods at uniform depths)"),
    "parallel-eval": ("python benchmarks/bench_parallel_eval.py --sweeps 3 --threads 2 --json",
                      "PonderLM-3's parallel thresholded evaluation vs sequential decoding"),
}


def argv_for(command: str) -> list[str]:
    """The command as this interpreter runs it (`ponderlm ...` -> `python -m ponderlm ...`)."""
    words = shlex.split(command)
    if words[0] == "ponderlm":
        return [sys.executable, "-m", "ponderlm", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise ValueError(f"unexpected command {command!r}")


def parse_output(stdout: str) -> tuple[str, object]:
    """(the `# ...` header lines joined, the JSON printed after them)."""
    header = [line[1:].strip() for line in stdout.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in stdout.splitlines() if not line.startswith("#"))
    try:
        return " ".join(header), json.loads(body)
    except json.JSONDecodeError as err:
        raise ValueError(f"the benchmark printed no JSON after its header ({err}); output was:\n{stdout}") from err


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def run_one(name: str, out_dir: Path = RECORDS) -> dict:
    """Run benchmark `name` once and write its record; returns the record."""
    import torch

    from ponderlm.train.rundir import write_text_atomic

    command, what = SUITE[name]
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(argv_for(command), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    header, rows = parse_output(proc.stdout)
    record = {"name": name, "command": command, "what": what, "header": header, "rows": rows,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": _commit(), "torch": torch.__version__, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "load_start": round(load_start, 2),
              "load_end": round(os.getloadavg()[0], 2), "wall_seconds": round(time.perf_counter() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{name}.json", json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the benchmarks and write their records")
    run.add_argument("--only", nargs="+", choices=list(SUITE), metavar="NAME", help=f"a subset of {', '.join(SUITE)}")
    run.add_argument("--out", type=Path, default=RECORDS, help="where the records go (default: %(default)s)")
    sub.add_parser("list", help="print the commands")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name, (command, what) in SUITE.items():
            print(f"{name}: {command}\n    {what}")
        return 0
    names = args.only or list(SUITE)
    load = os.getloadavg()[0]
    print(f"{len(names)} benchmark(s); load average {load:.2f} at the start", flush=True)
    if load > 0.5:
        print(f"warning: the machine is not quiet (1-minute load {load:.2f}); other work skews every ratio, and the "
              "records say so", file=sys.stderr, flush=True)
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}: {SUITE[name][0]}", flush=True)
        record = run_one(name, args.out)
        print(f"    {record['wall_seconds']:.0f} s, load {record['load_start']:.2f} -> {record['load_end']:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
