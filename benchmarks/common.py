"""Shared helpers for the benchmark scripts (the timing code lives in the package: `ponderlm.benchmarking`)."""

from __future__ import annotations

import argparse
import json

import torch

from ponderlm.benchmarking import format_table, interleaved_medians

__all__ = ["add_json_flag", "interleaved_medians", "print_table", "setup_threads"]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the rows as JSON (what benchmarks/perf_suite.py records) instead of a table")


def print_table(rows: list[dict[str, object]], as_json: bool = False) -> None:
    print(json.dumps(rows, indent=1) if as_json else format_table(rows))


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
