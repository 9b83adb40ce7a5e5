"""Train a small PonderLM-3 with the Python API: the packaged quickstart recipe, made smaller with overrides.

    python examples/train_tiny.py --out runs/example-tiny                # bundled corpus, a few minutes on CPU
    python examples/train_tiny.py --out runs/t --steps 5 --text my.txt   # your own text file, seconds

The run directory gets checkpoints, metrics.jsonl and `final/`, a Hugging Face checkpoint with its tokenizer
that the other examples (and `ponderlm generate / eval`) load. The same run from the command line:
`ponderlm train --recipe quickstart model.hidden_size=64 ...`.
"""

from __future__ import annotations

import argparse

from ponderlm.train import load_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory (must be new or a previous run of this script)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--hidden", type=int, default=64, help="model width (default 64)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per training sequence (default 64)")
    p.add_argument("--text", nargs="+", help="train on these text files instead of the bundled corpus")
    args = p.parse_args()

    overrides = [
        f"model.hidden_size={args.hidden}", f"model.num_hidden_layers={args.layers}",
        "model.num_attention_heads=2", f"model.max_position_embeddings={max(args.seq_len, 64)}",
        f"data.seq_len={args.seq_len}",
        f"train.steps={args.steps}", "train.batch_size=4", "train.device=cpu",
        f"train.eval_every={args.steps}", "train.eval_batches=4", f"train.save_every={args.steps}",
        "train.sample_tokens=16", f"train.out={args.out}", "log.tensorboard=false",
    ]
    if args.text:
        overrides.append("data.inputs=[" + ",".join(args.text) + "]")
    cfg = load_config(recipe="quickstart", overrides=overrides)  # PonderLM-3, K = 1, a learned router
    result = train(cfg)
    print(f"trained {result.step} steps: val ppl {result.val_ppl:.2f} (unigram {result.unigram_ppl:.2f}), "
          f"{result.executed_steps:.2f} latent steps per token on average")
    print(f"checkpoint: {result.out_dir / 'final'}")


if __name__ == "__main__":
    main()
