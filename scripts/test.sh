#!/usr/bin/env bash
# The test command from the README: lint, then the whole suite. pytest exits 5 when it collected
# no test, which must fail CI rather than pass silently (set -e keeps that exit code).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks scripts examples
python -m pytest tests -p no:cacheprovider "$@"
