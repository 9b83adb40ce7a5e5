"""`ponderlm data prepare` and `ponderlm tokenizer train`."""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare token shards for training")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    p = data_sub.add_parser(
        "prepare",
        help="tokenize text into token shards + meta.json",
        description="Tokenize text files, jsonl/parquet files, directories, the bundled corpus ('default') "
        "or a Hugging Face dataset name into train_*.bin / val_*.bin shards and meta.json.",
    )
    p.add_argument("--input", action="append", metavar="PATH_OR_DATASET",
                   help="input file, directory, 'default' or dataset name; repeatable (default: default)")
    p.add_argument("--tokenizer", default="default", metavar="DIR", help="tokenizer directory or hub name")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    p.add_argument("--num-proc", type=int, default=None, metavar="N", help="tokenizer processes (default: cores, <= 8)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="fraction of documents held out from inputs without their own split (default 0.05)")
    p.add_argument("--dtype", default="auto", choices=["auto", "uint16", "uint32"], help="token storage type")
    p.add_argument("--shard-tokens", type=int, default=None, metavar="N", help="tokens per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_prepare)

    tok = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    t = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer",
                           description="Train a byte-level BPE tokenizer and save it as a Hugging Face directory.")
    t.add_argument("--input", action="append", metavar="PATH",
                   help="text/jsonl/parquet file or directory, or 'default' (bundled corpus); repeatable")
    t.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="vocabulary size (default 4096)")
    t.add_argument("--min-frequency", type=int, default=2, metavar="N", help="minimum pair count to merge")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory")
    t.set_defaults(func=_train_tokenizer)


def _prepare(args: argparse.Namespace) -> int:
    from ponderlm.data.prepare import DEFAULT_SHARD_TOKENS, prepare_data

    meta = prepare_data(
        args.input or ["default"],
        args.tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        num_proc=args.num_proc,
        dtype=args.dtype,
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
        overwrite=args.overwrite,
    )
    total = sum(meta["tokens"].values())
    splits = ", ".join(
        f"{split} {meta['tokens'][split]:,} tokens / {meta['documents'][split]:,} docs / {len(shards)} shards"
        for split, shards in meta["shards"].items()
    )
    print(f"wrote {args.out}: {splits} ({meta['dtype']}, {total / max(meta['seconds'], 1e-9):,.0f} tokens/s)")
    if meta["invalid_utf8_replaced"] or meta["control_chars_dropped"]:
        print(f"note: replaced {meta['invalid_utf8_replaced']} invalid UTF-8 sequences with U+FFFD and dropped "
              f"{meta['control_chars_dropped']} control characters")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from ponderlm.data.tokenizer import train_tokenizer

    t0 = time.time()
    out = train_tokenizer(args.input or ["default"], args.vocab_size, args.out, min_frequency=args.min_frequency)
    print(f"wrote tokenizer with vocab {args.vocab_size} to {out} in {time.time() - t0:.1f}s")
    return 0
