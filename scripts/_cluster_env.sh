# Sourced by the cluster scripts: pick the Python to run and cd to the repository root.
# RINGSTORE_PYTHON names an interpreter that already has ringstore's dependencies (tests use
# it to skip the venv check); otherwise .venv is created or updated as needed (_venv.sh).
if [ -n "${RINGSTORE_PYTHON:-}" ]; then
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    python=$RINGSTORE_PYTHON
else
    source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
    python="$venv/bin/python"
fi
cd "$repo_root"
