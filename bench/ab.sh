#!/usr/bin/env bash
# A/B two trees of ringstore on this machine: node CPU per operation, in the same minutes.
#
#   bench/ab.sh [--op get|put] [--size SIZE] [--rounds N] [--seconds S] OLD_REV [NEW_REV]
#
# OLD_REV (and NEW_REV, default: the working tree) are exported with `git archive`; each gets
# a fresh 3-node cluster on free ports (N=3, R=W=2), both up at once and prefilled with 2,000
# keys of SIZE (default 4KiB; 100 keys of a size in MiB). The load generator then alternates
# S-second bursts (default 4) of operations on SIZE values at concurrency 16 between them, N rounds (default 6), the first tree first in odd
# rounds and last in even ones. Node CPU is utime + stime of a cluster's three node processes
# over its burst. Machines here are shared and their speed moves by a third within minutes:
# one run of a whole matrix per tree says little about a 10% change, pairs of bursts do.
#
# Prints a Markdown table (one row per round) and the median new/old CPU ratio; record it in
# bench/RESULTS.md with the command line. Both clusters and the exports are removed at the end.
set -euo pipefail

usage="usage: bench/ab.sh [--op get|put] [--size SIZE] [--rounds N] [--seconds S] OLD_REV [NEW_REV]"
op=get size=4KiB rounds=6 seconds=4
revs=()
while [ $# -gt 0 ]; do
    case $1 in
        --op) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; op=$2; shift ;;
        --size) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; size=$2; shift ;;
        --rounds) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; rounds=$2; shift ;;
        --seconds) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; seconds=$2; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        -*) echo "$usage" >&2; exit 2 ;;
        *) revs+=("$1") ;;
    esac
    shift
done
case $op in get|put) ;; *) echo "ab.sh: --op is get or put, not $op" >&2; exit 2 ;; esac
[[ $size =~ ^[1-9][0-9]*(KiB|MiB)?$ ]] || { echo "ab.sh: --size is a number of bytes, KiB or MiB, not $size" >&2; exit 2; }
keys=2000
[[ $size == *MiB ]] && keys=100
for number in "$rounds" "$seconds"; do
    [[ $number =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: rounds and seconds are positive integers" >&2; exit 2; }
done
[ ${#revs[@]} -ge 1 ] && [ ${#revs[@]} -le 2 ] || { echo "$usage" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/_venv.sh
python=$repo/.venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/ringstore-ab.XXXXXX")
names=(old new)
declare -A tree nodes pids run_dir

cleanup() {
    for name in "${names[@]}"; do
        if [ -n "${run_dir[$name]:-}" ]; then
            (cd "${tree[$name]}" && RINGSTORE_CLUSTER_RUN_DIR="${run_dir[$name]}" \
                PYTHONPATH="${tree[$name]}" "$python" -m cluster stop >/dev/null 2>&1) || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

export_tree() {  # name rev
    local name=$1 rev=$2
    if [ "$rev" = . ]; then
        tree[$name]=$repo
        return
    fi
    git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "ab.sh: no such revision: $rev" >&2; exit 2; }
    mkdir -p "$work/$name"
    git archive "$rev" | tar -x -C "$work/$name"
    tree[$name]=$work/$name
}
export_tree old "${revs[0]}"
export_tree new "${revs[1]:-.}"

start() {  # name
    local name=$1
    run_dir[$name]=$work/run-$name
    local port_base
    port_base=$("$python" -c 'from cluster.harness import free_port_base; print(free_port_base(3))')
    (cd "${tree[$name]}" && RINGSTORE_CLUSTER_RUN_DIR="${run_dir[$name]}" \
        RINGSTORE_CLUSTER_PORT_BASE=$port_base PYTHONPATH="${tree[$name]}" \
        "$python" -m cluster start 3 >/dev/null)
    read -r -a urls < <("$python" -c 'import json, sys
print(" ".join(n["http_url"] for n in json.load(open(sys.argv[1]))["nodes"]))' "${run_dir[$name]}/cluster.json")
    nodes[$name]="${urls[*]}"
    pids[$name]=$("$python" -c 'import json, sys
print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "${run_dir[$name]}/cluster.json")
    # shellcheck disable=SC2086
    "$python" -m bench --op get --value-size "$size" --keys "$keys" --prefill -n 1 ${nodes[$name]} >/dev/null
}
start old
start new

cpu_ticks() {  # pids...
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

burst() {  # name round -> "ops/s p99 cpu_ms_per_op"
    local name=$1 round=$2 before after
    local keys=(--keys "$keys")
    [ "$op" = put ] && keys=(--keys 100000000 --key-dist sequential --bucket "ab-$name-$round")
    # shellcheck disable=SC2086
    before=$(cpu_ticks ${pids[$name]})
    # shellcheck disable=SC2086
    # A seed per round: a round repeating an earlier one's values would store chunks the
    # cluster already holds (one copy of equal chunks), a cost the other tree may not skip.
    "$python" -m bench --op "$op" --value-size "$size" "${keys[@]}" -c 16 -d "$seconds" \
        --r 2 --w 2 --seed "$round" ${nodes[$name]} -o "$work/$name.json" >/dev/null
    # shellcheck disable=SC2086
    after=$(cpu_ticks ${pids[$name]})
    "$python" - "$work/$name.json" $((after - before)) "$(getconf CLK_TCK)" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
ticks, per_second = int(sys.argv[2]), int(sys.argv[3])
operations = report["totals"]["operations"]
cpu_ms = 1000 * ticks / per_second / max(operations, 1)
print(f'{report["totals"]["ops_per_s"]:.0f} {report["latency_ms"]["p99"]:.1f} {cpu_ms:.3f}')
EOF
}

echo "A/B: $size $op at c16, ${seconds} s bursts; old = ${revs[0]}, new = ${revs[1]:-working tree}"
echo
echo "| round | ops/s old -> new | p99 ms old -> new | node CPU ms/op old -> new | new / old CPU |"
echo "|---:|---:|---:|---:|---:|"
ratios=()
for round in $(seq 1 "$rounds"); do
    order=(old new)
    [ $((round % 2)) -eq 0 ] && order=(new old)
    declare -A result=()
    for name in "${order[@]}"; do
        result[$name]=$(burst "$name" "$round")
    done
    read -r old_ops old_p99 old_cpu <<<"${result[old]}"
    read -r new_ops new_p99 new_cpu <<<"${result[new]}"
    ratio=$("$python" -c "print(f'{$new_cpu / $old_cpu:.2f}')")
    ratios+=("$ratio")
    echo "| $round | $old_ops -> $new_ops | $old_p99 -> $new_p99 | $old_cpu -> $new_cpu | $ratio |"
done
echo
"$python" -c 'import statistics, sys; print(f"median new/old node CPU per operation: {statistics.median(map(float, sys.argv[1:])):.2f}")' "${ratios[@]}"
