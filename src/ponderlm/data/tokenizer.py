"""Byte-level BPE tokenizers: train one on local text, load ours, a local directory or a hub name.

A trained tokenizer is saved as a `PreTrainedTokenizerFast` directory (tokenizer.json +
tokenizer_config.json), so `transformers.AutoTokenizer.from_pretrained(dir)` loads it and a
model's `save_pretrained` directory can carry it. `<|endoftext|>` (id 0) is eos, bos and pad.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ponderlm.data.corpus import Source, resolve_inputs
from ponderlm.errors import PonderError, remote_code_refused
from ponderlm.hub import update_json

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
EOT = "<|endoftext|>"
MAX_VOCAB_SIZE = 1 << 20


def _training_texts(sources: list[Source]) -> Iterator[str]:
    for source in sources:
        for split, text in source.documents([]):  # a stats list turns on the binary-file check
            if split != "val":  # never learn the vocabulary from held-out text of a fixed split
                yield text


def train_tokenizer(
    files_or_texts: str | Path | Iterable[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    min_frequency: int = 2,
    *,
    allow_texts: bool = True,
) -> Path:
    """Train a byte-level BPE and save it to `out_dir`; returns the directory.

    Inputs are like `prepare_data`'s: "default" (bundled corpus, train split), files or directories;
    strings containing whitespace that are not existing paths are used as raw text (unless `allow_texts` is
    False, as for the CLI, where a mistyped path must not silently become the corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise PonderError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    if vocab_size > MAX_VOCAB_SIZE:  # the BPE trainer allocates per entry up front: 10**9 asks for ~70 GB and aborts
        raise PonderError(f"vocab_size must be at most {MAX_VOCAB_SIZE:,} (2**20; large production tokenizers have "
                          f"about 256k tokens), got {vocab_size:,}")
    if min_frequency < 0:
        raise PonderError(f"min_frequency must be >= 0 (the minimum count of a pair to merge), got {min_frequency}")
    sources = resolve_inputs(files_or_texts, allow_texts=allow_texts)
    out_dir = Path(out_dir)
    _check_writable(out_dir)

    tok = Tokenizer(models.BPE())
    # No prefix space: text is tokenized exactly as written, so decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],  # first, so it gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = _training_texts(sources)
    first = next(texts, None)
    if first is None:
        raise PonderError("no documents to train the tokenizer on: inputs are empty or whitespace only")
    tok.train_from_iterator(itertools.chain([first], texts), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=None, model_max_length=1 << 30
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its new class name; the old one loads the same file in 4.x and 5.x alike.
    update_json(out_dir / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    return out_dir


def _check_writable(out_dir: Path) -> None:
    """Fail before the (possibly long) training rather than after it."""
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise PonderError(f"cannot write to {out_dir}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise PonderError(f"cannot write to {out_dir}: {parent} is not writable")


def load_tokenizer(path_or_name: str | Path = "default"):
    """Load "default" (the shipped 4096-token BPE), a local tokenizer directory, or a hub name (online)."""
    from transformers import AutoTokenizer

    spec = str(path_or_name)
    path = DEFAULT_TOKENIZER_DIR if spec == "default" else Path(spec).expanduser()
    if spec == "default" and not (path / "tokenizer.json").is_file():
        raise PonderError(f"shipped tokenizer missing at {path} (rebuild with scripts/build_corpus.py)")
    if path.exists() and not path.is_dir():
        raise PonderError(f"tokenizer path {spec} is a file; pass the directory that holds tokenizer.json")
    try:
        # trust_remote_code=False: a tokenizer_config.json with auto_map must not import code from its directory
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else spec, trust_remote_code=False)
    except Exception as exc:  # not found locally and not reachable / not on the hub
        refused = remote_code_refused(exc, f"tokenizer {spec}")
        if refused is not None:
            raise refused from None
        if path.is_dir():  # a local directory that does not load: damaged, not offline
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PonderError(f"could not load tokenizer {spec}: {first}") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PonderError(f"could not load tokenizer {spec!r} (not a local directory; offline?): {first}") from None
    return tokenizer


def tokenizer_identity(tokenizer, spec: str | Path) -> dict:
    """What meta.json records so a data directory can be matched to the tokenizer that made it."""
    ident = {"name_or_path": str(spec), "class": type(tokenizer).__name__, "vocab_size": len(tokenizer)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ident["sha256"] = hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
    return ident
