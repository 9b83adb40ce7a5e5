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
        description="Tokenize text files, jsonl/parquet files, directories, a `datasets` save_to_disk directory, "
        "the bundled corpus ('default') or a Hugging Face dataset name into train_*.bin / val_*.bin shards and "
        "meta.json.",
    )
    p.add_argument("--input", action="append", metavar="PATH_OR_DATASET",
                   help="input file, directory (incl. a datasets save_to_disk directory), 'default' or dataset "
                        "name; repeatable (default: default)")
    p.add_argument("--text-column", default="text", metavar="NAME",
                   help="field / column holding the text in jsonl, parquet and dataset inputs (default: text)")
    p.add_argument("--tokenizer", default="default", metavar="DIR", help="tokenizer directory or hub name")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    p.add_argument("--num-proc", type=int, default=None, metavar="N", help="tokenizer processes (default: cores, <= 8)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="fraction of documents held out from inputs without their own split (default 0.05)")
    p.add_argument("--dtype", default="auto", choices=["auto", "uint16", "uint32"], help="token storage type")
    p.add_argument("--shard-tokens", type=int, default=None, metavar="N", help="tokens per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_prepare)

    _register_synth(data_sub)

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
        text_column=args.text_column,
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
    out = train_tokenizer(args.input or ["default"], args.vocab_size, args.out, min_frequency=args.min_frequency,
                          allow_texts=False)
    from tokenizers import Tokenizer

    # The trainer stops early when the corpus has no more pairs to merge: report the size it really has.
    size = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    short = f" (asked for {args.vocab_size}: the input has no more pairs to merge at --min-frequency " \
            f"{args.min_frequency})" if size < args.vocab_size else ""
    print(f"wrote tokenizer with vocab {size}{short} to {out} in {time.time() - t0:.1f}s")
    return 0


def _number_list(parse, what: str):
    """An argparse type: comma-separated numbers (each read by `parse`) as a tuple."""
    def convert(text: str) -> tuple:
        try:
            return tuple(parse(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return convert


def _register_synth(data_sub) -> None:
    p = data_sub.add_parser(
        "synth",
        help="controlled reasoning sets with per-token difficulty (hops, chains)",
        description="Write a synthetic reasoning set in the prepared-data format (token shards, meta.json, "
        "tokenizer/) plus a loss mask (answers only) and the true difficulty of every answer token. Splits "
        "train / val / test never share a permutation (hops) or chain set (chains). See docs/REASONING.md.",
    )
    p.add_argument("--task", required=True, choices=["hops", "chains"],
                   help="hops: k-hop pointer chasing, k marked in the query; chains: variable dereference chains")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    p.add_argument("--symbols", type=int, default=8, metavar="N",
                   help="hops: permutation size; chains: number of constant values (default 8)")
    p.add_argument("--hops", type=_number_list(int, "integers"), default=(1, 2, 3, 4), metavar="LIST",
                   help="hop counts (hops) or chain depths (chains) drawn per query (default 1,2,3,4)")
    p.add_argument("--hop-weights", type=_number_list(float, "numbers"), metavar="LIST",
                   help="relative frequency of each --hops entry (default uniform)")
    p.add_argument("--queries", type=int, metavar="N", help="queries per example (default hops 7, chains 4)")
    p.add_argument("--perm", default="cycle", choices=["cycle", "any"],
                   help="hops: single n-cycle (exact hop counts, default) or any permutation")
    p.add_argument("--example-len", type=int, metavar="N",
                   help="tokens per example incl. eos padding (default: next power of two of what is needed)")
    for split, n in (("train", 20000), ("val", 500), ("test", 2000)):
        p.add_argument(f"--{split}", type=int, default=n, metavar="N", help=f"{split} examples (default {n})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (splits do not depend on it)")
    p.add_argument("--no-hop-marker", action="store_true",
                   help="hops: queries carry no hop count; some symbols are stops (edge token `s3>s5*`) and a query "
                        "asks for the first stop after its symbol, the hop count being the recorded difficulty")
    p.add_argument("--distractors", type=int, default=0, metavar="N",
                   help="chains: N extra chains in the context, never queried unless --queries-with-replacement "
                        "(default 0)")
    p.add_argument("--constants", default="iid", choices=["iid", "distinct", "shared"],
                   help="chains: each chain's constant drawn independently (iid, default), all different within an "
                        "example (distinct), or each one held by exactly two chains (shared)")
    p.add_argument("--queries-with-replacement", action="store_true",
                   help="chains: each query picks any chain (distractors included) at random, so a chain may be "
                        "asked twice (at another depth) or never; default: each of --queries chains asked once")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ponderlm.data.synth import SynthOptions, synthesize

    options = SynthOptions(task=args.task, symbols=args.symbols, hops=args.hops, hop_weights=args.hop_weights,
                           queries=args.queries, perm=args.perm, example_len=args.example_len,
                           train=args.train, val=args.val, test=args.test, seed=args.seed,
                           hop_marker=not args.no_hop_marker, distractors=args.distractors, constants=args.constants,
                           queries_with_replacement=args.queries_with_replacement)
    meta = synthesize(options, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    s = meta["synth"]
    splits = ", ".join(f"{split} {n:,} examples" for split, n in meta["documents"].items())
    print(f"wrote {args.out}: {s['task']}, {splits}; {s['example_len']} tokens per example, vocab "
          f"{meta['vocab_size']}; train with data.data_dir={args.out} data.seq_len={s['example_len']} "
          f"(or a multiple)")
    return 0
