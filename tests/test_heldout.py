"""The bundled held-out text (`--data heldout`, docs/DATA.md): offline, intact, disjoint from the corpus, scorable."""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import re

import numpy as np
import pytest

from ponderlm.cli import main
from ponderlm.data.corpus import HELDOUT_DIR, iter_default_corpus, iter_heldout

pytestmark = pytest.mark.usefixtures("one_thread")


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every length-n window (wrapping arithmetic); equal windows hash equal."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids.astype(np.uint64), n)
    mult = np.uint64(1_000_003) ** np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (windows * mult).sum(axis=1, dtype=np.uint64)


def _shared_windows(held: list[np.ndarray], corpus: list[np.ndarray], n: int) -> list[tuple[int, ...]]:
    """Length-n windows of `held` that also occur in `corpus` (windows never span two documents), confirmed
    exactly: a hash match alone is not proof."""
    held_windows = {tuple(h[i: i + n].tolist()) for h in held for i in range(len(h) - n + 1)}
    held_hashes = np.unique(np.concatenate([_window_hashes(h, n) for h in held]))
    per_doc = [_window_hashes(doc, n) for doc in corpus]
    starts = np.cumsum([0] + [len(x) for x in per_doc])
    shared = set()
    for hit in np.flatnonzero(np.isin(np.concatenate(per_doc), held_hashes)):  # one sort, not one per document
        d = int(np.searchsorted(starts, hit, side="right")) - 1
        window = tuple(corpus[d][hit - starts[d]: hit - starts[d] + n].tolist())
        if window in held_windows:
            shared.add(window)
    return sorted(shared)


def test_heldout_loads_offline_and_matches_its_sources_record():
    sources = json.loads((HELDOUT_DIR / "SOURCES.json").read_text())
    out = sources["outputs"]["val"]
    raw = (HELDOUT_DIR / out["file"]).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == out["sha256"] and len(raw) == out["compressed_bytes"]
    records = list(iter_heldout())
    assert [r["id"] for r in records] == [f"alice/chapter{i:02d}" for i in range(1, 13)]
    assert {r["source"] for r in records} == {"alice"}
    assert sum(len(r["text"].encode()) for r in records) == out["text_bytes"]
    assert 100_000 < out["text_bytes"] < 400_000  # a few hundred KB at most, enough for hundreds of windows
    text = "\n\n".join(r["text"] for r in records)
    assert text.isascii() and "\r" not in text
    assert records[0]["text"].startswith("ALICE'S ADVENTURES IN WONDERLAND")
    assert "Project Gutenberg" not in text  # no licence boilerplate came along
    # the licence and the package are recorded (what the NOTICE is for)
    notice = (HELDOUT_DIR / "NOTICE").read_text()
    assert "public domain" in notice and sources["packages"][0]["version"] in notice
    assert lzma.decompress(raw).decode().count("\n") == 12


def _words(text: str) -> np.ndarray:
    return np.asarray([_WORD_IDS.setdefault(w, len(_WORD_IDS)) for w in re.findall(r"[a-z0-9]+", text.lower())],
                      dtype=np.int64)


_WORD_IDS: dict[str, int] = {}


def test_heldout_shares_no_8_word_window_with_the_corpus():
    """Word level (case and punctuation ignored, so a quotation restyled in either text still counts): not one
    run of 8 words of the held-out text occurs anywhere in the bundled corpus (train or val)."""
    held = [_words(r["text"]) for r in iter_heldout()]
    corpus = [_words(r["text"]) for split in ("train", "val") for r in iter_default_corpus(split)]
    assert sum(map(len, held)) > 25_000
    assert _shared_windows(held, corpus, 8) == []
    # the check can fire: a sentence of the held-out text planted in a corpus document is found
    planted = corpus[:1] + [np.concatenate([corpus[1], held[3][100:120]])]
    assert len(_shared_windows(held, planted, 8)) >= 13


@pytest.mark.slow
def test_heldout_shares_no_12_token_window_with_the_corpus():
    """Token level, with the shipped tokenizer the grid's models use: no 12-token window in common."""
    from ponderlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer("default").backend_tokenizer

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts, add_special_tokens=False)]

    held = encode([r["text"] for r in iter_heldout()])
    corpus = encode([r["text"] for split in ("train", "val") for r in iter_default_corpus(split)])
    assert _shared_windows(held, corpus, 12) == []


def test_eval_batches_score_the_whole_heldout_text_with_the_model_tokenizer():
    from ponderlm.data.tokenizer import load_tokenizer
    from ponderlm.eval.perplexity import eval_batches

    tok = load_tokenizer("default")
    # independent reference: each chapter's ids then eos, concatenated, cut into whole windows
    ids: list[int] = []
    for record in iter_heldout():
        ids += tok(record["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batches = eval_batches("heldout", tok, seq_len=128, batch_size=8)
    windows = np.concatenate([b.numpy() for b in batches])
    assert windows.shape == (len(ids) // 128, 128) and windows.shape[0] > 300
    assert (windows.reshape(-1) == np.asarray(ids[: windows.size])).all()
    # the protocol's cap: at most 96 batches of 8 windows
    assert len(eval_batches("heldout", tok, seq_len=128, batch_size=8, max_batches=96)) == min(96, len(batches))


def test_eval_ppl_data_heldout_runs_on_a_tiny_model(checkpoint, capsys):
    argv = ["eval", "ppl", "--model", str(checkpoint), "--data", "heldout", "--seq-len", "32", "--batch-size", "4",
            "--max-batches", "2", "--no-progress", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 2 * 4 * 31 and math.isfinite(result["ppl"]) and result["ppl"] > 1
    # default is scored too, and gives another number: the two data sets really are different text
    assert main([*argv[:4], "--data", "default", *argv[6:]]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] != result["loss"]


def test_heldout_has_no_train_split(checkpoint, capsys):
    code = main(["eval", "ppl", "--model", str(checkpoint), "--data", "heldout", "--split", "train", "--seq-len",
                 "32", "--max-batches", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "held-out text is scored whole" in err and len(err.strip().splitlines()) == 1
