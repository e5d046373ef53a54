"""Turn the outcomes of one load run into its report: totals, latency, errors, time series.

`Recorder` is pure: the driver passes every time (seconds on Trio's clock) and outcome, so the
report of a given list of outcomes is always the same. Latencies are of successful operations
only (as basho_bench records them); errors are counted by kind, with the first message of each.
MB is 10**6 bytes of values moved: request bodies of PUTs, response bodies of GETs.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1_000_000  # MB/s as storage benchmarks quote it; ratios to the ceiling are unit-free
# Latency histogram bucket upper bounds: the 1-2-5 series spans a loopback GET to a timeout.
HISTOGRAM_BOUNDS_MS = tuple(
    base * 10**exponent for exponent in range(-1, 5) for base in (1, 2, 5)
)  # 0.1 ms .. 50 s, plus an overflow bucket
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p99_9", 0.999))
MS_DIGITS = 3  # microsecond resolution: finer than the clock's jitter under load
EXAMPLE_CHARS = 200  # the first message of each error kind, cut to this


@dataclass(slots=True)
class _Tally:
    """Counts of one operation kind, or of one second of the run."""

    ok: int = 0
    errors: int = 0
    not_found: int = 0
    siblings: int = 0
    bytes: int = 0
    latencies_s: array = field(default_factory=lambda: array("d"))


def percentile(ordered: array | list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted, non-empty samples."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_summary(samples_s: array | list[float]) -> dict[str, float | None]:
    """min, mean, p50 .. p99.9 and max in milliseconds; all None without samples."""
    names = ["min", "mean", *(name for name, _ in PERCENTILES), "max"]
    if not samples_s:
        return dict.fromkeys(names)
    ordered = sorted(samples_s)
    values = [ordered[0], math.fsum(ordered) / len(ordered)]
    values += [percentile(ordered, fraction) for _, fraction in PERCENTILES]
    values.append(ordered[-1])
    return {name: round(value * 1000, MS_DIGITS) for name, value in zip(names, values, strict=True)}


def histogram(samples_s: array | list[float]) -> list[dict[str, Any]]:
    """Counts per latency bucket (`le_ms` is the bucket's upper bound; None for overflow)."""
    counts = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
    for sample in samples_s:
        counts[bisect.bisect_left(HISTOGRAM_BOUNDS_MS, sample * 1000)] += 1
    bounds: list[float | None] = [*HISTOGRAM_BOUNDS_MS, None]
    return [{"le_ms": bound, "count": count} for bound, count in zip(bounds, counts, strict=True)]


def _rates(tally: _Tally, seconds: float) -> dict[str, Any]:
    return {
        "operations": tally.ok + tally.errors,
        "ok": tally.ok,
        "errors": tally.errors,
        "not_found": tally.not_found,
        "siblings": tally.siblings,
        "bytes": tally.bytes,
        "ops_per_s": round(tally.ok / seconds, 3) if seconds > 0 else 0.0,
        "mb_per_s": round(tally.bytes / MB / seconds, 6) if seconds > 0 else 0.0,
    }


class Recorder:
    """Collects the outcome of every operation of one run (or of its prefill phase)."""

    def __init__(self, started_s: float) -> None:
        self.started_s = started_s
        self._by_op: dict[str, _Tally] = {}
        self._by_second: dict[int, _Tally] = {}
        self._errors: dict[str, int] = {}
        self._error_examples: dict[str, str] = {}

    def _tallies(self, op: str, ended_s: float) -> tuple[_Tally, _Tally]:
        second = max(0, int(ended_s - self.started_s))
        return (
            self._by_op.setdefault(op, _Tally()),
            self._by_second.setdefault(second, _Tally()),
        )

    def ok(
        self, op: str, started_s: float, ended_s: float, nbytes: int, *, status: int = 200
    ) -> None:
        """A successful operation; 404 counts as `not_found`, 300 as `siblings` (both ok)."""
        latency_s = ended_s - started_s
        for tally in self._tallies(op, ended_s):
            tally.ok += 1
            tally.bytes += nbytes
            tally.not_found += status == 404
            tally.siblings += status == 300
            tally.latencies_s.append(latency_s)

    def error(self, op: str, ended_s: float, kind: str, detail: str) -> None:
        """A failed operation: `kind` is connect, connection, protocol, timeout or http_NNN."""
        for tally in self._tallies(op, ended_s):
            tally.errors += 1
        self._errors[kind] = self._errors.get(kind, 0) + 1
        self._error_examples.setdefault(kind, detail[:EXAMPLE_CHARS])

    def report(self, elapsed_s: float) -> dict[str, Any]:
        """The run's numbers as plain JSON-ready values."""
        total = _Tally()
        for tally in self._by_op.values():
            total.ok += tally.ok
            total.errors += tally.errors
            total.not_found += tally.not_found
            total.siblings += tally.siblings
            total.bytes += tally.bytes
            total.latencies_s.extend(tally.latencies_s)
        return {
            "elapsed_s": round(elapsed_s, 6),
            "totals": _rates(total, elapsed_s),
            "latency_ms": latency_summary(total.latencies_s),
            "errors": dict(sorted(self._errors.items())),
            "error_examples": dict(sorted(self._error_examples.items())),
            "by_op": {
                op: {**_rates(tally, elapsed_s), "latency_ms": latency_summary(tally.latencies_s)}
                for op, tally in sorted(self._by_op.items())
            },
            "histogram": histogram(total.latencies_s),
            "series": self._series(elapsed_s),
        }

    def _series(self, elapsed_s: float) -> list[dict[str, Any]]:
        """One entry per second of the run, empty seconds included so a stall shows."""
        seconds = max(math.ceil(elapsed_s), max(self._by_second, default=-1) + 1)
        series = []
        for second in range(seconds):
            tally = self._by_second.get(second, _Tally())
            span_s = min(1.0, elapsed_s - second) if elapsed_s > second else 1.0
            latency = latency_summary(tally.latencies_s)
            series.append(
                {
                    "t_s": second,
                    "ok": tally.ok,
                    "errors": tally.errors,
                    "bytes": tally.bytes,
                    "ops_per_s": round(tally.ok / span_s, 3),
                    "mb_per_s": round(tally.bytes / MB / span_s, 6),
                    "p50_ms": latency["p50"],
                    "p99_ms": latency["p99"],
                    "max_ms": latency["max"],
                }
            )
        return series


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_summary(report: dict[str, Any]) -> str:
    """A few lines a person reads after a run; the JSON report has everything else."""
    config = report["config"]
    totals = report["totals"]
    latency = report["latency_ms"]
    targets = config["targets"]
    more = f" (+{len(targets) - 1} more)" if len(targets) > 1 else ""
    lines = [
        f"{report['label']}: {config['operation']} {config['value_size']}"
        f" x{config['concurrency']} -> {targets[0]}{more}",
        f"  {report['elapsed_s']:.2f} s, {totals['ok']} ok, {totals['errors']} errors"
        f" ({totals['not_found']} not found, {totals['siblings']} with siblings)",
        f"  {totals['ops_per_s']:.1f} ops/s, {totals['mb_per_s']:.2f} MB/s",
        "  latency ms: "
        + "  ".join(
            f"{name.replace('_', '.')} {_ms(latency[name])}"
            for name in ("p50", "p95", "p99", "p99_9", "max")
        ),
    ]
    if report.get("prefill"):
        prefill = report["prefill"]
        lines.append(
            f"  prefill: {prefill['ok']} of {prefill['keys']} keys in {prefill['elapsed_s']:.2f} s"
            f" ({prefill['errors']} errors)"
        )
    for kind, count in report["errors"].items():
        lines.append(f"  error {kind}: {count} (first: {report['error_examples'][kind]})")
    if totals["not_found"] and "get" in report["by_op"]:
        lines.append("  note: GETs of missing keys count as ok; use --prefill to fill the keys")
    return "\n".join(lines)


def plot_available() -> bool:
    """Whether the PNG plot can be drawn (it needs matplotlib, an optional extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(report: dict[str, Any], path: Path) -> None:
    """A PNG with throughput and latency over time and the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the plot goes to a file
    from matplotlib import pyplot

    series = report["series"]
    seconds = [point["t_s"] for point in series]
    figure, (throughput, latency, spread) = pyplot.subplots(3, 1, figsize=(9, 10))
    figure.suptitle(report["label"])
    throughput.plot(seconds, [point["ops_per_s"] for point in series], label="ops/s")
    throughput.set_xlabel("second of the run")
    throughput.set_ylabel("ops/s")
    megabytes = throughput.twinx()
    megabytes.plot(seconds, [point["mb_per_s"] for point in series], color="tab:orange")
    megabytes.set_ylabel("MB/s")
    for name in ("p50_ms", "p99_ms", "max_ms"):
        values = [math.nan if point[name] is None else point[name] for point in series]
        latency.plot(seconds, values, label=name.removesuffix("_ms"))
    latency.set_xlabel("second of the run")
    latency.set_ylabel("latency (ms)")
    latency.set_yscale("log")
    latency.legend()
    buckets = report["histogram"]
    labels = [
        f"<={bucket['le_ms']:g}" if bucket["le_ms"] is not None else "more" for bucket in buckets
    ]
    spread.bar(labels, [bucket["count"] for bucket in buckets])
    spread.set_xlabel("latency (ms)")
    spread.set_ylabel("operations")
    spread.tick_params(axis="x", labelrotation=60)
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
