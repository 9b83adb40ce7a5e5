"""Measure the README's first command and record what it produced (docs/results/quickstart/).

    python benchmarks/quickstart.py                 # a fresh clone of this repository, a new venv, the README command
    python benchmarks/quickstart.py --in-place      # only `ponderlm train --recipe quickstart` here (no install)

Writes `summary.json` (the run's own summary: perplexity with its evaluation conditions, depth shares, settings
and their sources, sample), `timing.json` (wall time of the whole command and of training alone, the load average
before and after, the machine's CPU count and the exact command) and `tau.json` (`ponderlm eval ppl` of the final
model on the whole validation split at three thresholds). README.md and docs/TRAINING.md quote these files only
through `python benchmarks/render_reports.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "results" / "quickstart"
README_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && "
                  "ponderlm train --recipe quickstart --out runs/quickstart")
TAUS = (1e-4, 3e-3, 0.5)


def _shell(command: str, cwd: Path) -> float:
    start = time.time()
    subprocess.run(["bash", "-c", command], cwd=cwd, check=True)
    return time.time() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-place", action="store_true", help="train here with the installed package (no clone)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    if args.in_place:
        where = ROOT
        command = "ponderlm train --recipe quickstart --out runs/quickstart"
        shutil.rmtree(where / "runs" / "quickstart", ignore_errors=True)
        python = sys.executable
    else:
        where = Path(tempfile.mkdtemp(prefix="quickstart-")) / "ponderlm"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
        command = README_COMMAND
        python = str(where / ".venv" / "bin" / "python")
    wall = _shell(command, where)
    run = where / "runs" / "quickstart"
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    per_step = train_rows[-1]["tokens_seen"] / len(train_rows) if train_rows else 0.0  # tokens_seen is cumulative
    train_seconds = sum(per_step / r["tokens_per_s"] for r in train_rows) if train_rows else None
    taus = []
    for tau in TAUS:
        out = subprocess.run([python, "-m", "ponderlm", "eval", "ppl", "--model", str(run), "--tau", str(tau),
                              "--no-progress", "--json"], capture_output=True, text=True, check=True)
        taus.append(json.loads(out.stdout.strip().splitlines()[-1]))
    DOCS.mkdir(parents=True, exist_ok=True)
    summary["final"] = "runs/quickstart/final"  # not this machine's path
    summary["evaluation"]["data_dir"] = "(the bundled corpus, prepared into the cache)"
    (DOCS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (DOCS / "timing.json").write_text(json.dumps({
        "command": command, "fresh_clone": not args.in_place, "wall_seconds": wall,
        "train_seconds_from_metrics": train_seconds, "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1) + "\n")
    (DOCS / "tau.json").write_text(json.dumps(taus, indent=1) + "\n")
    print(f"wrote {DOCS}/summary.json, timing.json, tau.json ({wall:.0f} s, load {load_before[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
