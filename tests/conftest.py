"""Fixtures shared across test files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import single_thread, tiny_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny ponderlm3 checkpoint + tokenizer trained for a few steps, built once per session."""
    return tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture
def one_thread():
    with single_thread():
        yield


WORDS = ("the cat sat on a mat while a dog ran to the red door and then the bird sang a song about "
         "rain over the hill near old town where people walk slowly every morning").split()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A small corpus prepared with the real pipeline and the shipped tokenizer (vocab 4096): trainer tests."""
    from ponderlm.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(200)]
    (root / "corpus.txt").write_text("\n\n".join(paragraphs))
    prepare_data([str(root / "corpus.txt")], "default", root / "prepared", val_fraction=0.1, num_proc=1,
                 progress=False)
    return root / "prepared"
