"""The official PonderLM-2 pre-tokenized data (`--tokenized_path`, e.g. the `uint16smallpile` set).

The official training (LLaMA-Factory, `data/loader.py`) reads `--tokenized_path` with `datasets.load_from_disk`:
a `save_to_disk` directory — a DatasetDict (`dataset_dict.json`, one folder per split: `train`, `validation`)
or a single Dataset (`state.json`) — whose rows carry an `input_ids` list (uint16 in `uint16smallpile`), one
packed `cutoff_len` window per row, passed through untouched by `preprocess_pretrain_dataset`. Each split
folder holds Arrow IPC *stream* files (`data-00000-of-000NN.arrow`, listed in `state.json`).

This module only reads that layout (pyarrow, memory-mapped); `prepare.prepare_data` writes it out as our
token shards, rows concatenated in order, so `data.seq_len` = cutoff_len gives back the official windows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ponderlm.errors import PonderError

# Official split name -> ours.
SPLIT_NAMES = {"train": "train", "validation": "val"}


def _split_files(split_dir: Path) -> list[Path]:
    state = split_dir / "state.json"
    try:
        files = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise PonderError(f"{split_dir} is not a datasets save_to_disk split (unreadable state.json)") from None
    return [split_dir / name for name in files]


def pretokenized_splits(inputs: str | Path | Iterable[str | Path]) -> dict[str, list[Path]] | None:
    """{official split name: arrow files} if `inputs` is one official pre-tokenized directory, else None.

    "Pre-tokenized" = a save_to_disk directory whose features have `input_ids` and no text column: the
    official `--tokenized_path` layout. Anything else is left to the text pipeline."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if len(items) != 1 or not Path(items[0]).is_dir():
        return None
    root = Path(items[0])
    if (root / "dataset_dict.json").is_file():
        try:
            names = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise PonderError(f"{root}/dataset_dict.json is damaged") from None
        dirs = {name: root / name for name in names}
    elif (root / "state.json").is_file():
        dirs = {"train": root}
    else:
        return None
    features = {}
    for split_dir in dirs.values():
        info = split_dir / "dataset_info.json"
        if info.is_file():
            features = json.loads(info.read_text(encoding="utf-8")).get("features") or {}
            break
    if "input_ids" not in features or "text" in features:
        return None
    unknown = sorted(set(dirs) - set(SPLIT_NAMES))
    if unknown:
        raise PonderError(f"{root}: split {unknown[0]!r} has no place in train / val (official splits: "
                          f"{', '.join(SPLIT_NAMES)})")
    if "train" not in dirs:
        raise PonderError(f"{root} has no train split")
    return {name: _split_files(path) for name, path in dirs.items()}


def iter_rows(files: list[Path]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row offsets [rows + 1] from 0, tokens) per Arrow record batch: the batch's `input_ids` concatenated, as a
    zero-copy view where the column allows it."""
    import pyarrow as pa

    for path in files:
        if not path.is_file():
            raise PonderError(f"{path} is missing (listed in state.json)")
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                raise PonderError(f"{path} is not an Arrow stream file as save_to_disk writes") from None
            for batch in reader:
                column = batch.column(batch.schema.get_field_index("input_ids"))
                values = column.flatten()  # respects the list offsets of a sliced batch
                if not pa.types.is_integer(values.type):
                    raise PonderError(f"{path}: input_ids hold {values.type}, not integer token ids")
                offsets = column.offsets.to_numpy(zero_copy_only=False)
                yield offsets - offsets[0], values.to_numpy(zero_copy_only=False)
