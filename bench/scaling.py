"""Measure whether 4 KiB GETs, PUTs and list-keys scale sanely as the key count doubles (issue 6).

Two fresh local 3-node clusters, A and B (N=3, R=W=2), each in a temporary run directory on
free ports, one bucket each (a cluster's key count is its object count). Three phases of
rounds (bench.scaling_report describes them and how they are judged):

- half: A loaded with K/2 keys, B with K; list-keys only (K/2 -> K);
- same: A loaded up to K as well: the calibration, B/A when nothing differs;
- doubled: B loaded up to twice A's keys; GETs, PUTs and list-keys (K -> 2K).

A round: A and B each list their keys (`GET /buckets/B/keys?keys=true` on node 1, keys
counted); each runs a short turn of GETs of existing keys (uniform); each a turn of PUTs of
fresh keys; at concurrency 16, A first in odd rounds, B first in even ones.

Why two clusters, short turns and a calibration, and not one cluster grown from K to 2K as
first written: the machine is shared. One cluster measured its K rounds from 199 to 454
GETs/s as other work came and went (bench/RESULTS.md, 2026-11-29 01:30); a store only grows,
so its K and 2K rounds cannot interleave. Turns of 20 s on two clusters still gave B/A from
0.4 to 3.5 (01:50). Turns of a second, side by side, meet the same load; two clusters alike
still differ by a few per cent (A/A trial: B 5% faster), which the `same` phase measures.

    .venv/bin/python -m bench.scaling            K = 12,000: about 5-6 minutes
    .venv/bin/python -m bench.scaling --quick    K = 2,000: about a minute, a smoke run

The run appends one dated section to bench/RESULTS.md (one write, at the end: others append
to the same file) and stops both clusters however it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from bench.load import HttpClient, OperationFailed
from bench.report import Recorder
from bench.scaling_report import (
    FULL_KEYS,
    FULL_OPERATIONS,
    FULL_ROUNDS,
    LOAD_CONCURRENCY,
    MEASURE_CONCURRENCY,
    QUICK_KEYS,
    QUICK_OPERATIONS,
    QUICK_ROUNDS,
    WARMUP_OPERATIONS,
    ListSample,
    OpSample,
    Plan,
    PooledSample,
    RunInfo,
    format_section,
)
from bench.workload import Target, ValueSize, ValueSource
from cluster.harness import ClusterError, ClusterSpec, LocalCluster, free_port_base
from ringstore.errors import BadRequest, RingstoreError

LOAD_ATTEMPTS = 3  # a loader PUT that fails is retried: a missing key would skew every count
MEASURE_CAP_S = 120.0  # a turn stops here even if its count is not done: always bounded
REQUEST_TIMEOUT_S = 30.0  # one GET or PUT
LIST_TIMEOUT_S = 120.0  # one list-keys request (the node's own listing deadline is 60 s)
VALUE_BYTES = 4096
BUCKET = "scaling"
WARM_UP = "warm-up"  # the phase name of unmeasured turns
QUERY = {"get": "?r=2", "put": "?w=2"}  # R=W=2 of N=3, as the targets
RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"


# -- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help=f"K={QUICK_KEYS}: a smoke run")
    parser.add_argument("--keys", type=int, help=f"K (default {FULL_KEYS}, quick {QUICK_KEYS})")
    parser.add_argument("--rounds", type=int, help=f"default {FULL_ROUNDS}, quick {QUICK_ROUNDS}")
    parser.add_argument(
        "--operations",
        type=int,
        help=f"GETs and PUTs per turn (default {FULL_OPERATIONS}, quick {QUICK_OPERATIONS})",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=MEASURE_CONCURRENCY)
    parser.add_argument(
        "--results", type=Path, default=RESULTS_PATH, help="the Markdown file to append to"
    )
    parser.add_argument("-o", "--output", type=Path, help="also write every sample as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' run directory")
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The Plan the parsed options describe; BadRequest if they describe none."""
    quick = bool(args.quick)

    def chosen(value: int | None, full: int, small: int) -> int:
        return value if value is not None else (small if quick else full)

    return Plan(
        keys=chosen(args.keys, FULL_KEYS, QUICK_KEYS),
        rounds=chosen(args.rounds, FULL_ROUNDS, QUICK_ROUNDS),
        operations=chosen(args.operations, FULL_OPERATIONS, QUICK_OPERATIONS),
        concurrency=args.concurrency,
        quick=quick,
    )


# -- the clusters and the load (I/O) -----------------------------------------------------------


def key_name(index: int) -> str:
    """Fixed width, so a level's keys never change names as the count grows past a power of 10."""
    return f"s{index:09d}"


class _Counter:
    """Indexes handed out in order to any number of workers."""

    def __init__(self, start: int, stop: int) -> None:
        self.next, self.stop = start, stop

    def take(self) -> int | None:
        if self.next >= self.stop:
            return None
        self.next += 1
        return self.next - 1

    def pick(self, rng: random.Random) -> int:
        """The next index, as a key picker (`rng` unused): for a count no larger than stop."""
        index = self.take()
        if index is None:
            raise RuntimeError(f"more than {self.stop} indexes were picked")
        return index


async def _put(client: HttpClient, index: int, values: ValueSource, rng: random.Random) -> int:
    path = f"/buckets/{BUCKET}/keys/{key_name(index)}{QUERY['put']}"
    with trio.fail_after(REQUEST_TIMEOUT_S):
        status, _ = await client.request("PUT", path, values.value(rng))
    return status


class _Tee:
    """Records every outcome in several Recorders: one per turn, one pooled over a phase."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def ok(self, op: str, started: float, ended: float, nbytes: int, *, status: int) -> None:
        for recorder in self.recorders:
            recorder.ok(op, started, ended, nbytes, status=status)

    def error(self, op: str, ended: float, kind: str, detail: str) -> None:
        for recorder in self.recorders:
            recorder.error(op, ended, kind, detail)


async def _one(
    client: HttpClient,
    op: str,
    index: int,
    values: ValueSource,
    rng: random.Random,
    rec: _Tee,
) -> None:
    started = trio.current_time()
    try:
        if op == "put":
            status = await _put(client, index, values, rng)
        else:
            path = f"/buckets/{BUCKET}/keys/{key_name(index)}{QUERY['get']}"
            with trio.fail_after(REQUEST_TIMEOUT_S):
                status, _ = await client.request("GET", path)
    except trio.TooSlowError:
        rec.error(op, trio.current_time(), "timeout", f"no answer in {REQUEST_TIMEOUT_S} s")
        return
    except OperationFailed as exc:
        rec.error(op, trio.current_time(), exc.kind, str(exc))
        return
    ended = trio.current_time()
    # A GET of a key this run wrote must find it: 404 is an error here, unlike in bench.load.
    if status in ((200, 204) if op == "put" else (200,)):
        rec.ok(op, started, ended, VALUE_BYTES, status=status)
    else:
        rec.error(op, ended, f"http_{status}", f"{op.upper()} {key_name(index)} answered {status}")


async def _connected(targets: Sequence[Target], count: int) -> list[HttpClient]:
    clients = [HttpClient(targets[i % len(targets)]) for i in range(count)]
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.connect)
    return clients


async def measure(
    targets: Sequence[Target],
    op: str,
    operations: int,
    concurrency: int,
    pick: Callable[[random.Random], int],
    values: ValueSource,
    seed: str,
    pool: Recorder | None = None,
) -> dict[str, Any]:
    """`operations` GETs or PUTs of the keys `pick` draws: their bench.report report. Each
    outcome is also recorded in `pool`, if given."""
    clients = await _connected(targets, concurrency)
    budget = _Counter(0, operations)
    started = trio.current_time()
    rec = Recorder(started)
    tee = _Tee(rec) if pool is None else _Tee(rec, pool)

    async def worker(index: int) -> None:
        rng = random.Random(f"{seed}/{index}")
        while budget.take() is not None:
            await _one(clients[index], op, pick(rng), values, rng, tee)

    try:
        with trio.move_on_after(MEASURE_CAP_S):
            async with trio.open_nursery() as nursery:
                for index in range(concurrency):
                    nursery.start_soon(worker, index)
        return rec.report(trio.current_time() - started)
    finally:
        for client in clients:
            await client.aclose()


async def fill(targets: Sequence[Target], start: int, stop: int, values: ValueSource) -> float:
    """PUT keys [start, stop) at LOAD_CONCURRENCY, retrying failures; PUTs/s."""
    if stop <= start:
        return 0.0
    clients = await _connected(targets, LOAD_CONCURRENCY)
    indexes = _Counter(start, stop)
    began = trio.current_time()

    async def worker(client: HttpClient, rng: random.Random) -> None:
        while (index := indexes.take()) is not None:
            for attempt in range(LOAD_ATTEMPTS):
                try:
                    if await _put(client, index, values, rng) in (200, 204):
                        break
                except (OperationFailed, trio.TooSlowError):
                    pass
                if attempt == LOAD_ATTEMPTS - 1:
                    raise RuntimeError(f"loading {key_name(index)} failed {LOAD_ATTEMPTS} times")

    try:
        async with trio.open_nursery() as nursery:
            for number, client in enumerate(clients):
                nursery.start_soon(worker, client, random.Random(f"fill/{start}/{number}"))
    finally:
        for client in clients:
            await client.aclose()
    return (stop - start) / max(trio.current_time() - began, 1e-9)


def _list_keys_blocking(url: str) -> tuple[float, int]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=LIST_TIMEOUT_S) as response:
        body = response.read()
    elapsed = time.perf_counter() - began
    return elapsed, len(json.loads(body)["keys"])


async def list_keys(target: Target) -> tuple[float, int]:
    """(seconds to the last byte, keys returned) of one `?keys=true` listing."""
    url = f"{target.url}/buckets/{BUCKET}/keys?keys=true"
    return await trio.to_thread.run_sync(_list_keys_blocking, url)


def _loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass(frozen=True, slots=True)
class Samples:
    """Everything a run measured."""

    ops: list[OpSample] = field(default_factory=list)
    pooled: list[PooledSample] = field(default_factory=list)
    lists: list[ListSample] = field(default_factory=list)
    fill_rates: list[tuple[str, float]] = field(default_factory=list)


class _Store:
    """One cluster as the run sees it: its nodes, how many keys have been written to it (keys
    0 .. written - 1, each once), and every outcome of a phase's turns pooled by operation."""

    def __init__(self, name: str, targets: Sequence[Target], values: ValueSource) -> None:
        self.name, self.targets, self.values = name, targets, values
        self.written = 0
        self._pools: dict[tuple[str, str], tuple[Recorder, float]] = {}

    async def fill(self, stop: int, samples: Samples, progress: Callable[[str], None]) -> None:
        if stop <= self.written:
            return
        progress(f"cluster {self.name}: loading keys {self.written:,}..{stop:,}")
        rate = await fill(self.targets, self.written, stop, self.values)
        samples.fill_rates.append((f"{self.name} {self.written:,} to {stop:,}", rate))
        self.written = stop

    async def list_keys(self, phase: str, number: int, samples: Samples) -> str:
        seconds, listed = await list_keys(self.targets[0])
        samples.lists.append(ListSample(phase, self.name, number, seconds, listed, self.written))
        return f"{self.name} list {seconds:.3f} s, {listed:,} keys"

    async def turn(
        self, phase: str, number: int, op: str, operations: int, concurrency: int
    ) -> OpSample:
        """`operations` GETs of the keys written so far, or PUTs of as many fresh keys."""
        existing = self.written
        fresh = _Counter(existing, existing + operations)

        def pick(rng: random.Random) -> int:
            return rng.randrange(existing) if op == "get" else fresh.pick(rng)

        pool, pooled_s = self._pools.get((phase, op)) or (Recorder(0.0), 0.0)
        seed = f"{self.name}/{phase}/{op}/{number}"
        report = await measure(
            self.targets, op, operations, concurrency, pick, self.values, seed, pool
        )
        self._pools[phase, op] = (pool, pooled_s + report["elapsed_s"])
        if op == "put":
            self.written = fresh.next  # every index tried: a failed PUT shows as a missing key
        totals = report["totals"]
        return OpSample(
            phase, self.name, number, op, totals["ok"], totals["errors"], totals["ops_per_s"]
        )

    def pooled(self) -> list[PooledSample]:
        """Each (phase, operation)'s turns as one population (warm-ups left out)."""
        pooled = []
        for (phase, op), (pool, seconds) in sorted(self._pools.items()):
            if phase != WARM_UP:
                report = pool.report(seconds)
                totals, latency = report["totals"], report["latency_ms"]
                pooled.append(
                    PooledSample(
                        phase,
                        self.name,
                        op,
                        totals["ok"],
                        totals["errors"],
                        seconds,
                        latency["p50"],
                        latency["p99"],
                    )
                )
        return pooled


async def run_paired(
    plan: Plan,
    a_targets: Sequence[Target],
    b_targets: Sequence[Target],
    progress: Callable[[str], None],
) -> Samples:
    """Load and measure the three phases (bench.scaling_report describes them)."""
    values = ValueSource(ValueSize("fixed", VALUE_BYTES, VALUE_BYTES), seed=1)
    a, b = _Store("A", a_targets, values), _Store("B", b_targets, values)
    samples = Samples()

    async def warm_up() -> None:
        for store in (a, b):
            for op in ("get", "put"):
                await store.turn(WARM_UP, 0, op, WARMUP_OPERATIONS, plan.concurrency)

    async def rounds(phase: str, operations: bool) -> None:
        for number in range(1, plan.rounds + 1):
            # A and B take turns at each step, so each pair of turns meets the same load;
            # who goes first alternates, so neither always follows a loaded moment.
            order = (a, b) if number % 2 else (b, a)
            line = [await store.list_keys(phase, number, samples) for store in order]
            for op in ("get", "put") if operations else ():
                for store in order:
                    turn = await store.turn(phase, number, op, plan.operations, plan.concurrency)
                    samples.ops.append(turn)
                    line.append(f"{store.name} {op} {turn.ops_per_s:,.0f}/s")
            progress(f"{phase} round {number}: " + "; ".join(line))

    await a.fill(plan.keys // 2, samples, progress)
    await b.fill(plan.keys, samples, progress)
    await rounds("half", operations=False)
    await a.fill(plan.keys, samples, progress)
    await warm_up()  # both clusters now hold K + WARMUP_OPERATIONS keys
    await rounds("same", operations=True)
    await b.fill(2 * a.written, samples, progress)
    await warm_up()
    await rounds("doubled", operations=True)
    samples.pooled.extend(a.pooled() + b.pooled())
    return samples


async def run_until_terminated(
    plan: Plan,
    a_targets: Sequence[Target],
    b_targets: Sequence[Target],
    progress: Callable[[str], None],
) -> Samples | None:
    """run_paired, or None once a SIGTERM has cancelled it (the caller stops the clusters)."""
    result = None
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    progress("SIGTERM: stopping")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            result = await run_paired(plan, a_targets, b_targets, progress)
            nursery.cancel_scope.cancel()
    return result


# -- the run -----------------------------------------------------------------------------------


def describe_machine() -> str:
    """CPU model and nproc (the CPUs this process may use), RAM, kernel, Python."""
    cpu, memory = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024**2:.1f} GiB RAM"
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return f"{cpu}, nproc {nproc}{memory}; {os.uname().release}; Python {sys.version.split()[0]}"


def describe_commit() -> str:
    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" plus uncommitted changes" if git("status", "--porcelain") else "")


def _interrupt(signum: int, frame: object) -> None:
    # Before and after trio.run (which takes SIGTERM over): the finally stops the clusters.
    raise KeyboardInterrupt


def _start_cluster(run_dir: Path, progress: Callable[[str], None]) -> LocalCluster:
    """A new 3-node cluster in `run_dir`, healthy. Ports are chosen free now, so a second
    cluster is started only after the first one's nodes hold theirs."""
    spec = replace(ClusterSpec.load(), nodes=3).with_port_base(free_port_base(3))
    cluster = LocalCluster.create(spec, run_dir)
    try:
        for slot in cluster.slots:
            cluster.start_node(slot.index)
        progress(f"cluster starting in {cluster.run_dir}")
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = plan_from_args(args)
    except BadRequest as exc:
        parser.error(str(exc))
    for path in (args.results, args.output):
        if path is not None and not path.parent.is_dir():
            parser.error(f"cannot write {path}: {path.parent} is not a directory")

    def progress(line: str) -> None:
        print(f"scaling: {line}", file=sys.stderr, flush=True)

    started, began = datetime.now(UTC), time.monotonic()
    load_before = _loadavg()
    work = Path(tempfile.mkdtemp(prefix="ringstore-scaling-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    clusters: list[LocalCluster] = []
    samples = None
    try:
        for name in ("A", "B"):
            clusters.append(_start_cluster(work / name, progress))
        a_targets, b_targets = ([Target.parse(s.http_url) for s in c.slots] for c in clusters)
        samples = trio.run(run_until_terminated, plan, a_targets, b_targets, progress)
    except (ClusterError, RingstoreError, OSError) as exc:
        print(f"bench.scaling: {exc}", file=sys.stderr)
        return 1
    finally:
        for cluster in clusters:
            cluster.stop()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if samples is None:
        return 128 + signal.SIGTERM
    info = RunInfo(
        started=started,
        command=" ".join([".venv/bin/python -m bench.scaling", *(argv or [])]),
        machine=describe_machine(),
        commit=describe_commit(),
        load_before=load_before,
        load_after=_loadavg(),
        elapsed_s=time.monotonic() - began,
        fill_rates=tuple(samples.fill_rates),
    )
    section = format_section(plan, info, samples.ops, samples.pooled, samples.lists)
    if args.output is not None:
        raw = {"plan": asdict(plan), "info": {**asdict(info), "started": started.isoformat()}}
        raw |= asdict(samples)
        args.output.write_text(json.dumps(raw, indent=1) + "\n")
    with open(args.results, "a") as results:  # one write: others append to this file too
        results.write("\n" + section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
