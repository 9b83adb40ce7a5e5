"""Trace a PonderLM-3 (K = 1) run on the reasoning testbed checkpoint by checkpoint (docs/REASONING.md,
"Why PonderLM-3 does not use depth here").

For every checkpoint of a run (`<run>/checkpoints/step_*`, train with a small `train.save_every` and a large
`train.keep_last`) and its `final/`, the training-mode forward (soft mask, every slot, Jacobi as in training)
on the first N examples of a split, at the position that predicts each answer (the query symbol), split by
hop count:

- `s1`: the router's probability of the latent step, s_1 = w_1 (K = 1), the fusion weight of h^(1);
- `ce_fused` / `ce_h0` / `ce_h1`: answer cross entropy of the fused readout s_0 h^(0) + s_1 h^(1), and of
  each slot read alone through the LM head (h^(1) alone is what PonderLM-2 reads out);
- `acc_h0` / `acc_h1`: argmax accuracy of each slot alone;
- `dz1`: mean d CE / d (z_1 - z_0) through the fusion path only (positive = the loss pushes s_1 down);
- `s1_ctx`: mean s_1 over the context positions (the weight of the latent keys other tokens attend to).

    python benchmarks/ponderlm3_trace.py RUN_DIR --data results/reasoning-n12/data [--examples 500] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def checkpoints(run: Path) -> list[Path]:
    """Checkpoint directories in step order, then `final/` if present."""
    found = sorted((p for p in (run / "checkpoints").glob("step_*") if (p / "model.safetensors").exists()),
                   key=lambda p: int(p.name.split("_")[1]))
    if (run / "final" / "model.safetensors").exists():
        found.append(run / "final")
    return found


def trace_checkpoint(path: Path, tokens: np.ndarray, mask: np.ndarray, difficulty: np.ndarray,
                     batch_size: int = 100) -> dict[str, Any]:
    """Per-hop statistics of one checkpoint (see the module docstring)."""
    from ponderlm.modeling import PonderForCausalLM

    model = PonderForCausalLM.from_pretrained(path)
    if model.config.method != "ponderlm3" or model.config.max_steps != 1:
        raise SystemExit(f"{path}: needs a PonderLM-3 K = 1 checkpoint, got {model.config.method} "
                         f"K = {model.config.max_steps}")
    step = json.loads((path / "trainer_state.json").read_text()).get("step") \
        if (path / "trainer_state.json").exists() else None
    model.train()  # the training forward: soft log(w) mask on every latent key, no pruning
    model.set_training_progress(10**9 if step is None else step)  # `router_warmup_steps` as at that step
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("hop", "s1", "ce_fused", "ce_h0", "ce_h1", "acc_h0",
                                                          "acc_h1", "dz1")}
    ctx_s1: list[float] = []
    for i in range(0, len(tokens), batch_size):
        x = torch.from_numpy(tokens[i: i + batch_size].astype(np.int64))
        m, diff = mask[i: i + batch_size], difficulty[i: i + batch_size]
        with torch.no_grad():
            out = model.method(model.backbone, x, torch.ones_like(x), None)
        slots = out.stats["slot_hidden"].detach()  # [B, T, 2, D], post-norm
        s = out.stats["step_probs"].detach()  # [B, T, 2]
        ex, pos = np.nonzero(m)
        q = pos - 1  # the position that predicts the answer
        target = x[ex, pos]
        h = slots[ex, q]  # [N, 2, D]
        sq = s[ex, q].clone().requires_grad_(True)
        fused = (sq[..., None] * h).sum(-2)
        ce = F.cross_entropy(model.lm_head(fused), target, reduction="none")
        (grad,) = torch.autograd.grad(ce.sum(), sq)
        with torch.no_grad():
            # dCE/d(z1 - z0) for a 2-way softmax: s0 s1 (dCE/ds1 - dCE/ds0)
            dz1 = sq[:, 0] * sq[:, 1] * (grad[:, 1] - grad[:, 0])
            logits0, logits1 = model.lm_head(h[:, 0]), model.lm_head(h[:, 1])
            rows["hop"].append(diff[ex, pos])
            rows["s1"].append(sq[:, 1].numpy())
            rows["ce_fused"].append(ce.detach().numpy())
            rows["ce_h0"].append(F.cross_entropy(logits0, target, reduction="none").numpy())
            rows["ce_h1"].append(F.cross_entropy(logits1, target, reduction="none").numpy())
            rows["acc_h0"].append((logits0.argmax(-1) == target).float().numpy())
            rows["acc_h1"].append((logits1.argmax(-1) == target).float().numpy())
            rows["dz1"].append(dz1.numpy())
            first_query = np.argmax(m, axis=1) - 2  # the marker token of the first query
            ctx = torch.arange(x.shape[1])[None, :] < torch.from_numpy(first_query)[:, None]
            ctx_s1.append(float(s[..., 1][ctx].mean()))
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    result: dict[str, Any] = {"checkpoint": path.name, "step": step, "s1_ctx": float(np.mean(ctx_s1)), "hops": {}}
    for hop in sorted(set(cat["hop"].tolist())):
        sel = cat["hop"] == hop
        result["hops"][int(hop)] = {k: float(cat[k][sel].mean()) for k in cat if k != "hop"}
    return result


def format_row(r: dict[str, Any]) -> str:
    hops = sorted(r["hops"])
    def per(key: str, fmt: str) -> str:
        return " / ".join(format(r["hops"][h][key], fmt) for h in hops)
    return (f"| {r['step'] if r['step'] is not None else r['checkpoint']} | {per('s1', '.2f')} | {r['s1_ctx']:.2f} | "
            f"{per('ce_fused', '.2f')} | {per('ce_h0', '.2f')} | {per('ce_h1', '.2f')} | "
            f"{per('acc_h1', '.2f')} | {per('dz1', '+.3f')} |")


HEADER = ("| step | s_1 at query (1/2/3 hops) | s_1 context | CE fused | CE h0 alone | CE h1 alone | acc h1 alone "
          "| dCE/dz_1 (fusion) |\n|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=Path("results/reasoning-n12/data"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--every", type=int, default=1, help="trace every n-th checkpoint")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from ponderlm.data.synth import read_split

    data = read_split(args.data, args.split, args.examples)
    found = checkpoints(args.run)
    if not found:
        print(f"{args.run}: no checkpoints", file=sys.stderr)
        return 1
    picked = [p for i, p in enumerate(found) if i % args.every == 0 or p.name == "final"]
    print(HEADER)
    results = []
    for path in picked:
        r = trace_checkpoint(path, data.tokens, data.mask, data.difficulty)
        results.append(r)
        print(format_row(r), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"run": str(args.run), "split": args.split, "examples": len(data.tokens),
                                         "trace": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
