#!/usr/bin/env bash
# Run the standard benchmark matrix of issue 6 and append a dated table to bench/RESULTS.md:
# 4 KiB and 1 MiB values, PUT and GET, concurrency 16 and 64, on a fresh local 3-node cluster
# (N=3, R=W=2) and on the ceiling server (bench/ceiling.py) at the same sizes and concurrency,
# the ceiling in two halves around each cluster cell (see `measured` below); then one 2 GiB
# object written and read back with each node's RSS watched (bench/bigobject.py).
#
#   bench/run.sh            20 s per cell, about 8 minutes in all (the measurement)
#   bench/run.sh --quick    3 s per cell, small key spaces and a 64 MiB object: a smoke run
#   --keep                  keep the run directory (reports, node logs) instead of deleting it
#   --results FILE          append to FILE instead of bench/RESULTS.md (for trying run.sh out)
#
# The cluster lives in a temporary run directory on free ports, so a developer's own cluster
# (cluster/run) is never touched; it is stopped and deleted at the end, even on failure.
set -euo pipefail
source "$(dirname "$0")/../scripts/_venv.sh"
cd "$repo_root"
python="$venv/bin/python"

duration=20
get_keys_small=5000  # 4 KiB GETs read from this many prefilled keys (20 MiB per replica)
get_keys_large=200   # 1 MiB GETs: 200 MiB per replica, more than one chunk file per key read
put_keys=100000000   # PUTs write fresh keys in order; no run writes this many
big_object=2GiB      # issue 6: RSS while one object of this size is written and read back
quick=""
keep=""
results=bench/RESULTS.md
usage="usage: bench/run.sh [--quick] [--keep] [--results FILE]"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=3; get_keys_small=500; get_keys_large=30; big_object=64MiB; quick="--quick" ;;
        --keep) keep=1 ;;
        --results) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; results=$2; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ringstore-bench.XXXXXX")
reports="$work/reports"
mkdir -p "$reports" "$work/ceiling"
export RINGSTORE_CLUSTER_RUN_DIR="$work/cluster"
RINGSTORE_CLUSTER_PORT_BASE=$("$python" -c 'from cluster.harness import free_port_base; print(free_port_base(3))')
export RINGSTORE_CLUSTER_PORT_BASE
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit plus uncommitted changes"; fi

ceiling_pids=()
cleanup() {
    for pid in "${ceiling_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    scripts/stop_cluster.sh >/dev/null 2>&1 || echo "run.sh: stopping the cluster failed" >&2
    if [ -n "$keep" ]; then
        echo "run.sh: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "== starting a 3-node cluster in $RINGSTORE_CLUSTER_RUN_DIR" >&2
scripts/start_cluster.sh 3 >&2
cluster_json="$RINGSTORE_CLUSTER_RUN_DIR/cluster.json"
read -r -a nodes < <("$python" -c 'import json, sys
print(" ".join(node["http_url"] for node in json.load(open(sys.argv[1]))["nodes"]))' "$cluster_json")

# cell KIND OP SIZE CONCURRENCY SECONDS PART EXTRA-OPTIONS... -- URL...
# PART names one of several reports of the same cell ("" for the only one).
# Each cell draws its values with a seed of its own: with one seed, a cell would PUT the values
# an earlier cell already stored, and the store keeps one copy of equal chunks.
seed=0
cell() {
    local kind=$1 op=$2 size=$3 concurrency=$4 seconds=$5 part=$6
    shift 6
    local options=()
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    seed=$((seed + 1))
    echo "== $kind $op $size c$concurrency${part:+ ($part)}" >&2
    "$python" -m bench "$@" --op "$op" --value-size "$size" -c "$concurrency" -d "$seconds" \
        --r 2 --w 2 --timeout 30 --seed "$seed" --label "$kind $op $size c$concurrency" \
        -o "$reports/${kind}_${op}_${size}_c${concurrency}${part:+.$part}.json" "${options[@]}"
}

# measured OP SIZE CONCURRENCY CLUSTER-OPTIONS... -- CEILING-OPTIONS...
# One cell: the cluster for the whole duration, between two halves of it on the ceiling. The
# machine's speed moves by a third within minutes (other work comes and goes); measured on
# both sides of the cluster's cell, the ceiling meets the same minutes.
half=$(awk -v seconds="$duration" "BEGIN { print seconds / 2 }")
measured() {
    local op=$1 size=$2 concurrency=$3
    shift 3
    local cluster_options=()
    while [ "$1" != "--" ]; do cluster_options+=("$1"); shift; done
    shift
    cell ceiling "$op" "$size" "$concurrency" "$half" before "$@" -- "${ceiling_url[$size]}"
    cell cluster "$op" "$size" "$concurrency" "$duration" "" "${cluster_options[@]}" \
        -- "${nodes[@]}"
    cell ceiling "$op" "$size" "$concurrency" "$half" after "$@" -- "${ceiling_url[$size]}"
}

# One ceiling server per size, up for the whole run.
declare -A ceiling_url
for size in 4KiB 1MiB; do
    # The 1 MiB GET target is a ratio to GETs the ceiling reads from a file.
    from_file=()
    if [ "$size" = 1MiB ]; then from_file=(--dir "$work/ceiling"); fi
    exec {ceiling_out}< <(exec "$python" -m bench.ceiling --port 0 --value-size "$size" "${from_file[@]}")
    ceiling_pids+=($!)
    if ! read -r -t 30 -u "$ceiling_out" ready || [[ "$ready" != "ceiling listening on "* ]]; then
        echo "run.sh: the ceiling server did not start" >&2
        exit 1
    fi
    ceiling_url[$size]=${ready##* }
done

for size in 4KiB 1MiB; do
    if [ "$size" = 4KiB ]; then get_keys=$get_keys_small; else get_keys=$get_keys_large; fi
    for concurrency in 16 64; do
        measured put "$size" "$concurrency" --bucket "put-$size-c$concurrency" \
            --keys "$put_keys" --key-dist sequential -- --keys 1000
    done
    # One prefill per size; both concurrencies then read the same keys.
    prefill=(--prefill)
    for concurrency in 16 64; do
        measured get "$size" "$concurrency" --bucket "get-$size" --keys "$get_keys" \
            "${prefill[@]}" -- --keys 1000
        prefill=()
    done
done

echo "== one $big_object object, written and read back" >&2
# A missed limit still leaves its report (and the table says so); a failed run leaves none.
"$python" -m bench.bigobject --cluster-json "$cluster_json" --size "$big_object" \
    -o "$reports/bigobject.json" >&2 || echo "run.sh: the $big_object object run failed or missed" >&2
big_object_report=()
if [ -f "$reports/bigobject.json" ]; then big_object_report=(--bigobject "$reports/bigobject.json"); fi
echo "== appending to $results" >&2
"$python" -m bench.matrix "$reports" --append "$results" --cluster-json "$cluster_json" \
    --commit "$commit" --duration "$duration" $quick "${big_object_report[@]}" \
    --note "Load average before the run: $load_before (other work on the machine skews every number)"
