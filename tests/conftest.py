"""Fixtures shared across test files."""

from __future__ import annotations

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
