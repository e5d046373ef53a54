#!/usr/bin/env bash
# Set up .venv if needed, then run every check CI runs: ruff, import contracts, the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" tests/core).
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
cd "$repo_root"
echo "== ruff"
"$venv/bin/ruff" check .
echo "== import contracts"
"$venv/bin/lint-imports"
echo "== pytest"
"$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
