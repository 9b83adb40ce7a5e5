"""Shared helpers for the benchmark scripts (the timing code lives in the package: `ponderlm.benchmarking`)."""

from __future__ import annotations

import torch

from ponderlm.benchmarking import format_table, interleaved_medians

__all__ = ["interleaved_medians", "print_table", "setup_threads"]


def print_table(rows: list[dict[str, object]]) -> None:
    print(format_table(rows))


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
