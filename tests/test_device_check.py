"""`benchmarks/device_check.py --smoke`: the GPU check's code paths at tiny sizes on CPU, so it cannot rot before a
GPU runs it (issue 29)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ponderlm.registry import method_names

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.py"


def test_smoke_runs_every_part_and_every_method(tmp_path, one_thread, capsys):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--out", str(tmp_path / "smoke.json")]) == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["dtype"] == "float32" and report["device"] == "cpu" and report["all_parity_pass"]
    # Parity covers every registered method, within the fp32 tolerance, with the same executed steps.
    assert [r["method"] for r in report["parity"] if r["depth"] == "learned"] == list(method_names())
    pruned = [r for r in report["parity"] if r["depth"] == "uniform"]
    assert {r["method"] for r in pruned} == set(method_names(adaptive=True))
    assert all(r["avg_steps"] < 2 for r in pruned)  # slots really skipped (K = 2, mean depth 1)
    assert all(r["max_abs_diff"] <= 1e-3 and r["steps_agree"] == 1.0 for r in report["parity"])
    assert {r["model"] for r in report["throughput"]} == {"vanilla", "ponderlm2", "transformers Llama"}
    assert all(r["tok/s"] > 0 and 0 < r["MFU"] for r in report["throughput"])
    # Early exit: fixed pruning really executes fewer steps than full depth (K = 3), at both batch sizes.
    assert {(r["method"], r["batch"]) for r in report["early_exit"]} >= {("ponderlm3", 1), ("ponderlm3", 4)}
    assert all(r["avg_steps"] < 3 and r["ideal"] > 1 for r in report["early_exit"])
    run = report["short_run"]
    assert run["vanilla"]["steps"] == run["ponderlm2"]["steps"] > 0
    assert "parallel == sequential" in capsys.readouterr().out
