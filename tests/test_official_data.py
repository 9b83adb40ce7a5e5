"""The official pre-tokenized data layout (`--tokenized_path`, uint16smallpile) through `data prepare`.

The directories are written by `datasets`' own `save_to_disk` (what the official LLaMA-Factory code reads with
`load_from_disk`): rows of uint16 `input_ids`, one packed window per row.
"""

from __future__ import annotations

import numpy as np
import pytest

from ponderlm.data.loader import TokenStream, read_meta
from ponderlm.data.prepare import prepare_data
from ponderlm.errors import PonderError

ROW = 16


def _rows(n: int, seed: int, vocab: int = 4096) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=(n, ROW)).tolist()


def _save(path, splits: dict[str, list[list[int]]], dtype: str = "uint16", batch: int = 7):
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value(dtype))})
    data = {name: Dataset.from_dict({"input_ids": rows}, features=features) for name, rows in splits.items()}
    if list(splits) == ["train"] and path.name == "single":
        data["train"].save_to_disk(str(path), max_shard_size="2KB")
    else:
        DatasetDict(data).save_to_disk(str(path), max_shard_size="2KB")  # several arrow files per split
    return path


def test_official_tokenized_dataset_becomes_token_shards(tmp_path, one_thread):
    train, val = _rows(50, 0), _rows(6, 1)
    src = _save(tmp_path / "uint16smallpile", {"train": train, "validation": val})
    meta = prepare_data(src, "default", tmp_path / "prepared", progress=False, shard_tokens=100)
    assert read_meta(tmp_path / "prepared")["dtype"] == "uint16" and meta["documents"] == {"train": 50, "val": 6}
    for split, rows in (("train", train), ("val", val)):
        stream = TokenStream(tmp_path / "prepared", split)
        assert np.array_equal(stream.read(0, stream.num_tokens), np.array(rows).reshape(-1))
        # With data.seq_len = the official cutoff_len, the windows are the official rows.
        assert stream.num_windows(ROW) == len(rows)
        assert np.array_equal(stream.read(3 * ROW, ROW), np.array(rows[3]))


def test_single_dataset_holds_out_the_last_rows(tmp_path, one_thread):
    train = _rows(40, 2)
    src = _save(tmp_path / "single", {"train": train})
    prepare_data(src, "default", tmp_path / "prepared", val_fraction=0.1, progress=False)
    val = TokenStream(tmp_path / "prepared", "val")
    assert np.array_equal(val.read(0, val.num_tokens), np.array(train[36:]).reshape(-1))
    tr = TokenStream(tmp_path / "prepared", "train")
    assert np.array_equal(tr.read(0, tr.num_tokens), np.array(train[:36]).reshape(-1))


def test_ids_outside_the_tokenizer_are_refused(tmp_path):
    src = _save(tmp_path / "big", {"train": _rows(5, 3, vocab=50304)})  # GPT-NeoX ids, a 4096-token tokenizer
    with pytest.raises(PonderError, match="outside the tokenizer"):
        prepare_data(src, "default", tmp_path / "prepared", progress=False)
    assert not (tmp_path / "prepared").exists()


def test_data_dir_pointing_at_the_official_layout_says_how_to_convert(tmp_path):
    src = _save(tmp_path / "uint16smallpile", {"train": _rows(4, 4), "validation": _rows(2, 5)})
    with pytest.raises(PonderError, match="ponderlm data prepare --input") as err:
        read_meta(src)
    assert "\n" not in str(err.value)
