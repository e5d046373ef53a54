#!/usr/bin/env bash
# Stop the nodes start_cluster.sh started, and its nginx if --lb started one (by their pid
# files): SIGTERM (nginx: SIGQUIT), then SIGKILL after a grace period (--grace SECONDS,
# default 10). Their data stays for the next start.
set -euo pipefail
source "$(dirname "$0")/_cluster_env.sh"
exec "$python" -m cluster stop "$@"
