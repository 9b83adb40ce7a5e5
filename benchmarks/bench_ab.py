"""Before / after a refactor: the same benchmark commands on two checkouts, alternating, in one session.

A refactor that must not change speed is judged by ratios measured side by side (this machine is noisy): each
round runs every command on the "before" tree, then on the "after" tree, with `PYTHONPATH` pointing at that tree's
`src/` (the benchmark scripts too are taken from that tree). Outputs go to `--out` as `<round>-<side>-<n>.txt`,
and the tables are printed; compare the ratios each command prints (adaptive / full speedup, time vs vanilla).

    git worktree add ../before <commit>
    python benchmarks/bench_ab.py --before ../before --after . --rounds 2 --out results/ab
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# The commands PERFORMANCE.md records for behaviour-preserving redesigns (run from the tree's root; 1 thread).
COMMANDS = [
    "python -m ponderlm bench decode --method ponderlm3 --router-scale 12 --batch 1 8 --new-tokens 48 --repeats 3 "
    "--continuous --threads 1",
    "cd benchmarks && python bench_adaponder_decode.py --batch 1 8 --tokens 64 --repeats 3 --threads 1",
    "python -m ponderlm bench train --methods vanilla,ponderlm2,ponderlm3 --max-steps 1 --repeats 2 --hidden 256 "
    "--layers 4 --seq-len 128 --no-hf",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    p.add_argument("--after", type=Path, required=True, help="checkout of the code after it")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/ab"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for r in range(args.rounds):
        for side, tree in (("before", args.before.resolve()), ("after", args.after.resolve())):
            for n, command in enumerate(COMMANDS):
                env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
                start, load = time.time(), os.getloadavg()[0]
                out = subprocess.run(command, shell=True, cwd=tree, env=env, capture_output=True, text=True)
                text = (f"$ {command}\n# tree {tree}, round {r}, load at start {load:.2f}, "
                        f"{time.time() - start:.0f} s, rc {out.returncode}\n{out.stdout}{out.stderr[-2000:]}")
                (args.out / f"{r}-{side}-{n}.txt").write_text(text)
                print(text, flush=True)
                if out.returncode != 0:
                    return out.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
