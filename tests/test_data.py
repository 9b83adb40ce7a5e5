"""Corpus, token shards (prepare_data), the loader, and the data CLI, including bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ponderlm.cli import main
from ponderlm.data import prepare as prepare_module
from ponderlm.data.corpus import CORPUS_DIR, iter_default_corpus
from ponderlm.data.loader import TokenLoader, iter_eval_batches, unigram_perplexity
from ponderlm.data.prepare import prepare_data
from ponderlm.data.tokenizer import load_tokenizer, train_tokenizer
from ponderlm.errors import PonderError

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "ponder", "token", "Ünï"]


def paragraphs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 3)))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = train_tokenizer(paragraphs(100, seed=99), vocab_size=300, out_dir=tmp_path_factory.mktemp("tok") / "t")
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """Three text files of blank-line separated paragraphs (documents), one with CRLF line endings."""
    root = tmp_path_factory.mktemp("texts")
    docs = {name: paragraphs(40, seed=i) for i, name in enumerate(["a.txt", "b.txt", "sub/c.txt"])}
    for name, paras in docs.items():
        (root / name).parent.mkdir(exist_ok=True)
        sep = "\r\n" if name == "b.txt" else "\n"
        (root / name).write_bytes((sep + sep + sep).join(p.replace("\n", sep) for p in paras).encode())
    return root, [p for name in sorted(docs) for p in docs[name]]


@pytest.fixture(scope="module")
def prepared(tok, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    meta = prepare_data([text_dir[0]], tok, out, val_fraction=0.1, num_proc=1, shard_tokens=500, progress=False)
    return out, meta


def read_split(out, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    parts = [np.fromfile(out / s["file"], dtype=meta["dtype"]) for s in meta["shards"][split]]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def encode_docs(tok, docs: list[str]) -> np.ndarray:
    ids = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.array(ids, dtype=np.int64)


def no_leftovers(parent) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --- bundled corpus ----------------------------------------------------------------------------------


def test_bundled_corpus_loads_both_splits_valid_utf8():
    sources = json.loads((CORPUS_DIR / "SOURCES.json").read_text())
    ids = {}
    for split in ("train", "val"):
        records = list(iter_default_corpus(split))
        assert len(records) == sources["outputs"][split]["documents"] > 0
        assert {r["source"] for r in records} == {"brown", "shakespeare", "kjv"}
        for r in records:
            r["text"].encode("utf-8")  # strict: fails on lone surrogates
            assert r["text"].strip() and "\r" not in r["text"] and "\x00" not in r["text"]
        ids[split] = {r["id"] for r in records}
    assert not ids["train"] & ids["val"]
    assert 0.015 < len(ids["val"]) / (len(ids["train"]) + len(ids["val"])) < 0.035
    assert "redistribution permitted" in (CORPUS_DIR / "NOTICE").read_text()


# --- prepare -------------------------------------------------------------------------------------------


def test_prepare_matches_independent_tokenization(tok, text_dir, prepared):
    out, meta = prepared
    docs = text_dir[1]  # sorted file order, paragraphs in order; CRLF normalised
    n_val = round(0.1 * len(docs))
    expected_train, expected_val = encode_docs(tok, docs[:-n_val]), encode_docs(tok, docs[-n_val:])
    assert np.array_equal(read_split(out, "train"), expected_train)
    assert np.array_equal(read_split(out, "val"), expected_val)
    assert meta["tokens"] == {"train": len(expected_train), "val": len(expected_val)}
    assert meta["documents"] == {"train": len(docs) - n_val, "val": n_val}
    assert meta["dtype"] == "uint16" and meta["eos_id"] == 0 and meta["vocab_size"] == len(tok)
    assert all(s["tokens"] <= 500 for s in meta["shards"]["train"]) and len(meta["shards"]["train"]) > 1
    on_disk = json.loads((out / "meta.json").read_text())
    files = on_disk["inputs"][0]["files"]
    assert [f["path"].rsplit("/", 1)[-1] for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert all(len(f["sha256"]) == 64 for f in files)
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_prepare_deterministic_across_num_proc(tok, text_dir, prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "_BATCH_CHARS", 200)  # many batches, so the pool really interleaves
    out2 = tmp_path / "np2"
    prepare_data([text_dir[0]], tok, out2, val_fraction=0.1, num_proc=2, shard_tokens=500, progress=False)
    out1 = prepared[0]
    names = sorted(p.name for p in out1.glob("*.bin"))
    assert names == sorted(p.name for p in out2.glob("*.bin")) and len(names) > 2
    for name in names:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    assert (out1 / "meta.json").read_bytes() == (out2 / "meta.json").read_bytes()  # no paths of out_dir, no times


def test_jsonl_input_and_cli(tok, tmp_path, capsys):
    docs = paragraphs(30, seed=5)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    tok.save_pretrained(str(tmp_path / "tok"))
    out = tmp_path / "out"
    argv = ["data", "prepare", "--input", str(path), "--tokenizer", str(tmp_path / "tok"), "--out", str(out),
            "--val-fraction", "0.2", "--num-proc", "1"]
    assert main(argv) == 0
    assert "train" in capsys.readouterr().out
    assert np.array_equal(read_split(out, "train"), encode_docs(tok, docs[:24]))
    assert np.array_equal(read_split(out, "val"), encode_docs(tok, docs[24:]))
    assert main(argv) == 2  # out exists and is not empty
    assert "not empty" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--val-fraction", "0.1"]) == 0
    assert np.array_equal(read_split(out, "val"), encode_docs(tok, docs[27:]))
    assert no_leftovers(tmp_path)


def test_compressed_jsonl_matches_plain(tok, tmp_path):
    import gzip

    docs = paragraphs(12, seed=8)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    prepare_data(tmp_path / "d.jsonl.gz", tok, tmp_path / "out", val_fraction=0.25, num_proc=1, progress=False)
    assert np.array_equal(read_split(tmp_path / "out", "val"), encode_docs(tok, docs[9:]))


def test_bad_jsonl_line(tok, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(PonderError, match=r"d.jsonl:2: expected a JSON object with a string field 'text'"):
        prepare_data(tmp_path / "d.jsonl", tok, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_dataset_name_needs_datasets(tok, tmp_path):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed; the offline/not-installed message is what this test checks")
    with pytest.raises(PonderError, match="needs the datasets package"):
        prepare_data("someone/some_corpus", tok, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_parquet_input(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = paragraphs(10, seed=6)
    pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet")
    prepare_data([tmp_path / "d.parquet"], tok, tmp_path / "out", val_fraction=0.2, num_proc=1, progress=False)
    assert np.array_equal(read_split(tmp_path / "out", "train"), encode_docs(tok, docs[:8]))


def test_uint32_selected_for_large_vocab(tok, tmp_path):
    big = load_tokenizer(tok.name_or_path)
    big.add_tokens([f"<x{i}>" for i in range(66000 - len(big))])
    assert len(big) == 66000
    (tmp_path / "t.txt").write_text("the cat <x65600>\n\na dog <x300>")
    meta = prepare_data([tmp_path / "t.txt"], big, tmp_path / "out", val_fraction=0.5, num_proc=1, progress=False)
    assert meta["dtype"] == "uint32"
    train = read_split(tmp_path / "out", "train")
    assert train.max() == big.convert_tokens_to_ids("<x65600>") == 65900
    # An explicit uint16 cannot hold these ids: refused before anything is written.
    with pytest.raises(PonderError, match="uint16"):
        prepare_data([tmp_path / "t.txt"], big, tmp_path / "out16", dtype="uint16", progress=False)
    assert not (tmp_path / "out16").exists() and no_leftovers(tmp_path)


def test_failure_mid_run_leaves_nothing(tok, text_dir, tmp_path, monkeypatch):
    def boom(self, ids):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module.ShardWriter, "write", boom)
    with pytest.raises(RuntimeError):
        prepare_data([text_dir[0]], tok, tmp_path / "out", num_proc=1, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- bad input through the CLI: one line, exit 2, no output directory --------------------------------------


def run_cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_input(tmp_path, capsys):
    argv = ["data", "prepare", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]
    err = run_cli_error(capsys, argv)
    assert "input not found" in err and "nope.txt" in err
    assert list(tmp_path.iterdir()) == []


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text("\n \n\t\n")
    (tmp_path / "in" / "empty.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    err = run_cli_error(capsys, ["data", "prepare", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    assert "empty corpus" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_binary_input_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "blob.txt").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    argv = ["data", "prepare", "--input", str(tmp_path / "blob.txt"), "--out", str(tmp_path / "o")]
    err = run_cli_error(capsys, argv)
    assert "looks binary" in err and "limit 1%" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.txt"]


def test_few_invalid_bytes_replaced_and_reported(tok, tmp_path):
    text = "\n\n".join(paragraphs(40, seed=3)).encode()
    bad = b"ascii \xff\xfe then a NUL\x00 here\n\n" + text  # 2 invalid bytes + 1 NUL, well under 1% of the file
    (tmp_path / "t.txt").write_bytes(bad)
    meta = prepare_data([tmp_path / "t.txt"], tok, tmp_path / "o", num_proc=1, progress=False)
    assert meta["invalid_utf8_replaced"] == 2 and meta["control_chars_dropped"] == 1
    on_disk = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert on_disk["inputs"][0]["files"][0]["invalid_utf8"] == 2


def test_unwritable_output(tok, text_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["data", "prepare", "--input", str(text_dir[0]), "--out", str(tmp_path / "afile" / "data")]
    err = run_cli_error(capsys, argv)
    assert "cannot write output directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bad_options(tmp_path, capsys, text_dir):
    base = ["data", "prepare", "--input", str(text_dir[0]), "--out", str(tmp_path / "o")]
    assert "val_fraction" in run_cli_error(capsys, base + ["--val-fraction", "1.5"])
    single = tmp_path / "one.txt"
    single.write_text("just one paragraph")
    argv = ["data", "prepare", "--input", str(single), "--out", str(tmp_path / "o")]
    assert "at least 2" in run_cli_error(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]


# --- loader --------------------------------------------------------------------------------------------------


def windows(out, split, seq_len) -> np.ndarray:
    tokens = read_split(out, split)
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


def test_loader_epoch_is_a_permutation_and_seeded(prepared):
    out, _ = prepared
    seq_len, bs = 16, 4
    all_windows = windows(out, "train", seq_len)
    loader = TokenLoader(out, "train", seq_len, bs, seed=1)
    assert loader.num_windows == len(all_windows)
    steps = len(all_windows) // bs
    seen = torch.cat([loader.next_batch() for _ in range(steps)]).numpy()
    assert seen.dtype == np.int64 and seen.shape == (steps * bs, seq_len)
    # Every row is a real window (including those crossing the 500-token shard boundaries), none repeats.
    rows = {r.tobytes() for r in all_windows}
    assert all(r.tobytes() in rows for r in seen) and len({r.tobytes() for r in seen}) == len(seen)
    again = TokenLoader(out, "train", seq_len, bs, seed=1)
    assert torch.equal(again.next_batch(), torch.from_numpy(seen[:bs]))
    other = TokenLoader(out, "train", seq_len, bs, seed=2)
    assert not torch.equal(other.next_batch(), torch.from_numpy(seen[:bs]))


def test_loader_resume_exact(prepared):
    out, _ = prepared
    ref = TokenLoader(out, "train", 16, 5, seed=3)
    batches = [ref.next_batch() for _ in range(40)]  # crosses at least one epoch boundary
    assert 40 * 5 > ref.num_windows
    resumed_from = TokenLoader(out, "train", 16, 5, seed=3)
    for _ in range(17):
        resumed_from.next_batch()
    state = json.loads(json.dumps(resumed_from.state_dict()))  # plain ints survive JSON
    assert all(isinstance(v, int) for v in state.values())
    fresh = TokenLoader(out, "train", 16, 5, seed=0)
    fresh.load_state_dict(state)
    for i in range(17, 40):
        assert torch.equal(fresh.next_batch(), batches[i])
    with pytest.raises(PonderError, match="seq_len"):
        TokenLoader(out, "train", 8, 5).load_state_dict(state)


def test_world_size_two_equals_one(prepared):
    out, _ = prepared
    single = TokenLoader(out, "train", 16, 6, seed=4)
    ranks = [TokenLoader(out, "train", 16, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):
        assert torch.equal(torch.cat([r.next_batch() for r in ranks]), single.next_batch())
    # State saved at world size 2 resumes at world size 1 with the same global batch.
    resumed = TokenLoader(out, "train", 16, 6, seed=0)
    resumed.load_state_dict(ranks[0].state_dict())
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()
    for _ in range(5):
        assert torch.equal(resumed.next_batch(), single.next_batch())


def test_eval_batches_cover_split_in_order(prepared):
    out, _ = prepared
    expected = windows(out, "val", 8)
    batches = list(iter_eval_batches(out, "val", 8, 3))
    assert all(b.shape[0] == 3 for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= 3
    assert np.array_equal(torch.cat(batches).numpy(), expected)
    assert len(list(iter_eval_batches(out, "val", 8, 3, max_batches=2))) == 2


def test_unigram_perplexity_matches_direct_computation(prepared, tok):
    out, _ = prepared
    train, val, vocab = read_split(out, "train"), read_split(out, "val"), len(tok)
    counts = np.bincount(train, minlength=vocab)
    expected = np.exp(-np.mean([np.log((counts[t] + 1) / (len(train) + vocab)) for t in val]))
    assert unigram_perplexity(out) == pytest.approx(expected, rel=1e-9)
    assert 1 < expected < vocab


def test_loader_seq_len_too_long(prepared):
    out, meta = prepared
    with pytest.raises(PonderError, match="fewer than seq_len"):
        TokenLoader(out, "val", meta["tokens"]["val"] + 1, 2)
    with pytest.raises(PonderError, match="fewer than seq_len"):
        next(iter_eval_batches(out, "val", meta["tokens"]["val"] + 1, 2))
    with pytest.raises(PonderError, match="not a prepared data directory"):
        TokenLoader(out / "tokenizer", "train", 8, 2)
