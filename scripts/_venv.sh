# Sourced by the scripts: make sure .venv exists and matches pyproject.toml.
# A stamp holding pyproject.toml's hash tells when the install is stale.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo_root/.venv"
stamp="$venv/.ringstore-installed"
want=$(sha256sum "$repo_root/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up $venv ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$repo_root[test]"
    echo "$want" > "$stamp"
fi
