"""Judge a run of bench/scaling.py: its plan, the paired ratios of its samples, the verdicts
on issue 6's scaling target, and the RESULTS.md section that shows them.

Pure: the driver (bench/scaling.py) passes every sample in; nothing here does I/O.

A run has two clusters, A and B, and three phases; in each, rounds alternate between them:
`half` (A holds K/2 keys, B holds K: list-keys only), `same` (both hold K: the calibration)
and `doubled` (A holds K, B twice what A holds). A round's B/A ratio pairs two turns measured
moments apart, so the machine's changing load cancels out. The `same` phase measures what
B/A is when nothing differs (two clusters are never quite alike), and a doubling's verdict
uses the calibrated ratio: median B/A of the `doubled` (or `half`) rounds over median B/A of
the `same` rounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ringstore.errors import BadRequest

FULL_KEYS = 12_000  # K: about 39,000 4 KiB objects loaded in all (3.25 K): 2-3 minutes here
# Short turns, many rounds: two turns a second apart meet the same load from other work on
# the machine (20 s turns did not: their B/A ranged 0.4 .. 3.5). Latency is pooled per phase.
FULL_OPERATIONS = 250  # per GET or PUT turn
FULL_ROUNDS = 12  # per phase; 3,000 GETs and PUTs per cluster and phase: p99 = 30th slowest
QUICK_KEYS = 2_000
QUICK_OPERATIONS = 80
QUICK_ROUNDS = 6
MIN_KEYS = 100  # below this a cluster holds too little to measure anything but overhead
MEASURE_CONCURRENCY = 16  # issue 6 states its latency targets at concurrency 16
LOAD_CONCURRENCY = 64  # the loader only needs throughput
WARMUP_OPERATIONS = 200  # GETs and PUTs before measured rounds: caches are cold after a load
RATE_RATIO_LEAST = 0.90  # issue 6: doubling the keys slows small operations by at most 10%
LIST_RATIO_RANGE = (1.6, 2.5)  # time for twice the keys over time for the keys: "linear"
PHASES = ("half", "same", "doubled")
CLUSTERS = ("A", "B")


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run measures: K, rounds per phase, GETs and PUTs per turn, their concurrency."""

    keys: int = FULL_KEYS
    rounds: int = FULL_ROUNDS
    operations: int = FULL_OPERATIONS
    concurrency: int = MEASURE_CONCURRENCY
    quick: bool = False

    def __post_init__(self) -> None:
        if self.keys < MIN_KEYS or self.keys % 2:
            raise BadRequest(f"--keys must be an even number of at least {MIN_KEYS}: {self.keys}")
        if self.rounds < 1:
            raise BadRequest(f"--rounds must be at least 1: {self.rounds}")
        if self.operations < 10:
            raise BadRequest(f"--operations must be at least 10: {self.operations}")
        if not 1 <= self.concurrency <= 1024:
            raise BadRequest(f"--concurrency must be from 1 to 1024: {self.concurrency}")
        if self.fresh_keys > self.keys // 2:
            # Every PUT adds a key: cluster A must stay nearer K than 2K.
            raise BadRequest(
                f"2 x --rounds x --operations ({self.fresh_keys:,}) fresh keys would grow"
                f" cluster A by more than K/2 ({self.keys // 2:,})"
            )

    @property
    def fresh_keys(self) -> int:
        """The keys cluster A's measured PUTs add over the `same` and `doubled` phases."""
        return 2 * self.rounds * self.operations


# -- samples, summaries and ratios (pure) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpSample:
    """One turn's GETs or PUTs."""

    phase: str
    cluster: str
    round: int
    op: str
    ok: int
    errors: int
    ops_per_s: float


@dataclass(frozen=True, slots=True)
class PooledSample:
    """Every turn of one operation on one cluster in one phase, as one population."""

    phase: str
    cluster: str
    op: str
    ok: int
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class ListSample:
    """One list-keys request: its time to the last byte and the keys it returned."""

    phase: str
    cluster: str
    round: int
    seconds: float
    keys_listed: int
    # Keys the run had written by then. A listing of fewer missed acknowledged writes: a
    # failed PUT, or (seen at W=2) a key on no replica the coverage plan asked yet.
    keys_written: int

    @property
    def us_per_key(self) -> float:
        return self.seconds * 1e6 / max(self.keys_listed, 1)


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of some values, and the least and greatest of them."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        return Spread(statistics.median(values), min(values), max(values)) if values else None

    def show(self, digits: int = 1) -> str:
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}..{self.high:,.{digits}f})"


@dataclass(frozen=True, slots=True)
class TurnSummary:
    """One cluster in one phase: rates and list figures over the rounds, latency pooled."""

    get_rate: Spread | None
    put_rate: Spread | None
    get_p50_ms: float | None
    get_p99_ms: float | None
    put_p50_ms: float | None
    put_p99_ms: float | None
    errors: int
    list_seconds: Spread | None
    keys_listed: Spread | None
    us_per_key: Spread | None
    keys_missing: int  # the largest shortfall of a listing against the keys written


def summarize(
    phase: str,
    cluster: str,
    ops: Sequence[OpSample],
    pooled: Sequence[PooledSample],
    lists: Sequence[ListSample],
) -> TurnSummary:
    ops = [s for s in ops if (s.phase, s.cluster) == (phase, cluster)]
    lists = [s for s in lists if (s.phase, s.cluster) == (phase, cluster)]
    pools = {s.op: s for s in pooled if (s.phase, s.cluster) == (phase, cluster)}
    get, put = pools.get("get"), pools.get("put")
    return TurnSummary(
        get_rate=Spread.of([s.ops_per_s for s in ops if s.op == "get"]),
        put_rate=Spread.of([s.ops_per_s for s in ops if s.op == "put"]),
        get_p50_ms=None if get is None else get.p50_ms,
        get_p99_ms=None if get is None else get.p99_ms,
        put_p50_ms=None if put is None else put.p50_ms,
        put_p99_ms=None if put is None else put.p99_ms,
        errors=sum(s.errors for s in ops),
        list_seconds=Spread.of([s.seconds for s in lists]),
        keys_listed=Spread.of([s.keys_listed for s in lists]),
        us_per_key=Spread.of([s.us_per_key for s in lists]),
        keys_missing=max((s.keys_written - s.keys_listed for s in lists), default=0),
    )


def paired_ratios(per_round: dict[tuple[str, int], float], phase: str) -> list[float]:
    """B/A of every round of `phase` that has both (keys: (cluster, round))."""
    rounds = sorted(n for c, n in per_round if c == "A" and ("B", n) in per_round)
    return [per_round["B", n] / per_round["A", n] for n in rounds if per_round["A", n]]


# -- verdicts (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """One row of the target table.

    `doubled`: B/A per round where B holds twice A's keys, times `scale`; `same`: B/A per
    round where they hold as many. The verdict is on calibrated = doubled / same (medians).
    """

    what: str
    doubled: Spread | None
    same: Spread | None
    least: float
    most: float = math.inf

    @property
    def needed(self) -> str:
        if self.most == math.inf:
            return f">= {self.least:.2f}"
        return f"{self.least:g} .. {self.most:g}"

    @property
    def calibrated(self) -> float | None:
        if self.doubled is None or self.same is None or not self.same.median:
            return None
        return self.doubled.median / self.same.median

    @property
    def met(self) -> bool | None:
        value = self.calibrated
        return None if value is None else self.least <= value <= self.most

    @property
    def word(self) -> str:
        if self.met is None:
            return "not measured"
        if self.met:
            return "met"
        assert self.doubled is not None and self.same is not None
        low, high = self.doubled.low / self.same.median, self.doubled.high / self.same.median
        if high >= self.least and low <= self.most:
            return "**missed** (some rounds meet it: noise?)"
        return "**missed**"


def verdicts(plan: Plan, ops: Sequence[OpSample], lists: Sequence[ListSample]) -> list[Verdict]:
    half, k = plan.keys // 2, plan.keys

    def rates(op: str, phase: str) -> list[float]:
        values = {(s.cluster, s.round): s.ops_per_s for s in ops if (s.op, s.phase) == (op, phase)}
        return paired_ratios(values, phase)

    def per_key(phase: str, scale: float = 1.0) -> list[float]:
        values = {(s.cluster, s.round): s.us_per_key for s in lists if s.phase == phase}
        return [scale * ratio for ratio in paired_ratios(values, phase)]

    rows = [
        Verdict(
            f"4 KiB {op.upper()} ops/s, {2 * k:,} keys / {k:,}",
            Spread.of(rates(op, "doubled")),
            Spread.of(rates(op, "same")),
            RATE_RATIO_LEAST,
        )
        for op in ("get", "put")
    ]
    low, high = LIST_RATIO_RANGE
    same = Spread.of(per_key("same"))
    for phase, base in (("doubled", k), ("half", half)):
        what = f"list-keys time, {2 * base:,} keys / {base:,} (per key, x2)"
        rows.append(Verdict(what, Spread.of(per_key(phase, scale=2.0)), same, low, high))
    return rows


# -- the Markdown section (pure) ---------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _shown(spread: Spread | None, digits: int = 1) -> str:
    return "-" if spread is None else spread.show(digits)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the section says about the run besides its figures."""

    started: datetime
    command: str
    machine: str
    commit: str
    load_before: str
    load_after: str
    elapsed_s: float
    fill_rates: tuple[tuple[str, float], ...] = ()  # (what was loaded, PUTs/s)


def format_section(
    plan: Plan,
    info: RunInfo,
    ops: Sequence[OpSample],
    pooled: Sequence[PooledSample],
    lists: Sequence[ListSample],
) -> str:
    mode = " (quick smoke run: not a measurement)" if plan.quick else ""
    k = plan.keys
    filled = "; ".join(f"{what} at {rate:,.0f} PUTs/s" for what, rate in info.fill_rates)
    lines = [
        f"## {info.started.strftime('%Y-%m-%d %H:%M')} UTC: scaling with the key count{mode}",
        "",
        f"- Command: `{info.command}` ({info.elapsed_s:.0f} s in all)",
        f"- Machine: {info.machine}; load average before {info.load_before},"
        f" after {info.load_after}",
        f"- Code: {info.commit}",
        "- Clusters: two fresh local 3-node clusters side by side, A and B; N=3, R=W=2"
        " (`?r=2`, `?w=2`), durable writes, 4 KiB values, one bucket (key count = object count);"
        f" loaded at c{LOAD_CONCURRENCY}: {filled}",
        f"- Method: three phases of {plan.rounds} rounds. half: A holds {k // 2:,} keys, B"
        f" {k:,}, list-keys only; same: both hold {k:,}+ (the calibration: B/A when nothing"
        f" differs); doubled: B holds twice what A holds ({k:,}+). A round: A and B each list"
        " their keys once (node 1, `?keys=true`), then each runs"
        f" {plan.operations:,} GETs of existing keys (uniform), then each {plan.operations:,}"
        f" PUTs of fresh keys (which add keys), at c{plan.concurrency}; A goes first in odd"
        " rounds, B in even ones, so the two turns of a pair meet the same load."
        f" {WARMUP_OPERATIONS} unmeasured GETs and PUTs on each cluster after each load."
        " Table: ops/s and list figures are medians of the rounds (least..most), latency is"
        " of all a phase's operations; list time is to the response's last byte.",
        "- Verdicts: the median of the rounds' B/A, over the median B/A of the same phase."
        " List-keys is compared per key listed, times 2 (the PUTs add keys between listings).",
        "",
        "| phase | cluster | keys listed | GET ops/s | GET p50 ms | GET p99 ms | PUT ops/s"
        " | PUT p50 ms | PUT p99 ms | errors | list s | list µs/key |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES:
        for cluster in CLUSTERS:
            s = summarize(phase, cluster, ops, pooled, lists)
            missing = f"; a listing missed {s.keys_missing}" if s.keys_missing else ""
            errors = f"{s.errors}{missing}"
            lines.append(
                f"| {phase} | {cluster} | {_shown(s.keys_listed, 0)} | {_shown(s.get_rate)}"
                f" | {_num(s.get_p50_ms, 2)} | {_num(s.get_p99_ms, 2)} | {_shown(s.put_rate)}"
                f" | {_num(s.put_p50_ms, 2)} | {_num(s.put_p99_ms, 2)} | {errors}"
                f" | {_shown(s.list_seconds, 3)} | {_shown(s.us_per_key)} |"
            )
    lines += [
        "",
        "| target (issue 6: scaling is sane) | B/A, B holding 2x | B/A, same keys | calibrated"
        " | needed | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in verdicts(plan, ops, lists):
        lines.append(
            f"| {row.what} | {_shown(row.doubled, 3)} | {_shown(row.same, 3)}"
            f" | {_num(row.calibrated, 3)} | {row.needed} | {row.word} |"
        )
    return "\n".join(lines) + "\n"
