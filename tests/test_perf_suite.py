"""The performance suite (benchmarks/perf_suite.py) and its generated tables (benchmarks/perf_report.py).

The benchmark scripts run here at toy sizes through the suite's own runner, so a script that stops working (an API
it calls changed) fails CI instead of waiting for the next quiet-machine measurement; timings are not asserted. The
target verdicts and README rows are checked against records whose numbers are set by hand."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
perf_suite = importlib.import_module("perf_suite")
perf_report = importlib.import_module("perf_report")

TOY = {  # every script of the suite, at a size that runs in seconds (the "-large" entries rerun two of them)
    "train": "ponderlm bench train --methods vanilla,ponderlm3 --hidden 64 --layers 1 --seq-len 16 --batch 1 "
             "--vocab 256 --max-steps 1 --repeats 1 --threads 1 --json",
    "decode-ponderlm3": "ponderlm bench decode --method ponderlm3 --hidden 64 --layers 1 --batch 1 2 --new-tokens 4 "
                        "--prompt-len 4 --repeats 1 --continuous --threads 1 --json",
    "decode-adaponder": "python benchmarks/bench_adaponder_decode.py --hidden 64 --layers 1 --batch 1 2 --tokens 8 "
                        "--repeats 1 --threads 1 --json",
    "prefill": "python benchmarks/bench_prefill.py --methods vanilla,pause,ponderlm,adaponder --hidden 64 --layers 1 "
               "--prompt 8 --batch 1 2 --repeats 1 --threads 1 --json",
    "parallel-eval": "python benchmarks/bench_parallel_eval.py --seq 16 --batch 1 --sweeps 3 --repeats 1 --threads 1 "
                     "--json",
}


@pytest.mark.slow
def test_every_suite_script_runs_and_its_tables_render(tmp_path, monkeypatch):
    suite = {name: (TOY[name], what) for name, (_, what) in perf_suite.SUITE.items() if name in TOY}
    monkeypatch.setattr(perf_suite, "SUITE", suite)
    monkeypatch.setattr(perf_report, "SUITE", suite)
    for name in suite:
        record = perf_suite.run_one(name, tmp_path)
        assert record["rows"] and record["command"] == TOY[name] and record["load_start"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in suite)  # no temp files left
    text = perf_report.headline_md(tmp_path)
    assert text.count("Not measured yet") == 2 and "(d=64, 1 layer)" in text  # only the two "-large" entries
    section = text.split("### Parallel prompt prefill")[1].split("###")[0]
    assert [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and "/" in line][1:] == [
        "| vanilla", "| pause", "| ponderlm", "| adaponder"]
    readme = perf_report.readme_md(tmp_path)
    assert "batch 1, 8 tokens, 4 methods" in readme and "PonderLM-3 early-exit decode, batch 1" in readme


def test_a_benchmark_that_prints_no_json_is_an_error():
    with pytest.raises(ValueError, match="no JSON"):
        perf_suite.parse_output("# header\n| a | b |\n")
    assert perf_suite.parse_output("# train d=8\n# more\n[{\"x\": 1}]\n") == ("train d=8 more", [{"x": 1}])


def _train_record(of_peak: float, vanilla_tok_s: float, hf_tok_s: float) -> dict:
    rows = [{"model": "vanilla", "s/step": 1.0, "tok/s": vanilla_tok_s, "GFLOP/step": 10.0, "GFLOP/s": 10.0,
             "of peak": of_peak, "x vanilla time": 1.0},
            {"model": "transformers Llama", "s/step": 1.0, "tok/s": hf_tok_s, "GFLOP/step": 10.0, "GFLOP/s": 10.0,
             "of peak": of_peak, "x vanilla time": 1.0}]
    return {"name": "train", "command": "c", "header": "train d=512 L=8 fp32 matmul peak 100.0 GFLOP/s", "rows": rows,
            "date": "2026-12-08 00:00 UTC", "commit": "x", "torch": "t", "cpu_count": 2, "load_start": 0.5,
            "load_end": 0.6}


@pytest.mark.parametrize(("of_peak", "vanilla", "hf", "peak_verdict", "hf_verdict"), [
    (0.82, 888.0, 880.0, "met (82%)", "met (1.01x)"),
    (0.59, 800.0, 900.0, "**not met** (59%)", "**not met** (0.89x)"),
])
def test_training_targets_are_judged_from_the_record(of_peak, vanilla, hf, peak_verdict, hf_verdict):
    text = perf_report.train_md(_train_record(of_peak, vanilla, hf))
    assert f"matmul peak\": {peak_verdict}" in text and f"Llama throughput\": {hf_verdict}" in text
    assert "of matmul peak (100.0 GFLOP/s)" in text


def test_decode_rows_of_both_scripts_read_alike_and_the_target_is_bolded_only_when_met():
    cli = {"name": "decode-ponderlm3", "rows": [
        {"batch": 1, "schedule": "lockstep", "avg_steps": 2.0, "tok/s": 120.0, "kv_MB": 1.5, "calls": 3,
         "full calls": 4, "full tok/s": 100.0, "full kv_MB": 2.0, "speedup": 1.2, "ideal": 4 / 3}]}
    script = {"name": "decode-adaponder", "rows": [
        {"batch": "8 rows", "avg steps": 1.0, "calls": 5, "calls full": 8, "adaptive tok/s": 170.0, "full tok/s": 100.0,
         "speedup": 1.7, "ideal": 2.0, "KV MiB": 1.0, "KV MiB full": 2.0}]}
    rows = perf_report.decode_rows(cli) + perf_report.decode_rows(script)
    assert [(r["method"], r["batch"], r["schedule"]) for r in rows] == [("PonderLM-3", 1, "lockstep"),
                                                                         ("AdaPonderLM", 8, "rows")]
    table = perf_report.decode_md([cli, script])
    assert "| 1.20 | 1.33 | 0.90 |" not in table and "| **0.90** |" in table  # 1.2 / (4/3) = 0.9: met
    assert "| 1.70 | 2.00 | 0.85 |" in table  # 0.85 < 0.9: not bolded


def test_the_committed_performance_tables_come_from_committed_records():
    """Every record the generated blocks read is committed, and each was measured with the suite's own command."""
    records = perf_report.load(REPO / "docs" / "results" / "perf" / "headline")
    for name, record in records.items():
        assert record["command"] == perf_suite.SUITE[name][0], name
