#!/usr/bin/env bash
# Run the tests that touch transformers' APIs (generation, forward options, the HF Trainer, remote code) against
# other transformers releases, each in a throwaway virtual environment.
#
#   scripts/test_transformers_range.sh              # the oldest 5.x release on the package index
#   scripts/test_transformers_range.sh 5.0.0 5.25.0 # the given releases
#
# Each venv gets only transformers (with the dependencies that release asks for); torch, pytest, accelerate and
# the rest come from the project's venv (PYTHON, default .venv/bin/python), added after the throwaway's own
# site-packages so the tested transformers shadows the project's. The project's venv is never modified.
# Exit status: non-zero if any release failed. Record the results in docs/ARCHITECTURE.md ("Supported
# transformers versions") and keep pyproject's lower bound at the oldest release that passes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TESTS=(tests/test_generate_hf.py tests/test_forward_options.py tests/test_hf_trainer.py tests/test_generate_api.py
       tests/test_hub.py)

if [ $# -eq 0 ]; then
    # `pip index versions` lists newest first; the oldest 5.x is the last 5.* entry.
    oldest=$("$PYTHON" -m pip index versions transformers 2>/dev/null | sed -n 's/^Available versions: //p' \
             | tr ',' '\n' | tr -d ' ' | grep '^5\.' | tail -n 1)
    [ -n "$oldest" ] || { echo "could not list transformers releases (pip index versions transformers)" >&2; exit 2; }
    set -- "$oldest"
fi

project_site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
failed=()
for version in "$@"; do
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "== transformers $version (venv in $work)"
    "$PYTHON" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "transformers==$version"
    # After the install, so pip never sees (or touches) the project's packages.
    site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import site; site.addsitedir('$project_site')" > "$site/zz_project_venv.pth"
    got=$(PYTHONPATH="$ROOT/src" "$work/venv/bin/python" -c 'import transformers; print(transformers.__version__)')
    [ "$got" = "$version" ] || { echo "expected transformers $version, imported $got" >&2; exit 2; }
    if PYTHONPATH="$ROOT/src" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"; then
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
