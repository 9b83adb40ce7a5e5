"""One-script accelerator check (issue 29): everything a first GPU session should measure, in about 8 minutes.

  python benchmarks/device_check.py --out device_check.json        # an H100-class GPU, bf16
  python benchmarks/device_check.py --smoke --out smoke.json       # the same code paths, tiny, CPU fp32

Four parts, each timed round-robin where it compares (ponderlm.benchmarking.interleaved_medians):

1. parity: every registered method, the parallel (training / eval) forward against the token-by-token KV-cached
   decode (`sequential_logits`), Jacobi methods with enough sweeps to converge; adaptive methods also under
   fixed pruning (real skipped slots). Pass if the max |logit
   difference| is within the dtype's tolerance (TOLERANCE below) on tokens whose executed steps agree, and
   the steps agree on at least 99% of tokens (a halting decision next to tau may flip in bf16).
2. training throughput: tokens/s and model FLOPs utilisation (ponderlm.flops `training` FLOPs per token over
   the accelerator's dense bf16 peak) of vanilla and PonderLM-2 next to transformers' `LlamaForCausalLM` of the
   same shape, one AdamW step each.
3. early-exit decode: `generate` of an adaptive method with content-independent depths (fixed pruning, mean
   depth K/3) against full depth, batch 1 and 32: the measured speedup next to the ideal (1+K)/(1+mean steps).
4. a short training run: vanilla and PonderLM-2 (K=1) at about 25M parameters on the bundled corpus, the same
   steps and batches for both (PonderLM-2 first, for a wall budget), validation loss of each.

Writes one JSON (every number and the settings) and prints a short table per part.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table, setup_threads  # noqa: E402

from ponderlm.benchmarking import matmul_peak_flops, synthetic_model  # noqa: E402
from ponderlm.flops import flops  # noqa: E402
from ponderlm.inference import sequential_logits  # noqa: E402
from ponderlm.inference.sequential import decode_options  # noqa: E402
from ponderlm.registry import method_names  # noqa: E402

# Max |parallel - sequential| logit difference (logits of these random models are O(1-10)). fp32 is exact up to
# summation order; bf16 keeps 8 mantissa bits, and the two paths round at different places (one pass over the
# whole grid vs one slot at a time), which over a few layers gives a few tenths on the largest logits.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25}
STEPS_AGREE = 0.99
# Dense bf16 tensor-core peak per device (vendor datasheets, SXM parts); others use the measured matmul peak.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

FULL = dict(hidden=512, layers=8, vocab=4096, parity_len=96, train_hidden=1024, train_layers=8, train_seq=1024,
            train_batch=8, decode_hidden=1024, decode_layers=8, decode_new=48, decode_batches=[1, 32],
            run_hidden=512, run_layers=6, run_seq=256, run_batch=32, run_budget_s=150.0, repeats=5, decode_repeats=3)
SMOKE = dict(hidden=64, layers=2, vocab=4096, parity_len=12, train_hidden=64, train_layers=2, train_seq=32,
             train_batch=2, decode_hidden=64, decode_layers=2, decode_new=6, decode_batches=[1, 4],
             run_hidden=64, run_layers=2, run_seq=32, run_batch=4, run_budget_s=3.0, repeats=2, decode_repeats=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in BF16_PEAK.items():
            if key in name and dtype == torch.bfloat16:
                return peak, f"{name} dense bf16 datasheet"
        a = torch.randn(8192, 8192, device=device, dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        _sync(device)
        return 10 * 2 * 8192**3 / (time.perf_counter() - start), f"{name} measured {dtype} matmul"
    return matmul_peak_flops(), "CPU measured fp32 matmul"


# ------------------------------------------------------------------------------------------------ 1. parity
def parity(s: dict, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Every method at its learned depth, and every adaptive one also under fixed pruning (uniform depths of mean
    1 of K = 2): pruned slots are removed from the parallel solve and never computed by the decode."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for method in method_names():
        model = synthetic_model(method, s["hidden"], s["layers"], 2, s["vocab"]).to(device=device, dtype=dtype).eval()
        ids = torch.randint(0, s["vocab"], (2, s["parity_len"]), generator=gen).to(device)
        sweeps = s["parity_len"] * (model.config.num_slots_per_token)  # the slot dependency chain: converged
        policies = [{}] + ([{"depth_policy": "uniform", "depth_target": 1.0}] if model.config.method_class.adaptive
                           else [])
        for policy in policies:
            with torch.no_grad():
                out = model(ids, decode_options=decode_options(model, jacobi_iters_eval=sweeps, **policy))
            seq, seq_steps = sequential_logits(model, ids, **policy)
            same = out.executed_steps == seq_steps
            diff = (out.logits.float() - seq.float()).abs().amax(-1)[same]
            worst = float(diff.max()) if diff.numel() else float("nan")
            agree = float(same.float().mean())
            tol = TOLERANCE[dtype]
            rows.append({"method": method, "depth": policy.get("depth_policy", "learned"), "max_abs_diff": worst,
                         "tolerance": tol, "steps_agree": agree, "avg_steps": float(seq_steps.float().mean()),
                         "max_logit": float(out.logits.float().abs().max()),
                         "pass": bool(worst <= tol and agree >= STEPS_AGREE)})
    return rows


# ------------------------------------------------------------------------------------- 2. training throughput
def throughput(s: dict, device: torch.device, dtype: torch.dtype) -> tuple[list[dict[str, Any]], dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, seq, batch = s["train_hidden"], s["train_layers"], s["train_seq"], s["train_batch"]
    models = {m: synthetic_model(m, hidden, layers, 1, s["vocab"], max_position_embeddings=seq)
              for m in ("vanilla", "ponderlm2")}
    c = models["vanilla"].config
    models["transformers Llama"] = LlamaForCausalLM(LlamaConfig(
        vocab_size=s["vocab"], hidden_size=hidden, intermediate_size=c.intermediate_size, num_hidden_layers=layers,
        num_attention_heads=c.num_attention_heads, max_position_embeddings=seq, attn_implementation="sdpa"))
    ids = torch.randint(0, s["vocab"], (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    fns = {}
    for name, model in models.items():
        model.to(device=device, dtype=dtype).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            _sync(device)
        fns[name] = step
    times = interleaved_medians(fns, repeats=s["repeats"], warmup=2)
    peak, peak_source = _peak(device, dtype)
    rows = []
    for name, seconds in times.items():
        config = models["vanilla"].config if name == "transformers Llama" else models[name].config
        per_token = flops(config, seq, training=True)["training"]
        rows.append({"model": name, "tok/s": batch * seq / seconds, "s/step": seconds,
                     "MFU": per_token * batch * seq / seconds / peak,
                     "x transformers time": seconds / times["transformers Llama"]})
    return rows, {"peak_flops": peak, "peak_source": peak_source, "hidden": hidden, "layers": layers,
                  "seq_len": seq, "batch": batch}


# ------------------------------------------------------------------------------------- 3. early-exit decode
def early_exit(s: dict, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    rows = []
    k = 3
    for method in ("ponderlm3", "adaponder", "latent_cot"):
        model = synthetic_model(method, s["decode_hidden"], s["decode_layers"], k, s["vocab"]).to(device, dtype)
        model.eval()
        for batch in s["decode_batches"]:
            prompt = torch.randint(0, s["vocab"], (batch, 16), generator=torch.Generator().manual_seed(2)).to(device)
            results: dict[str, Any] = {}

            def run(name: str, options: dict, prompt=prompt, results=results, model=model) -> Any:
                def fn() -> None:
                    out = model.generate(prompt, max_new_tokens=s["decode_new"], do_sample=False,
                                         min_new_tokens=s["decode_new"], return_dict_in_generate=True, **options)
                    _sync(device)
                    results[name] = float(out.executed_steps[:, prompt.shape[1]:].float().mean())
                return fn

            fns = {"pruned": run("pruned", dict(depth_policy="uniform", depth_target=k / 3)),
                   "full": run("full", dict(depth_policy="constant", depth_target=float(k)))}
            times = interleaved_medians(fns, repeats=s["decode_repeats"], warmup=1)
            ideal = (1 + results["full"]) / (1 + results["pruned"])
            speedup = times["full"] / times["pruned"]
            rows.append({"method": method, "batch": batch, "avg_steps": results["pruned"],
                         "tok/s": batch * s["decode_new"] / times["pruned"], "speedup": speedup, "ideal": ideal,
                         "speedup/ideal": speedup / ideal})
    return rows


# ------------------------------------------------------------------------------------- 4. short training run
def short_run(s: dict, device: torch.device, dtype: torch.dtype, data_dir: Path | None, smoke: bool) -> dict:
    from ponderlm.data.loader import TokenStream
    from ponderlm.data.prepare import prepare_data

    scratch = Path(tempfile.mkdtemp(prefix="device_check_"))
    if data_dir is None:
        data_dir = scratch / "data"
        if smoke:  # a few paragraphs through the same pipeline (the bundled corpus takes a minute on a CPU)
            words = "the cat sat on a mat while a dog ran to the red door and a bird sang over the hill".split()
            text = "\n\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(60))
            (scratch / "corpus.txt").write_text(text)
            prepare_data([str(scratch / "corpus.txt")], "default", data_dir, val_fraction=0.2, num_proc=1,
                         progress=False)
        else:
            prepare_data(["default"], "default", data_dir, progress=False)
    train, val = TokenStream(data_dir, "train"), TokenStream(data_dir, "val")
    seq, batch = s["run_seq"], s["run_batch"]
    val_ids = torch.stack([torch.from_numpy(val.read(i * (seq + 1), seq + 1)) for i in
                           range(min(16, val.num_windows(seq + 1)))]).to(device)
    result: dict[str, Any] = {"seq_len": seq, "batch": batch, "data": str(data_dir)}
    steps = None
    for method in ("ponderlm2", "vanilla"):  # PonderLM-2 first: it fixes the step count within the budget
        model = synthetic_model(method, s["run_hidden"], s["run_layers"], 1, train.meta["vocab_size"],
                                max_position_embeddings=seq + 1).to(device).train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        gen = torch.Generator().manual_seed(3)  # the same batches for both methods
        start, done = time.perf_counter(), 0
        while (steps is None and time.perf_counter() - start < s["run_budget_s"]) or (steps is not None and
                                                                                         done < steps):
            starts = torch.randint(0, train.num_tokens - seq - 1, (batch,), generator=gen).tolist()
            ids = torch.stack([torch.from_numpy(train.read(i, seq + 1)) for i in starts]).to(device)
            for group in opt.param_groups:  # 20-step linear warm-up
                group["lr"] = 1e-3 * min(1.0, (done + 1) / 20)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
        _sync(device)
        seconds = time.perf_counter() - start
        steps = done
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model.eval()
            val_loss = float(model(input_ids=val_ids, labels=val_ids).loss)
        result[method] = {"params": params, "steps": done, "tokens": done * batch * seq, "seconds": seconds,
                          "val_loss": val_loss, "val_ppl": math.exp(val_loss)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU in fp32 (the suite runs this)")
    parser.add_argument("--out", default="device_check.json", help="JSON output path")
    parser.add_argument("--device", default=None, help="default: cuda if available (not with --smoke), else cpu")
    parser.add_argument("--data", default=None, help="a prepared data directory for part 4 (default: the bundled "
                        "corpus, prepared into a temporary directory)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    s = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    dtype = torch.float32 if args.smoke or device.type == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    report: dict[str, Any] = {"smoke": args.smoke, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                              "torch": torch.__version__, "python": platform.python_version(),
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                              "settings": s, "tolerance": TOLERANCE[dtype], "steps_agree_min": STEPS_AGREE}
    parts = {}
    for name, fn in (("parity", lambda: parity(s, device, dtype)),
                     ("throughput", lambda: throughput(s, device, dtype)),
                     ("early_exit", lambda: early_exit(s, device, dtype)),
                     ("short_run", lambda: short_run(s, device, dtype, Path(args.data) if args.data else None,
                                                     args.smoke))):
        start = time.perf_counter()
        parts[name] = fn()
        report[f"{name}_seconds"] = time.perf_counter() - start
    rows, info = parts["throughput"]
    report.update(parity=parts["parity"], throughput=rows, throughput_setup=info, early_exit=parts["early_exit"],
                  short_run=parts["short_run"], seconds=time.perf_counter() - t0)
    report["all_parity_pass"] = all(r["pass"] for r in parts["parity"])
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"device {report['gpu'] or device} {report['dtype']}, {report['seconds']:.0f} s -> {args.out}\n")
    print("parallel == sequential")
    print_table(parts["parity"])
    print(f"\ntraining step (peak: {info['peak_source']}, {info['peak_flops'] / 1e9:,.0f} GFLOP/s)")
    print_table(rows)
    print("\nearly-exit decode (fixed pruning vs full depth)")
    print_table(parts["early_exit"])
    run = parts["short_run"]
    print(f"\nshort training run (seq {run['seq_len']}, batch {run['batch']}, the same batches for both)")
    print_table([{"method": m, **run[m]} for m in ("vanilla", "ponderlm2")])
    return 0 if report["all_parity_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
