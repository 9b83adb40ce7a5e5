"""Render the performance tables of docs/PERFORMANCE.md and the README's performance rows from the records of
benchmarks/perf_suite.py (docs/results/perf/headline/NAME.json). Every number and every target verdict here is read
from those records; nothing is typed. Called by benchmarks/render_reports.py (blocks `perf-headline`, `readme-perf`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from perf_suite import SUITE

# Targets the project set itself (PERFORMANCE.md has their history).
PEAK_TARGET = 0.60  # vanilla training >= 60 % of the measured fp32 matmul peak
HF_TARGET = 0.95  # vanilla training >= 0.95x the throughput of transformers' LlamaForCausalLM
IDEAL_TARGET = 0.90  # early-exit decoding >= 0.9x the ideal speedup (1 + K) / (1 + avg executed steps)
PARALLEL_EVAL_TARGET = 5.0  # parallel thresholded evaluation >= 5x faster than sequential decoding


def load(folder: Path) -> dict[str, dict]:
    """name -> record, for every suite benchmark recorded in `folder`."""
    return {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            for name in SUITE if (folder / f"{name}.json").is_file()}


def _n(x: float) -> str:
    """Three significant digits, thousands separated."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _provenance(rec: dict) -> str:
    return (f"`{rec['command']}` ({rec['header']}); {rec['date']}, commit {rec['commit']}, torch {rec['torch']}, "
            f"{rec['cpu_count']} CPU cores, 1-minute load {rec['load_start']:.1f} before / {rec['load_end']:.1f} "
            "after.")


def _missing(name: str) -> str:
    return f"Not measured yet: `python benchmarks/perf_suite.py run --only {name}`.\n"


def _field(rec: dict, key: str) -> str:
    """A `key=value` setting from the benchmark's header line ("?" when it does not print one)."""
    found = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", rec["header"])
    return found.group(1) if found else "?"


def _shape(rec: dict) -> str:
    layers = _field(rec, "L")
    return f"d={_field(rec, 'd')}, {layers} layer{'' if layers == '1' else 's'}"


def _peak(rec: dict) -> float:
    found = re.search(r"matmul peak ([\d.]+) GFLOP/s", rec["header"])
    return float(found.group(1)) if found else float("nan")


def train_md(rec: dict) -> str:
    rows = {r["model"]: r for r in rec["rows"]}
    lines = [f"| model | s/step | tokens/s | GFLOP/step | GFLOP/s | of matmul peak ({_peak(rec):.1f} GFLOP/s) | "
             "time vs vanilla |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        label = "transformers `LlamaForCausalLM`" if name == "transformers Llama" else name
        lines.append(f"| {label} | {_n(r['s/step'])} | {_n(r['tok/s'])} | {_n(r['GFLOP/step'])} | {_n(r['GFLOP/s'])} "
                     f"| {r['of peak']:.2f} | {r['x vanilla time']:.2f} |")
    vanilla = rows["vanilla"]
    lines += ["", f"- Target \"vanilla >= {PEAK_TARGET:.0%} of the matmul peak\": "
              f"{_met(vanilla['of peak'] >= PEAK_TARGET)} ({vanilla['of peak']:.0%})."]
    if "transformers Llama" in rows:
        ratio = vanilla["tok/s"] / rows["transformers Llama"]["tok/s"]
        lines.append(f"- Target \"vanilla >= {HF_TARGET}x transformers' Llama throughput\": {_met(ratio >= HF_TARGET)} "
                     f"({ratio:.2f}x).")
    if "ponderlm2" in rows and "ponderlm3" in rows:
        lines.append(f"- PonderLM-3 vs PonderLM-2 at equal FLOPs: "
                     f"{rows['ponderlm3']['s/step'] / rows['ponderlm2']['s/step']:.2f}x the time per step.")
    return "\n".join(lines) + "\n"


def decode_rows(rec: dict) -> list[dict]:
    """The two decode benchmarks' rows in one shape: `ponderlm bench decode` and bench_adaponder_decode.py."""
    method = "AdaPonderLM" if "adaponder" in rec["name"] else "PonderLM-3"
    out = []
    for r in rec["rows"]:
        if "schedule" in r:  # ponderlm bench decode
            out.append({"method": method, "batch": r["batch"], "schedule": r["schedule"], "avg": r["avg_steps"],
                        "calls": r["calls"], "full calls": r["full calls"], "tok/s": r["tok/s"],
                        "full tok/s": r["full tok/s"], "speedup": r["speedup"], "ideal": r["ideal"],
                        "kv": r["kv_MB"], "full kv": r["full kv_MB"]})
        else:  # bench_adaponder_decode.py: batch is B or "B rows"
            batch, _, rows = str(r["batch"]).partition(" ")
            out.append({"method": method, "batch": int(batch), "schedule": "rows" if rows else "lockstep",
                        "avg": r["avg steps"], "calls": r["calls"], "full calls": r["calls full"],
                        "tok/s": r["adaptive tok/s"], "full tok/s": r["full tok/s"], "speedup": r["speedup"],
                        "ideal": r["ideal"], "kv": r["KV MiB"], "full kv": r["KV MiB full"]})
    return out


def decode_md(records: list[dict]) -> str:
    lines = ["| method | batch | schedule | avg steps | calls / full calls | tok/s adaptive / full | speedup | ideal | "
             "speedup / ideal | KV MiB adaptive / full |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        for r in decode_rows(rec):
            ratio = r["speedup"] / r["ideal"]
            bold = "**" if ratio >= IDEAL_TARGET else ""
            lines.append(f"| {r['method']} | {r['batch']} | {'-' if r['batch'] == 1 else r['schedule']} | "
                         f"{r['avg']:.2f} | {r['calls']} / {r['full calls']} | {_n(r['tok/s'])} / "
                         f"{_n(r['full tok/s'])} | {r['speedup']:.2f} | {r['ideal']:.2f} | {bold}{ratio:.2f}{bold} | "
                         f"{_n(r['kv'])} / {_n(r['full kv'])} |")
    return "\n".join(lines) + "\n"


def prefill_md(rec: dict) -> str:
    by_method: dict[str, dict[int, dict]] = {}
    for r in rec["rows"]:
        by_method.setdefault(r["method"], {})[r["batch"]] = r
    batches = sorted({r["batch"] for r in rec["rows"]})
    head = " | ".join(f"batch {b}: token-by-token / parallel tok/s | speedup" for b in batches)
    lines = [f"| method | {head} |",
             "|---|" + "---|---|" * len(batches)]
    for method, rows in by_method.items():
        cells = []
        for b in batches:
            r = rows.get(b)
            cells += ([f"{_n(r['token-by-token tok/s'])} / {_n(r['parallel tok/s'])}", f"{r['speedup']:.1f}x"]
                      if r else ["-", "-"])
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parallel_eval_md(rec: dict) -> str:
    rows = {r["path"]: r for r in rec["rows"]}
    par, seq = rows["parallel"], rows["sequential"]
    return ("| path | seconds | ppl | avg executed steps |\n|---|---|---|---|\n"
            + "".join(f"| {name} | {r['seconds']:.3g} | {_n(r['ppl'])} | {r['avg steps']:.2f} |\n"
                      for name, r in (("parallel", par), ("sequential", seq)))
            + f"\n{_field(rec, 'sweeps')} Jacobi sweeps, T={_field(rec, 'T')}, B={_field(rec, 'B')}, tau "
            f"{_field(rec, 'tau')}: speedup {par['speedup']:.2f}x, max |NLL difference| {par['max NLL diff']:.1e}. "
            f"Target >= {PARALLEL_EVAL_TARGET:g}x: {_met(par['speedup'] >= PARALLEL_EVAL_TARGET)}.\n")


def headline_md(folder: Path) -> str:
    """PERFORMANCE.md's generated section: every suite benchmark's table, its targets and where it came from."""
    recs = load(folder)
    parts = ["Generated by `python benchmarks/render_reports.py` from the records of `python benchmarks/perf_suite.py "
             "run` (docs/results/perf/headline/); each benchmark times its variants side by side, interleaved, "
             "medians. Compare ratios within a table, not absolute numbers across machines. The suite runs its "
             "benchmarks one after another on 2 threads, so the 1-minute load before each one includes the previous "
             "one's (about 2 on 2 cores); a load well above that means other work ran beside it.", ""]

    def shape(name: str) -> str:
        return f" ({_shape(recs[name])})" if name in recs else ""

    sections = [(f"Training throughput vs the hardware and vs transformers{shape('train')}", ["train"], train_md),
                (f"Early-exit decoding, lockstep and continuous batching{shape('decode-ponderlm3')}",
                 ["decode-ponderlm3", "decode-adaponder"], None),
                (f"Early-exit decoding, larger model{shape('decode-ponderlm3-large')}",
                 ["decode-ponderlm3-large", "decode-adaponder-large"], None),
                (f"Parallel prompt prefill vs token by token{shape('prefill')}", ["prefill"], prefill_md),
                (f"Parallel thresholded evaluation vs sequential decoding{shape('parallel-eval')}", ["parallel-eval"],
                 parallel_eval_md)]
    for title, names, render in sections:
        parts += [f"### {title}", ""]
        have = [recs[n] for n in names if n in recs]
        parts += [f"{recs[n]['what'][0].upper() + recs[n]['what'][1:]}: " + _provenance(recs[n])
                  for n in names if n in recs]
        parts += [_missing(n).rstrip("\n") for n in names if n not in recs]
        if have:
            parts += ["", render(have[0]) if render else decode_md(have)]
            if render is None:
                parts += [f"Target: speedup >= {IDEAL_TARGET} x ideal (bold where met); ideal = (1 + full-depth steps) "
                          "/ (1 + avg executed steps); \"rows\" = continuous batching, \"lockstep\" = every row runs a "
                          "step whenever any row needs it.", ""]
        else:
            parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def _decode(recs: dict[str, dict], name: str, batch: int, schedule: str) -> dict | None:
    if name not in recs:
        return None
    return next((r for r in decode_rows(recs[name]) if r["batch"] == batch
                 and (batch == 1 or r["schedule"] == schedule)), None)


def readme_md(folder: Path) -> str:
    """The README's performance rows and their summary sentence."""
    recs = load(folder)
    if not recs:
        return "Not measured yet: `python benchmarks/perf_suite.py run` on a quiet machine.\n"
    link = "[PERFORMANCE.md](docs/PERFORMANCE.md)"
    lines = ["| what | result | details |", "|---|---|---|"]
    if "train" in recs:
        rows = {r["model"]: r for r in recs["train"]["rows"]}
        v = rows["vanilla"]
        hf = (f"{v['tok/s'] / rows['transformers Llama']['tok/s']:.2f}x its throughput, "
              if "transformers Llama" in rows else "")
        lines.append(f"| vanilla training vs transformers' `LlamaForCausalLM` ({_shape(recs['train'])}) | "
                     f"{hf}{v['of peak']:.0%} of the measured fp32 matmul peak | {link} |")
    one = _decode(recs, "decode-ponderlm3", 1, "lockstep")
    if one:
        lines.append(f"| PonderLM-3 early-exit decode, batch 1 | {one['speedup']:.2f}x faster than full depth (ideal "
                     f"{one['ideal']:.2f}x) | {link} |")
    one, many = _decode(recs, "decode-adaponder", 1, "lockstep"), _decode(recs, "decode-adaponder", 32, "rows")
    if one and many:
        lines.append("| AdaPonderLM early-exit decode, batch 1 / batch 32 (continuous batching) | "
                     f"{one['speedup']:.2f}x (ideal {one['ideal']:.2f}x) / {many['speedup']:.2f}x (ideal "
                     f"{many['ideal']:.2f}x) | {link} |")
    if "prefill" in recs:
        ups = [r["speedup"] for r in recs["prefill"]["rows"] if r["batch"] == 1]
        prompt = recs["prefill"]["rows"][0]["prompt"]
        span = f"{min(ups):.0f}x" if f"{min(ups):.0f}" == f"{max(ups):.0f}" else f"{min(ups):.0f}-{max(ups):.0f}x"
        lines.append(f"| parallel prompt prefill vs token by token (batch 1, {prompt} tokens, {len(ups)} methods) | "
                     f"{span} faster, identical decode state (tested) | {link} |")
    lines.append("| parallel (Jacobi) vs token-by-token paths | equal logits (atol 1e-4) for every method, tested | "
                 "`tests/` |")
    notes = []
    p8, a8 = _decode(recs, "decode-ponderlm3-large", 8, "rows"), _decode(recs, "decode-adaponder-large", 8, "rows")
    if p8 and a8:
        notes.append("Batched early exit uses continuous batching (every call advances each row by one slot of its "
                     f"own token): at batch 8 it reaches {p8['speedup'] / p8['ideal']:.2f}x (PonderLM-3) and "
                     f"{a8['speedup'] / a8['ideal']:.2f}x (AdaPonderLM) of the ideal speedup at "
                     f"{_shape(recs['decode-ponderlm3-large'])} (target {IDEAL_TARGET}x).")
    if "parallel-eval" in recs:
        par = next(r for r in recs["parallel-eval"]["rows"] if r["path"] == "parallel")
        notes.append(f"Parallel thresholded evaluation is {par['speedup']:.1f}x faster than sequential decoding at "
                     f"{_field(recs['parallel-eval'], 'sweeps')} Jacobi sweeps (target {PARALLEL_EVAL_TARGET:g}x: "
                     f"{_met(par['speedup'] >= PARALLEL_EVAL_TARGET)}).")
    dates = sorted(r["date"][:10] for r in recs.values())
    loads = [r["load_start"] for r in recs.values()]
    notes.append(f"Measured by `python benchmarks/perf_suite.py run` ({dates[0]}"
                 f"{'' if dates[0] == dates[-1] else ' to ' + dates[-1]}, 1-minute load {min(loads):.1f}-"
                 f"{max(loads):.1f} before each benchmark, the suite's own previous benchmark included).")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
