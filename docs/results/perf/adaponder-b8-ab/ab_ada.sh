#!/bin/bash
# A/B: AdaPonderLM batch-8 continuous batching at d=512, 8 layers; old vs new code, alternating, 2 rounds.
# Run from the repository root:
#   git worktree add ../old 16a6ad3
#   bash docs/results/perf/adaponder-b8-ab/ab_ada.sh ../old . > ab_ada.log
# (ab_ada.log beside this script is the output of the 2026-12-08 run, two checkouts of the same layout.)
OLD=$(realpath "${1:?usage: ab_ada.sh OLD_CHECKOUT [NEW_CHECKOUT]}")
NEW=$(realpath "${2:-.}")
PY=${PYTHON:-python}
for r in 1 2; do
  for side in old new; do
    if [ $side = old ]; then T=$OLD; else T=$NEW; fi
    echo "== round $r $side load $(cut -d' ' -f1 /proc/loadavg)"
    (cd "$T/benchmarks" && PYTHONPATH="$T/src:$T/benchmarks" $PY bench_adaponder_decode.py --hidden 512 --layers 8 \
      --batch 8 --repeats 3 --threads 2 2>&1 | tail -4)
  done
done
