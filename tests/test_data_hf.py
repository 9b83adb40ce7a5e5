"""Data and continued pretraining without traps: `save_to_disk` datasets and --text-column, the tokenizer's real
vocabulary size, and `model.init_from` taking the architecture from the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ponderlm.cli import main
from ponderlm.data.loader import read_meta
from ponderlm.data.tokenizer import load_tokenizer

DOCS = [f"document number {i} talks about the {'red' if i % 2 else 'blue'} door and the old town" for i in range(40)]


def shard_tokens(out, split: str) -> list[int]:
    meta = read_meta(out)
    ids: list[int] = []
    for shard in meta["shards"][split]:
        ids += np.fromfile(out / shard["file"], dtype=meta["dtype"]).tolist()
    return ids


def expected_tokens(docs: list[str]) -> list[int]:
    tok = load_tokenizer("default")
    ids: list[int] = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def test_prepare_reads_save_to_disk_datasets_and_a_text_column(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    one = datasets.Dataset.from_dict({"body": DOCS, "id": list(range(len(DOCS)))})
    one.save_to_disk(str(tmp_path / "one"))
    both = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": DOCS[:30]}),
                                 "validation": datasets.Dataset.from_dict({"body": DOCS[30:]})})
    both.save_to_disk(str(tmp_path / "both"))

    # A DatasetDict with a validation split keeps it; the text comes from --text-column.
    assert main(["data", "prepare", "--input", str(tmp_path / "both"), "--text-column", "body",
                 "--out", str(tmp_path / "p_both"), "--num-proc", "1"]) == 0
    assert shard_tokens(tmp_path / "p_both", "train") == expected_tokens(DOCS[:30])
    assert shard_tokens(tmp_path / "p_both", "val") == expected_tokens(DOCS[30:])
    assert read_meta(tmp_path / "p_both")["inputs"][0]["text_column"] == "body"

    # A single Dataset holds out --val-fraction of its documents, like files.
    assert main(["data", "prepare", "--input", str(tmp_path / "one"), "--text-column", "body", "--val-fraction",
                 "0.1", "--out", str(tmp_path / "p_one"), "--num-proc", "1"]) == 0
    ids = shard_tokens(tmp_path / "p_one", "train") + shard_tokens(tmp_path / "p_one", "val")
    assert sorted(ids) == sorted(expected_tokens(DOCS))
    capsys.readouterr()

    # The default column does not exist here: one line naming the columns and the option.
    assert main(["data", "prepare", "--input", str(tmp_path / "one"), "--out", str(tmp_path / "p_bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'text'" in err[0] and "body" in err[0] and "--text-column" in err[0]
    assert not (tmp_path / "p_bad").exists()


def test_text_column_for_jsonl_files(tmp_path):
    with open(tmp_path / "docs.jsonl", "w") as f:
        for doc in DOCS:
            f.write(json.dumps({"content": doc}) + "\n")
    assert main(["data", "prepare", "--input", str(tmp_path / "docs.jsonl"), "--text-column", "content",
                 "--out", str(tmp_path / "p"), "--num-proc", "1", "--val-fraction", "0"]) == 0
    assert shard_tokens(tmp_path / "p", "train") == expected_tokens(DOCS)


def test_tokenizer_train_reports_the_real_vocabulary(tmp_path, capsys):
    from transformers import AutoTokenizer

    (tmp_path / "small.txt").write_text("\n\n".join(DOCS[:5]))
    assert main(["tokenizer", "train", "--input", str(tmp_path / "small.txt"), "--vocab-size", "512",
                 "--out", str(tmp_path / "tok")]) == 0
    size = len(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    assert size < 512
    out = capsys.readouterr().out
    assert f"vocab {size} (asked for 512" in out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=64)).save_pretrained(path)
    return path


def test_init_from_takes_the_architecture_from_the_checkpoint(tmp_path, data_dir, tiny_llama, one_thread):
    """The quickstart's shape (d=128, 4 layers, tied embeddings) gives way to the checkpoint's (d=32, 2 layers)."""
    from ponderlm import PonderForCausalLM

    run = tmp_path / "run"
    code = main(["train", "--recipe", "quickstart", "--method", "adaponder", "--out", str(run),
                 f"model.init_from={tiny_llama}", f"data.data_dir={data_dir}", "data.seq_len=32", "train.steps=1",
                 "train.batch_size=2",
                 "train.eval_batches=1", "train.sample_tokens=0", "train.device=cpu", "log.tensorboard=false"])
    assert code == 0
    model = PonderForCausalLM.from_pretrained(run / "final")
    c = model.config
    assert (c.method, c.hidden_size, c.num_hidden_layers, c.tie_word_embeddings) == ("adaponder", 32, 2, False)
    assert c.max_position_embeddings == 64


def test_init_from_with_contradicting_settings_is_one_line_and_writes_nothing(tmp_path, data_dir, tiny_llama,
                                                                              capsys):
    run = tmp_path / "run"
    code = main(["train", "--recipe", "quickstart", "--method", "adaponder", "--out", str(run),
                 f"model.init_from={tiny_llama}", "model.hidden_size=64", "model.num_hidden_layers=2",
                 f"data.data_dir={data_dir}", "data.seq_len=32",
                 "train.steps=1", "train.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "hidden_size=64 (checkpoint: 32)" in err[0] and "num_hidden_layers" not in err[0]
    assert not run.exists()
    # The quickstart's seq_len (128) does not fit the checkpoint's 64 positions: said before anything is written.
    code = main(["train", "--recipe", "quickstart", "--out", str(run), f"model.init_from={tiny_llama}",
                 f"data.data_dir={data_dir}", "train.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.seq_len (128) exceeds" in err[0], err
    assert not run.exists()
