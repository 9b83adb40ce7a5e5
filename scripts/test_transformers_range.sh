#!/usr/bin/env bash
# Run the tests that touch transformers' APIs (generation, forward options, the HF Trainer, remote code) against
# other transformers releases, each in a throwaway virtual environment.
#
#   scripts/test_transformers_range.sh              # the oldest and the newest 5.x release on the package index
#   scripts/test_transformers_range.sh 5.0.0 5.25.0 # the given releases
#
# Each venv gets the project's declared dependencies (pyproject.toml) with transformers pinned to the release,
# the project venv's torch build (TORCH overrides the requirement, e.g. TORCH=torch), pytest and accelerate (the
# HF Trainer tests); the tests import ponderlm from src/. Nothing else is borrowed from the project's venv: a
# package it holds for its own transformers (e.g. `kernels`, which 5.25 requires and which 5.0 cannot import in
# its newest version) would make an old release fail for a reason no user meets.
# PYTHON (default .venv/bin/python) only creates the venvs. Exit status: non-zero if any release failed. Record
# the results in docs/ARCHITECTURE.md ("Supported transformers versions") and keep pyproject's lower bound at the
# oldest release that passes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TESTS=(tests/test_generate_hf.py tests/test_forward_options.py tests/test_hf_trainer.py tests/test_generate_api.py
       tests/test_model_card.py tests/test_hub.py)

if [ $# -eq 0 ]; then
    # `pip index versions` lists newest first.
    releases=$("$PYTHON" -m pip index versions transformers 2>/dev/null | sed -n 's/^Available versions: //p' \
               | tr ',' '\n' | tr -d ' ' | grep '^5\.' || true)
    [ -n "$releases" ] || { echo "could not list transformers releases (pip index versions transformers)" >&2; exit 2; }
    set -- "$(tail -n 1 <<< "$releases")" "$(head -n 1 <<< "$releases")"
fi

# The [project] dependencies of pyproject.toml, one per line.
mapfile -t deps < <("$PYTHON" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
TORCH=${TORCH:-torch==$("$PYTHON" -c 'import torch; print(torch.__version__)')}
failed=()
for version in "$@"; do
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "== transformers $version (venv in $work)"
    "$PYTHON" -m venv "$work/venv"
    # torch pinned to the project venv's build, so transformers is the only difference (and no CUDA wheels).
    "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "transformers==$version" "${deps[@]}" \
        "$TORCH" pytest accelerate
    got=$(PYTHONPATH="$ROOT/src" "$work/venv/bin/python" -c 'import transformers; print(transformers.__version__)')
    [ "$got" = "$version" ] || { echo "expected transformers $version, imported $got" >&2; exit 2; }
    if PYTHONPATH="$ROOT/src" "$work/venv/bin/python" -m pytest -p no:cacheprovider "${TESTS[@]}"; then
        echo "== transformers $version: passed"
    else
        echo "== transformers $version: FAILED"
        failed+=("$version")
    fi
    rm -rf "$work"
    trap - EXIT
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
