#!/usr/bin/env bash
# Start the local development cluster (N nodes, default from cluster/local.toml: 3) in the
# background and wait until every node is up; print where the nodes are and what to try.
# Run again, it starts only the nodes that are down (on their data) and never a second cluster.
# --lb also starts nginx on one port (lb_port in cluster/local.toml, default 10017) in front of
# all nodes, installing Debian's nginx package first if it is missing (as root).
# RINGSTORE_CLUSTER_RUN_DIR and RINGSTORE_CLUSTER_PORT_BASE choose another directory and ports.
set -euo pipefail
source "$(dirname "$0")/_cluster_env.sh"
exec "$python" -m cluster start "$@"
