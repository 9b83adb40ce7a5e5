"""Tokenize text into flat token shards: `train_000.bin`, `val_000.bin`, ... plus `meta.json`.

Shards are raw little-endian uint16 (uint32 when the vocabulary does not fit) readable with
`np.memmap`; documents are concatenated with the eos token after each one. Two streaming passes:
the first counts documents (and checks files for binary content) so the last `val_fraction` of the
documents can be held out; the second tokenizes in a process pool, in order, and appends to the
shards. Output goes to a temp dir next to `out_dir` that is renamed into place only on success.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ponderlm.data.corpus import FileStats, Source, resolve_inputs
from ponderlm.data.tokenizer import load_tokenizer, tokenizer_identity
from ponderlm.errors import PonderError

DEFAULT_VAL_FRACTION = 0.05
DEFAULT_SHARD_TOKENS = 100_000_000
_BATCH_CHARS = 1 << 20  # documents are sent to workers in batches of about this many characters
SPLITS = ("train", "val")


def resolve_dtype(dtype: str, vocab_size: int) -> np.dtype:
    """"auto" picks uint16 when every id fits, else uint32; an explicit dtype that cannot hold the ids is an error."""
    if dtype == "auto":
        return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    if dtype not in ("uint16", "uint32"):
        raise PonderError(f"dtype must be auto, uint16 or uint32, got {dtype!r}")
    if dtype == "uint16" and vocab_size > 1 << 16:
        raise PonderError(f"dtype uint16 holds ids below 65536 but the tokenizer has {vocab_size} tokens; use uint32")
    return np.dtype(dtype)


class ShardWriter:
    """Appends tokens of one split to `{split}_000.bin`, `{split}_001.bin`, ... of at most shard_tokens each."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype.newbyteorder("<"), copy=False)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._next_shard()
            take = min(len(ids), self.shard_tokens - self.shards[-1]["tokens"])
            ids[:take].tofile(self._file)
            self.shards[-1]["tokens"] += take
            self.tokens += take
            ids = ids[take:]

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._file = open(self.out_dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- tokenization workers ---------------------------------------------------------------------------

_worker_tokenizer = None


def _init_worker(tokenizer) -> None:
    """`tokenizer` is a `tokenizers.Tokenizer` as its JSON string (rebuilt here), or a slow tokenizer."""
    global _worker_tokenizer
    if isinstance(tokenizer, str):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer)
    _worker_tokenizer = tokenizer


def _encode(texts: list[str], tokenizer, eos_id: int) -> np.ndarray:
    """Token ids of a batch of documents, each followed by eos, as one int64 array."""
    if hasattr(tokenizer, "encode_batch"):  # a `tokenizers.Tokenizer`
        seqs = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    else:  # a slow `transformers` tokenizer
        seqs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for ids in seqs:
        out.extend(ids)
        out.append(eos_id)
    return np.asarray(out, dtype=np.int64)


def _encode_in_worker(args: tuple[list[str], int]) -> np.ndarray:
    return _encode(args[0], _worker_tokenizer, args[1])


def _batches(docs: Iterator[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Group consecutive same-split documents into batches of about _BATCH_CHARS characters."""
    split, texts, chars = None, [], 0
    for doc_split, text in docs:
        if texts and (doc_split != split or chars >= _BATCH_CHARS):
            yield split, texts
            texts, chars = [], 0
        split = doc_split
        texts.append(text)
        chars += len(text)
    if texts:
        yield split, texts


def _tokenize_ordered(batches, tokenizer, eos_id: int, num_proc: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (split, n_docs, ids) per batch in input order. At most 4 batches per worker are in flight, so
    memory stays bounded however large the corpus (Pool.imap would read the whole input ahead)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if num_proc <= 1:
        for split, texts in batches:
            yield split, len(texts), _encode(texts, backend or tokenizer, eos_id)
        return
    init = (backend.to_str() if backend is not None else tokenizer,)
    # Workers each get one thread: the parallelism is across processes, and tokenizers' own thread
    # pool does not survive fork.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with get_context().Pool(num_proc, initializer=_init_worker, initargs=init) as pool:
            pending: deque = deque()
            for split, texts in batches:
                pending.append((split, len(texts), pool.apply_async(_encode_in_worker, ((texts, eos_id),))))
                if len(pending) >= 4 * num_proc:
                    split0, n0, result = pending.popleft()
                    yield split0, n0, result.get()
            while pending:
                split0, n0, result = pending.popleft()
                yield split0, n0, result.get()
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


# --- the pipeline ------------------------------------------------------------------------------------


def _count_documents(sources: list[Source]) -> tuple[list[int], list[int], list[list[FileStats]]]:
    """First pass: (unsplit documents, fixed-split documents, file stats) per source; refuses binary files."""
    unsplit, fixed, stats = [], [], []
    for source in sources:
        stats.append([])
        counts = Counter(split is None for split, _ in source.documents(stats[-1]))
        unsplit.append(counts[True])
        fixed.append(counts[False])
    return unsplit, fixed, stats


def _assign_splits(sources: list[Source], n_val: int, n_unsplit: int) -> Iterator[tuple[str, str]]:
    """Second pass: (split, text) for every document; unsplit documents past n_unsplit - n_val go to val."""
    index = 0
    for source in sources:
        for split, text in source.documents():
            if split is None:
                split = "val" if index >= n_unsplit - n_val else "train"
                index += 1
            yield split, text


def make_temp_dir(out_dir: Path, overwrite: bool) -> Path:
    """A fresh temp dir beside `out_dir` to write into, after checking `out_dir` may be (over)written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PonderError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PonderError(f"output directory {out_dir} is not empty (pass --overwrite to replace it)")
    existing = next(p for p in out_dir.absolute().parents if p.exists())
    if not existing.is_dir():
        raise PonderError(f"cannot write output directory {out_dir}: {existing} is a file, not a directory")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:
        raise PonderError(f"cannot write output directory {out_dir}: {exc.strerror or exc}") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new directory
    return tmp


def publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished temp dir into place. Without overwrite this is one rename, which fails if another
    process published a non-empty out_dir meanwhile; with it, the old directory is swapped out only now."""
    old = None
    if overwrite and out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)  # replaces an empty directory, refuses a non-empty one
    except OSError as exc:
        raise PonderError(f"cannot publish {out_dir}: {exc.strerror or exc} (written concurrently?)") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_prepared(tmp: Path, out_dir: Path, overwrite: bool, tokenizer, meta: dict) -> None:
    """Finish a prepared data directory: the tokenizer beside the shards (a run directory can then be traced back
    to it) and meta.json, then move it into place."""
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    publish(tmp, out_dir, overwrite)


def _num_val(sources: list[Source], unsplit: list[int], fixed: list[int], frac: float) -> int:
    """How many of the unsplit documents to hold out; refuses an empty corpus."""
    n_unsplit = sum(unsplit)
    if n_unsplit + sum(fixed) == 0:
        raise PonderError(f"empty corpus: no documents with text in {', '.join(s.spec for s in sources)}")
    if n_unsplit == 0 or frac == 0:
        return 0
    if n_unsplit < 2:
        raise PonderError(
            "only 1 document in inputs without a split; need at least 2 to hold out validation documents "
            "(or pass val_fraction 0)"
        )
    return max(1, round(frac * n_unsplit))


def _build_meta(writers, tokenizer, tokenizer_spec, sources, unsplit, fixed, stats, frac) -> dict:
    from ponderlm.version import __version__

    inputs = []
    for source, n_unsplit, n_fixed, file_stats in zip(sources, unsplit, fixed, stats):
        entry = {**source.describe(), "documents": n_unsplit + n_fixed}
        if source.kind == "files":
            entry["files"] = [s.as_dict() for s in file_stats]
        inputs.append(entry)
    all_files = [s for per_source in stats for s in per_source]
    return {
        "format": "ponderlm-tokens-v1",
        "dtype": next(iter(writers.values())).dtype.name,
        "vocab_size": len(tokenizer),
        "eos_id": int(tokenizer.eos_token_id),
        "tokens": {split: w.tokens for split, w in writers.items()},
        "documents": {split: w.documents for split, w in writers.items()},
        "shards": {split: w.shards for split, w in writers.items()},
        "tokenizer": tokenizer_identity(tokenizer, tokenizer_spec),
        "inputs": inputs,
        "val_fraction": frac if sum(unsplit) else None,
        "val_rule": "fixed split of the input where it has one; else the last val_fraction of documents",
        "invalid_utf8_replaced": sum(s.invalid_utf8 for s in all_files),
        "control_chars_dropped": sum(s.control_chars for s in all_files),
        "ponderlm_version": __version__,
    }


def prepare_data(
    inputs: str | Path | Iterable[str | Path],
    tokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float | None = None,
    num_proc: int | None = None,
    dtype: str = "auto",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
    text_column: str = "text",
) -> dict:
    """Tokenize `inputs` into token shards + meta.json in `out_dir`; returns the meta dict.

    inputs: "default" (bundled corpus, fixed split), text/jsonl/parquet files or directories, or a
    `datasets` name. Inputs without a split of their own hold out their last `val_fraction` of
    documents (default 0.05) for validation; inputs with one (the bundled corpus, a dataset with a
    "validation" split) keep it. tokenizer: a loaded tokenizer or anything `load_tokenizer` takes.
    A directory written by `datasets`' `save_to_disk` is read as that dataset; `text_column` names the
    field / column holding the text in jsonl, parquet and dataset inputs (default "text").
    """
    from tqdm.auto import tqdm

    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise PonderError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise PonderError(f"shard_tokens must be positive, got {shard_tokens}")
    if num_proc is not None and num_proc < 1:  # not clamped: a typo like -3 must not pass as 1
        raise PonderError(f"--num-proc must be >= 1, got {num_proc}")
    num_proc = min(8, os.cpu_count() or 1) if num_proc is None else int(num_proc)
    frac = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    out_dir = Path(out_dir)
    from ponderlm.data.official import pretokenized_splits

    official = pretokenized_splits(inputs)  # the official PonderLM-2 `--tokenized_path` layout: ids, no text
    if official is not None:
        return _prepare_pretokenized(inputs, official, tokenizer, out_dir, frac, dtype, shard_tokens, overwrite)
    # Everything that can be checked without reading the data is checked before anything is written.
    sources = resolve_inputs(inputs, text_column=text_column)
    tokenizer_spec = tokenizer if isinstance(tokenizer, (str, Path)) else getattr(tokenizer, "name_or_path", "?")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    np_dtype = resolve_dtype(dtype, len(tokenizer))
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise PonderError(f"tokenizer {tokenizer_spec} has no eos token to separate documents")

    tmp = make_temp_dir(out_dir, overwrite)
    try:
        unsplit, fixed, stats = _count_documents(sources)
        n_val = _num_val(sources, unsplit, fixed, frac)
        writers = {split: ShardWriter(tmp, split, np_dtype, shard_tokens) for split in SPLITS}
        t0 = time.time()
        docs = _assign_splits(sources, n_val, sum(unsplit))
        total = sum(unsplit) + sum(fixed)
        with tqdm(total=total, unit="doc", desc="tokenizing", disable=not progress, mininterval=1.0) as bar:
            for split, n, ids in _tokenize_ordered(_batches(docs), tokenizer, eos_id, num_proc):
                writers[split].write(ids)
                writers[split].documents += n
                bar.update(n)
        for w in writers.values():
            w.close()
        seconds = time.time() - t0
        meta = _build_meta(writers, tokenizer, tokenizer_spec, sources, unsplit, fixed, stats, frac)
        publish_prepared(tmp, out_dir, overwrite, tokenizer, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["seconds"] = seconds  # not in meta.json: the file depends only on the inputs
    return meta


def _prepare_pretokenized(inputs, splits: dict[str, list[Path]], tokenizer, out_dir: Path, frac: float, dtype: str,
                          shard_tokens: int, overwrite: bool) -> dict:
    """Copy an official pre-tokenized dataset (`data/official.py`) into token shards: rows concatenated in order,
    `validation` -> val (else the last `frac` of the train rows). The tokenizer gives vocab / eos and every id is
    checked against it."""
    from ponderlm.data.official import SPLIT_NAMES, iter_rows
    from ponderlm.version import __version__

    tokenizer_spec = tokenizer if isinstance(tokenizer, (str, Path)) else getattr(tokenizer, "name_or_path", "?")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    vocab = len(tokenizer)
    np_dtype = resolve_dtype(dtype, vocab)
    hold_out = 0
    if "validation" not in splits:
        rows = sum(len(offsets) - 1 for offsets, _ in iter_rows(splits["train"]))
        hold_out = int(round(rows * frac))
    source = Path(inputs) if isinstance(inputs, (str, Path)) else Path(next(iter(inputs)))
    tmp = make_temp_dir(out_dir, overwrite)
    try:
        writers = {split: ShardWriter(tmp, split, np_dtype, shard_tokens) for split in SPLITS}
        t0 = time.time()
        for name, files in splits.items():
            seen = 0
            for offsets, ids in iter_rows(files):
                if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                    raise PonderError(f"{source}: token id {int(ids.max())} is outside the tokenizer's {vocab} "
                                      f"ids (--tokenizer must be the one the data was tokenized with)")
                n = len(offsets) - 1
                # Rows before the cut stay in their split; with no validation split the last hold_out train
                # rows go to val (a batch may straddle the cut: split it at a row boundary).
                keep = n if not hold_out or name != "train" else min(n, max(0, rows - hold_out - seen))
                writers[SPLIT_NAMES[name]].write(ids[: offsets[keep]])
                writers[SPLIT_NAMES[name]].documents += keep
                if keep < n:
                    writers["val"].write(ids[offsets[keep]:])
                    writers["val"].documents += n - keep
                seen += n
        for w in writers.values():
            w.close()
        meta = {
            "format": "ponderlm-tokens-v1", "dtype": np_dtype.name, "vocab_size": vocab,
            "eos_id": int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else None,
            "tokens": {s: w.tokens for s, w in writers.items()},
            "documents": {s: w.documents for s, w in writers.items()},
            "shards": {s: w.shards for s, w in writers.items()},
            "tokenizer": tokenizer_identity(tokenizer, tokenizer_spec),
            "inputs": [{"kind": "pretokenized", "path": str(source),
                        "arrow_files": {k: len(v) for k, v in splits.items()}}],
            "val_fraction": frac if hold_out else None,
            "val_rule": "the dataset's validation split" if not hold_out else "the last val_fraction of train rows",
            "invalid_utf8_replaced": 0, "control_chars_dropped": 0, "ponderlm_version": __version__,
        }
        publish_prepared(tmp, out_dir, overwrite, tokenizer, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["seconds"] = time.time() - t0
    return meta
