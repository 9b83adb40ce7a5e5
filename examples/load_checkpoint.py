"""Load a ponderlm checkpoint two ways and check they are the same model.

    python examples/load_checkpoint.py --model runs/example-tiny/final

1. `PonderForCausalLM.from_pretrained`, with ponderlm installed.
2. `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`: plain transformers, using the code
   bundled in the checkpoint (what someone without ponderlm would run).
Both score the same text; the losses must agree.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ponderlm import PonderForCausalLM
from ponderlm.loading import resolve_model_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint directory (a run directory's final/) or run directory")
    p.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    args = p.parse_args()

    path = resolve_model_dir(args.model)  # a run directory -> its final/
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    ids = tokenizer(args.text, return_tensors="pt").input_ids

    native = PonderForCausalLM.from_pretrained(path).eval()
    remote = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    cfg = native.config
    print(f"{path}: {cfg.method}, K={cfg.max_steps}, {cfg.backbone} d={cfg.hidden_size} L={cfg.num_hidden_layers}, "
          f"{sum(t.numel() for t in native.parameters()) / 1e6:.2f}M parameters")
    with torch.no_grad():
        losses = {name: float(m(input_ids=ids, labels=ids).loss) for name, m in
                  (("ponderlm", native), ("transformers remote code", remote))}
    for name, loss in losses.items():
        print(f"{name:>26}: loss {loss:.4f}")
    if abs(losses["ponderlm"] - losses["transformers remote code"]) > 1e-4:
        raise SystemExit("the two loads disagree")
    print("both loads agree")


if __name__ == "__main__":
    main()
