#!/bin/bash
# A/B: AdaPonderLM batch-8 continuous batching at d=512, 8 layers; old (16a6ad3) vs new (HEAD), alternating.
PY=/work/main/.venv/bin/python
for r in 1 2; do
  for side in old new; do
    if [ $side = old ]; then T=/work/old_perf; else T=/work/main; fi
    echo "== round $r $side load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $T/benchmarks && PYTHONPATH=$T/src:$T/benchmarks $PY bench_adaponder_decode.py --hidden 512 --layers 8 --batch 8 --repeats 3 --threads 2 2>&1 | tail -4)
  done
done
