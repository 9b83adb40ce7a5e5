"""Batches of token windows from a `prepare_data` directory, deterministic and exactly resumable.

A split's shards are read as one memory-mapped token stream (shards are just where the stream was
cut), so windows may cross shard boundaries. The stream is cut into non-overlapping windows of
`seq_len` tokens (the tail shorter than seq_len is unused). Training order: epoch e is a permutation
of all windows drawn from a generator seeded with (seed, e); epochs follow each other without gaps.
A global batch is the next `batch_size * world_size` windows of that order and rank r takes the r-th
slice of `batch_size`, so the union over ranks does not depend on how the global batch is split.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ponderlm.errors import PonderError


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        from ponderlm.data.official import pretokenized_splits

        if pretokenized_splits(data_dir) is not None:  # the official PonderLM-2 --tokenized_path layout
            raise PonderError(f"{data_dir} is an official pre-tokenized dataset; copy it into token shards once with "
                              f"`ponderlm data prepare --input {data_dir} --tokenizer TOKENIZER --out DIR`")
        raise PonderError(f"{data_dir} is not a prepared data directory (no meta.json; run `ponderlm data prepare`)")
    redo = "re-run `ponderlm data prepare` into a new directory"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PonderError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); {redo}") from None
    # Check the fields every reader indexes, so a damaged file is one message here rather than a KeyError later.
    ok = isinstance(meta, dict) and isinstance(meta.get("vocab_size"), int) and meta["vocab_size"] > 0 \
        and meta.get("dtype") in ("uint16", "uint32") and isinstance(meta.get("shards"), dict) and all(
            isinstance(shards, list) and all(isinstance(sh, dict) and isinstance(sh.get("file"), str)
                                             and isinstance(sh.get("tokens"), int) for sh in shards)
            for shards in meta["shards"].values())
    if not ok:
        raise PonderError(f"{path} is damaged (needs vocab_size, dtype and shards as `ponderlm data prepare` writes "
                          f"them); {redo}")
    # Shards are read from the directory itself: a name like ../../x or /etc/x would read a file outside it.
    for field in ("shards", "loss_mask", "difficulty"):
        for shards in (meta.get(field) or {}).values() if isinstance(meta.get(field), dict) else ():
            for shard in shards if isinstance(shards, list) else ():
                name = shard.get("file") if isinstance(shard, dict) else None
                if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                    raise PonderError(f"{path} names shard file {name!r}, which is not a file of {data_dir}; {redo}")
    return meta


def check_data_dir(data_dir: str | Path, chunk: int = 1 << 24) -> None:
    """What a run reads from a data directory, checked before it writes anything: every token id of every split
    is below the vocabulary (an id past it crashes the embedding lookup in the middle of a run; a shard damaged or
    written with another tokenizer holds them), and the tokenizer kept with the data loads (a run exports it into
    final/ only after its last step). Reads every shard once, in chunks, at memory speed."""
    meta = read_meta(data_dir)
    vocab = meta["vocab_size"]
    for split in meta["shards"]:
        stream = TokenStream(data_dir, split)
        for shard, info in zip(stream.shards, meta["shards"][split]):
            for i in range(0, len(shard), chunk):
                block = shard[i : i + chunk]
                if len(block) and int(block.max()) >= vocab:
                    at = i + int(np.argmax(block >= vocab))
                    raise PonderError(f"{Path(data_dir) / info['file']} holds token id {int(shard[at])} at position "
                                      f"{at}, outside the vocabulary of {vocab} (meta.json); the data is damaged or "
                                      "was made with another tokenizer: re-run `ponderlm data prepare`")
    if (Path(data_dir) / "tokenizer").exists():
        from ponderlm.data.tokenizer import load_tokenizer

        try:
            load_tokenizer(Path(data_dir) / "tokenizer")
        except PonderError as exc:
            raise PonderError(f"the tokenizer kept with the data in {data_dir} does not load ({exc}); re-run "
                              "`ponderlm data prepare`") from None


class TokenStream:
    """The shards of one split as a single read-only token sequence.

    `field` picks another per-token stream aligned with the tokens: "loss_mask" or "difficulty" of a
    `ponderlm data synth` directory (stored as `meta["side_dtype"]`)."""

    def __init__(self, data_dir: str | Path, split: str, field: str = "shards"):
        meta = read_meta(data_dir)
        if field not in meta:
            raise PonderError(f"{data_dir} has no {field!r} stream (meta.json)")
        if split not in meta[field]:
            raise PonderError(f"unknown split {split!r}; {data_dir} has {', '.join(meta[field])}")
        self.meta, self.split = meta, split
        dtype = np.dtype(meta["dtype"] if field == "shards" else meta["side_dtype"]).newbyteorder("<")
        self.shards = []
        for shard in meta[field][split]:
            path = Path(data_dir) / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise PonderError(f"shard {path} is missing or has the wrong size; re-run `ponderlm data prepare`")
            self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
        self.starts = list(itertools.accumulate((len(shard) for shard in self.shards), initial=0))
        self.num_tokens = self.starts[-1]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, stitched across shard boundaries when needed."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = bisect.bisect_right(self.starts, start) - 1
        while filled < length:
            offset = start + filled - self.starts[i]
            take = min(length - filled, len(self.shards[i]) - offset)
            out[filled : filled + take] = self.shards[i][offset : offset + take]
            filled += take
            i += 1
        return out

    def num_windows(self, seq_len: int) -> int:
        n = self.num_tokens // seq_len
        if n == 0:
            raise PonderError(
                f"the {self.split} split has {self.num_tokens} tokens, fewer than seq_len={seq_len}; "
                "use a shorter seq_len or more data"
            )
        return n


class TokenLoader:
    """Random windows for training; see the module docstring for the order.

    >>> loader = TokenLoader("data/default", "train", seq_len=256, batch_size=8)
    >>> x = loader.next_batch()        # LongTensor [8, 256]; labels are x too (the model shifts)
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if seq_len < 1 or batch_size < 1:
            raise PonderError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if not 0 <= rank < world_size:
            raise PonderError(f"rank {rank} is outside world_size {world_size}")
        self.stream = TokenStream(data_dir, split)
        check_example_len(self.stream.meta, seq_len)
        # Answer-only loss: a loss-mask stream (synthetic sets) turns masked targets into -100 labels.
        self.mask = TokenStream(data_dir, split, field="loss_mask") if "loss_mask" in self.stream.meta else None
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_windows = self.stream.num_windows(seq_len)
        self.epoch = 0
        self.position = 0  # windows of this epoch already consumed by the whole world (global)
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm, self._perm_epoch = rng.permutation(self.num_windows), epoch
        return self._perm

    def _window_start(self, global_index: int) -> int:
        epoch, pos = divmod(global_index, self.num_windows)
        return int(self._permutation(epoch)[pos]) * self.seq_len

    def next_batch(self) -> torch.Tensor:
        """This rank's share of the next global batch: LongTensor [batch_size, seq_len]."""
        return self.next_labeled_batch()[0]

    def next_labeled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), each [batch_size, seq_len]. Without a loss mask `labels is inputs`; with one,
        labels are the inputs with -100 wherever the mask is 0 (only answer tokens are targets)."""
        done = self.epoch * self.num_windows + self.position  # windows the whole world has consumed
        first = done + self.rank * self.batch_size
        starts = [self._window_start(first + i) for i in range(self.batch_size)]
        self.epoch, self.position = divmod(done + self.batch_size * self.world_size, self.num_windows)
        return _labeled_windows(self.stream, self.mask, starts, self.seq_len)

    def state_dict(self) -> dict:
        """Plain ints. `position` counts windows of the epoch consumed by all ranks together."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "seq_len": self.seq_len, "num_windows": self.num_windows}

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len or state["num_windows"] != self.num_windows:
            raise PonderError(
                f"data loader state is for seq_len={state['seq_len']} with {state['num_windows']} windows, "
                f"but this loader has seq_len={self.seq_len} with {self.num_windows}; was the data re-prepared?"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._perm_epoch = -1


def iter_eval_batches(
    data_dir: str | Path, split: str, seq_len: int, batch_size: int, max_batches: int | None = None,
    labels: bool = False,
) -> Iterator[Any]:
    """Consecutive non-overlapping windows from the start of the split, in order; the last batch may be
    smaller. Every window is visited exactly once (up to max_batches). With `labels=True` yields
    (inputs, labels) pairs as `TokenLoader.next_labeled_batch` does."""
    stream = TokenStream(data_dir, split)
    check_example_len(stream.meta, seq_len)
    mask = TokenStream(data_dir, split, field="loss_mask") if labels and "loss_mask" in stream.meta else None
    n = stream.num_windows(seq_len)
    for b, first in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        starts = range(first * seq_len, min(first + batch_size, n) * seq_len, seq_len)
        x, y = _labeled_windows(stream, mask, starts, seq_len)
        yield (x, y) if labels else x


def describe_windows(batches: int, batch_size: int, seq_len: int, tokens: int) -> str:
    """What `iter_eval_batches` scored, in the words every reported perplexity carries beside it."""
    return f"first {batches} batches x {batch_size} non-overlapping {seq_len}-token windows ({tokens:,} scored tokens)"


def _labeled_windows(stream: TokenStream, mask: TokenStream | None, starts, seq_len: int):
    """(inputs, labels) of the windows at `starts`, each [len(starts), seq_len], as `next_labeled_batch` says."""
    x = torch.from_numpy(np.stack([stream.read(s, seq_len) for s in starts]))
    vocab = stream.meta["vocab_size"]
    if x.numel() and int(x.max()) >= vocab:  # cheap per batch; `check_data_dir` scans everything up front
        raise PonderError(f"the {stream.split} split of the data holds token id {int(x.max())}, outside the vocabulary "
                          f"of {vocab} (meta.json); the data is damaged or was made with another tokenizer: re-run "
                          "`ponderlm data prepare`")
    if mask is None:
        return x, x
    keep = torch.from_numpy(np.stack([mask.read(s, seq_len) for s in starts])) != 0
    return x, x.masked_fill(~keep, -100)


def check_example_len(meta: dict, seq_len: int) -> None:
    """Synthetic sets hold fixed-length examples: windows must cut on example boundaries."""
    example_len = int(meta.get("synth", {}).get("example_len", 0))
    if example_len and seq_len % example_len:
        raise PonderError(f"this synthetic set has examples of {example_len} tokens; data.seq_len / --seq-len "
                          f"must be a multiple of {example_len}, got {seq_len}")


def _token_counts(stream: TokenStream, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in stream.shards:
        for i in range(0, len(shard), chunk):  # chunked: never the whole split in memory
            counts += np.bincount(shard[i : i + chunk], minlength=vocab_size)[:vocab_size]
    return counts


def unigram_perplexity(data_dir: str | Path) -> float:
    """Perplexity of the val split under train-split unigram frequencies with add-one smoothing: the
    score of a model that ignores context, a floor any trained model should beat."""
    meta = read_meta(data_dir)
    vocab = int(meta["vocab_size"])
    train = _token_counts(TokenStream(data_dir, "train"), vocab)
    val = _token_counts(TokenStream(data_dir, "val"), vocab)
    if val.sum() == 0:
        raise PonderError(f"{data_dir} has no validation tokens")
    log_p = np.log(train + 1.0) - math.log(train.sum() + vocab)
    return float(math.exp(-(val * log_p).sum() / val.sum()))
