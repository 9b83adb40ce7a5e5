"""Tokenizer training, loading and the shipped default tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from ponderlm.cli import main
from ponderlm.data.tokenizer import DEFAULT_TOKENIZER_DIR, EOT, load_tokenizer, train_tokenizer
from ponderlm.errors import PonderError

SAMPLES = [
    "Hello, world!",
    "  leading spaces and trailing  \n\n",
    "Thou art more lovely and more temperate:\nRough winds do shake the darling buds of May.",
    "Ünïcödé, 中文, emoji 🙂 and tabs\tinside.",
    "numbers 1234567890 and symbols <>{}[]|\\~`",
]


def synthetic_texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "ponder", "token"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    return train_tokenizer(synthetic_texts(), vocab_size=300, out_dir=tmp_path_factory.mktemp("tok") / "tok")


def test_train_roundtrip_and_special_tokens(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert tok.convert_ids_to_tokens(0) == EOT
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    assert 257 <= len(tok) <= 300
    for text in SAMPLES:  # byte-level: any text survives, even characters never seen in training
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Merges were learned: frequent words are single tokens, so text compresses below 1 token per byte.
    text = "the cat sat on a mat"
    assert len(tok(text)["input_ids"]) < len(text.encode()) / 2
    assert tok(text)["input_ids"][0] != 0  # no bos added by default


def test_auto_tokenizer_loads_directory(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    auto = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    ours = load_tokenizer(str(tiny_tokenizer_dir))
    assert auto.eos_token == EOT
    assert auto("a dog ran away")["input_ids"] == ours("a dog ran away")["input_ids"]


def test_training_is_deterministic(tmp_path, tiny_tokenizer_dir):
    again = train_tokenizer(synthetic_texts(), vocab_size=300, out_dir=tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tiny_tokenizer_dir / "tokenizer.json").read_bytes()


def test_shipped_default_tokenizer():
    tok = load_tokenizer("default")
    assert len(tok) == 4096 and tok.eos_token_id == 0
    assert (DEFAULT_TOKENIZER_DIR / "tokenizer.json").is_file()
    text = "And God said, Let there be light: and there was light.\n\nTo be, or not to be: that is the question."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # Measured 0.30 tokens/char on the bundled corpus; well-covered English should be well below 0.5.
    assert len(ids) / len(text) < 0.4


def test_train_from_file_via_cli(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(synthetic_texts(50)))
    out = tmp_path / "cli_tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "280", "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert len(tok) <= 280 and tok.decode(tok("the dog")["input_ids"]) == "the dog"


def test_train_missing_input_via_cli(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: input not found") and "missing.txt" in err and "\n" not in err
    assert not out.exists()


def test_train_empty_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n \t\n")
    with pytest.raises(PonderError, match="no documents"):
        train_tokenizer([empty], 300, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
    with pytest.raises(PonderError, match="at least 257"):
        train_tokenizer(synthetic_texts(), 100, tmp_path / "tok")


def test_load_missing_tokenizer(tmp_path):
    with pytest.raises(PonderError, match="could not load tokenizer"):
        load_tokenizer(str(tmp_path / "no" / "such" / "tokenizer"))
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(PonderError, match="is a file"):
        load_tokenizer(tmp_path / "file.json")
