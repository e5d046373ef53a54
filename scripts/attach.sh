#!/usr/bin/env bash
# Open node I's admin console (default 1): scripts/attach.sh 2, or scripts/attach.sh 2 -c ring
# to run one command and exit with its status (0 ok, 1 error).
set -euo pipefail
source "$(dirname "$0")/_cluster_env.sh"
exec "$python" -m cluster attach "$@"
