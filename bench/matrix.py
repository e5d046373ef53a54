"""Turn one run of the standard matrix (bench/run.sh) into a dated section of bench/RESULTS.md.

The matrix is 4 KiB and 1 MiB values, PUT and GET, concurrency 16 and 64, each measured on
the local 3-node cluster (N=3, R=W=2) and on the ceiling server (bench/ceiling.py) in the
same run. run.sh leaves the load reports of each cell in a directory, named
`{cluster|ceiling}_{op}_{size}_c{concurrency}[.PART].json`: the cluster's cell in one
report, the ceiling's in two halves, `.before` and `.after` the cluster's (the machine's
speed moves within minutes, and a ratio's two figures should meet the same minutes). This
module reads them, joins the halves, checks the ratio targets of issue 6 and appends the
section (it never rewrites what is there).

    python -m bench.matrix REPORT_DIR --append bench/RESULTS.md [--cluster-json FILE] ...

With `--bigobject REPORT` (what `python -m bench.bigobject -o REPORT` wrote, run.sh runs it
after the cells) the section also shows each node's peak RSS while one large object was
written and read back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SIZES = ("4KiB", "1MiB")
OPERATIONS = ("put", "get")
CONCURRENCIES = (16, 64)
KINDS = ("cluster", "ceiling")
P99_LIMIT_MS = 50.0  # issue 6: p99 at concurrency 16 for 4 KiB operations
P99_CONCURRENCY = 16
RSS_LIMIT_MIB = 200.0  # issue 6: each node's RSS during the 1 MiB runs and a 2 GiB object
# issue 6: (size, operation, measure, least ratio of the cluster to the ceiling)
RATIO_TARGETS = (
    ("4KiB", "get", "ops_per_s", 0.30),
    ("4KiB", "put", "ops_per_s", 0.10),
    ("1MiB", "get", "mb_per_s", 0.25),
    ("1MiB", "put", "mb_per_s", 0.10),
)
BIG_OBJECT_TARGET = "RSS while one 2 GiB object is written and read back"
NOT_MEASURED = ("scaling with twice the keys or objects, and list-keys time",)
_PART_ORDER = {"before": 0, None: 1, "after": 2}  # a cell's parts, in the order they ran
_REPORT_NAME = re.compile(r"(cluster|ceiling)_(put|get)_(\w+)_c(\d+)(?:\.(\w+))?\.json")


@dataclass(frozen=True, slots=True)
class Cell:
    kind: str
    operation: str
    size: str
    concurrency: int


def load_reports(directory: Path) -> dict[Cell, dict[str, Any]]:
    """Every cell's report in `directory` (named as run.sh names them), its parts joined."""
    parts: dict[Cell, list[tuple[int, dict[str, Any]]]] = {}
    for path in sorted(directory.glob("*.json")):
        match = _REPORT_NAME.fullmatch(path.name)
        if match is not None:
            kind, operation, size, concurrency, part = match.groups()
            cell = Cell(kind, operation, size, int(concurrency))
            rank = _PART_ORDER.get(part, len(_PART_ORDER))
            parts.setdefault(cell, []).append((rank, json.loads(path.read_text())))
    return {
        cell: joined([report for _, report in sorted(reports, key=lambda r: r[0])])
        for cell, reports in parts.items()
    }


def joined(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report for a cell measured in parts: rates over all their operations and time,
    the highest latency figures of any part, errors added up, and each part's ops/s (in
    `part_ops_per_s`, to show how far the machine moved between them)."""
    if len(parts) == 1:
        return parts[0]
    elapsed = sum(part["elapsed_s"] for part in parts)
    totals = {name: sum(part["totals"][name] for part in parts) for name in ("operations", "bytes")}
    totals["ops_per_s"] = totals["operations"] / elapsed if elapsed > 0 else 0.0
    totals["mb_per_s"] = totals["bytes"] / 1e6 / elapsed if elapsed > 0 else 0.0
    latency = {
        name: max(part["latency_ms"][name] for part in parts) for name in parts[0]["latency_ms"]
    }
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    return {
        "elapsed_s": elapsed,
        "totals": totals,
        "latency_ms": latency,
        "errors": errors,
        "part_ops_per_s": [part["totals"]["ops_per_s"] for part in parts],
    }


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def describe_machine() -> str:
    cpu = _first_line("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    memory = _first_line("/proc/meminfo", "MemTotal")
    memory_gib = f"{int(memory.split()[0]) / 1024**2:.1f} GiB RAM" if memory else "RAM unknown"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory_gib}; {platform.system()} {platform.release()};"
        f" Python {platform.python_version()}; load average now {load}"
    )


def peak_rss_mib(cluster_json: Path) -> dict[str, float | None]:
    """Each node's peak resident memory so far (VmHWM), by node name; None if unreadable."""
    manifest = json.loads(cluster_json.read_text())
    peaks: dict[str, float | None] = {}
    for node in manifest["nodes"]:
        value = _first_line(f"/proc/{node['pid']}/status", "VmHWM") if node.get("pid") else None
        peaks[node["name"]] = int(value.split()[0]) / 1024 if value else None
    return peaks


def memory_split_note(cluster_json: Path) -> str | None:
    """Each node's resident memory now, anonymous + file-backed: the file pages are the
    LMDB map's pages the node has read (page cache the kernel can drop), which RSS counts."""
    manifest = json.loads(cluster_json.read_text())
    parts = []
    for node in manifest["nodes"]:
        status = f"/proc/{node['pid']}/status" if node.get("pid") else None
        anon = _first_line(status, "RssAnon") if status else None
        mapped = _first_line(status, "RssFile") if status else None
        if anon and mapped:
            mib = [int(value.split()[0]) / 1024 for value in (anon, mapped)]
            parts.append(f"{node['name']} {mib[0]:.0f} + {mib[1]:.0f}")
    if not parts:
        return None
    return (
        "Resident memory at the end, anonymous + file-backed MiB (the file pages are the LMDB"
        f" map's pages read, which RSS counts): {', '.join(parts)}"
    )


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cell_table(reports: dict[Cell, dict[str, Any]]) -> list[str]:
    lines = [
        "| size | op | conc | cluster ops/s | cluster MB/s | p50 ms | p99 ms | p99.9 ms | max ms"
        " | errors | ceiling ops/s | ceiling MB/s | ceiling p99 ms | ceiling ops/s by part"
        " | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        for operation in OPERATIONS:
            for concurrency in CONCURRENCIES:
                cluster = reports.get(Cell("cluster", operation, size, concurrency))
                ceiling = reports.get(Cell("ceiling", operation, size, concurrency))
                row = [size, operation.upper(), str(concurrency)]
                if cluster is None:
                    row += ["not run"] + ["-"] * 7
                else:
                    latency = cluster["latency_ms"]
                    row += [
                        _number(cluster["totals"]["ops_per_s"]),
                        _number(cluster["totals"]["mb_per_s"], 2),
                        *(_number(latency[name], 2) for name in ("p50", "p99", "p99_9", "max")),
                        _errors(cluster),
                    ]
                if ceiling is None:
                    row += ["not run", "-", "-", "-"]
                else:
                    by_part = ceiling.get("part_ops_per_s", [ceiling["totals"]["ops_per_s"]])
                    row += [
                        _number(ceiling["totals"]["ops_per_s"]),
                        _number(ceiling["totals"]["mb_per_s"], 2),
                        _number(ceiling["latency_ms"]["p99"], 2),
                        " / ".join(map(_number, by_part)),
                    ]
                row.append(_number(_ratio(cluster, ceiling, "ops_per_s"), 3))
                lines.append("| " + " | ".join(row) + " |")
    return lines


def _errors(report: dict[str, Any]) -> str:
    errors = report["errors"]
    if not errors:
        return "0"
    return ", ".join(f"{count} {kind}" for kind, count in errors.items())


def _ratio(cluster: dict | None, ceiling: dict | None, measure: str) -> float | None:
    if cluster is None or ceiling is None or not ceiling["totals"][measure]:
        return None
    return cluster["totals"][measure] / ceiling["totals"][measure]


def _verdict(value: float | None, ok: bool) -> str:
    return "not measured" if value is None else ("met" if ok else "**missed**")


def _big_object_rows(big_object: dict[str, Any] | None) -> list[str]:
    if big_object is None:
        return [f"| {BIG_OBJECT_TARGET} | - | - | not measured by this matrix |"]
    size_mib = big_object["size_bytes"] / 1024**2
    size = f"{size_mib / 1024:g} GiB" if size_mib >= 1024 else f"{size_mib:g} MiB"
    rows = []
    if not big_object["identical"]:
        rows.append(f"| the {size} object read back | different bytes | identical | **missed** |")
    for name, by_phase in sorted(big_object["peak_rss_mib"].items()):
        peak = max(by_phase.values())
        verdict = _verdict(peak, peak < RSS_LIMIT_MIB)
        rows.append(
            f"| {name} peak RSS while one {size} object is written and read back"
            f" ({big_object['put']['mb_per_s']:.0f} / {big_object['get']['mb_per_s']:.0f} MB/s)"
            f" | {_number(peak)} MiB | < {RSS_LIMIT_MIB:g} MiB | {verdict} |"
        )
    return rows


def _target_table(
    reports: dict[Cell, dict[str, Any]],
    rss: dict[str, float | None] | None,
    big_object: dict[str, Any] | None = None,
) -> list[str]:
    lines = ["| target (issue 6) | measured | needed | verdict |", "|---|---:|---:|---|"]
    for size, operation, measure, least in RATIO_TARGETS:
        unit = "ops/s" if measure == "ops_per_s" else "MB/s"
        source = " from file" if (size, operation) == ("1MiB", "get") else ""
        for concurrency in CONCURRENCIES:
            ratio = _ratio(
                reports.get(Cell("cluster", operation, size, concurrency)),
                reports.get(Cell("ceiling", operation, size, concurrency)),
                measure,
            )
            lines.append(
                f"| {size} {operation.upper()} {unit}, c{concurrency}, vs ceiling{source}"
                f" | {_number(ratio, 3)} | >= {least:.2f} | "
                f"{_verdict(ratio, ratio is not None and ratio >= least)} |"
            )
    for operation in OPERATIONS:
        report = reports.get(Cell("cluster", operation, "4KiB", P99_CONCURRENCY))
        p99 = None if report is None else report["latency_ms"]["p99"]
        lines.append(
            f"| 4KiB {operation.upper()} p99 at c{P99_CONCURRENCY} | {_number(p99, 2)} ms"
            f" | < {P99_LIMIT_MS:g} ms | {_verdict(p99, p99 is not None and p99 < P99_LIMIT_MS)} |"
        )
    for name, peak in sorted((rss or {}).items()):
        verdict = _verdict(peak, peak is not None and peak < RSS_LIMIT_MIB)
        lines.append(
            f"| {name} peak RSS over the whole run (VmHWM) | {_number(peak)} MiB"
            f" | < {RSS_LIMIT_MIB:g} MiB | {verdict} |"
        )
    lines += _big_object_rows(big_object)
    for what in NOT_MEASURED:
        lines.append(f"| {what} | - | - | not measured by this matrix |")
    return lines


def format_section(
    reports: dict[Cell, dict[str, Any]],
    *,
    now: datetime,
    machine: str,
    commit: str,
    duration_s: float,
    quick: bool,
    rss: dict[str, float | None] | None = None,
    big_object: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The Markdown section for one matrix run."""
    mode = " (quick smoke run: not a measurement)" if quick else ""
    lines = [
        f"## {now.strftime('%Y-%m-%d %H:%M')} UTC: standard matrix{mode}",
        "",
        f"- Machine: {machine}",
        f"- Code: {commit}",
        f"- Cluster: 3 local nodes, N=3, R=W=2 (`?r=2&w=2`), durable writes; {duration_s:g} s"
        " per cell; one generator process (`python -m bench`), one keep-alive connection per"
        " worker, workers round-robin over the nodes",
        "- PUTs write fresh keys (sequential); GETs read a prefilled key space (uniform)",
        "- Ceiling: `python -m bench.ceiling`, measured in the same run with the same"
        f" generator, each cell in two halves of {duration_s / 2:g} s right before and right"
        " after the cluster's same cell (\"by part\"), so that a ratio's two figures meet the"
        " same minutes of machine load; its rates are both halves together, its p99 the"
        " higher half's; 1 MiB GETs read its value from a file each time",
        *(f"- {note}" for note in notes),
        "",
        *_cell_table(reports),
        "",
        *_target_table(reports, rss, big_object),
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matrix", description=__doc__)
    parser.add_argument("reports", type=Path, help="the directory of load reports")
    parser.add_argument("--append", type=Path, required=True, help="the RESULTS.md to extend")
    parser.add_argument("--cluster-json", type=Path, help="cluster.json, for the nodes' RSS")
    parser.add_argument("--commit", default="unknown", help="the code measured")
    parser.add_argument("--duration", type=float, required=True, help="seconds per cell")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bigobject", type=Path, help="a report of python -m bench.bigobject")
    parser.add_argument("--note", action="append", default=[], help="a line to add")
    args = parser.parse_args(argv)
    if not args.reports.is_dir():
        parser.error(f"{args.reports} is not a directory")
    reports = load_reports(args.reports)
    if not reports:
        parser.error(f"no load reports in {args.reports}")
    big_object = None
    if args.bigobject is not None:
        try:
            big_object = json.loads(args.bigobject.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--bigobject {args.bigobject}: {exc}")
    rss = peak_rss_mib(args.cluster_json) if args.cluster_json else None
    split = memory_split_note(args.cluster_json) if args.cluster_json else None
    section = format_section(
        reports,
        now=datetime.now(UTC),
        machine=describe_machine(),
        commit=args.commit,
        duration_s=args.duration,
        quick=args.quick,
        rss=rss,
        big_object=big_object,
        notes=[*args.note, *([split] if split else [])],
    )
    with open(args.append, "a") as results:  # append only: others add their sections too
        results.write("\n" + section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
