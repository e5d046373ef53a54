"""Storage benchmark: durable puts and gets through the LMDB engine against the disk's own rates.

    .venv/bin/python -m bench.storage [--seconds 3] [--dir DIR] [--no-record]

Cases, each bounded by time and count, each on a fresh engine directory under `--dir` (the
disk under test; by default the system's temporary directory):
- put and get of 4 KiB values (inline records) and 1 MiB values (one chunk file each), with
  1 and with 64 concurrent writers (readers for gets, on the keys the puts wrote);
- reference (a): the same engine with `max_batch_ops=1`, one put per transaction, 4 KiB, with
  64 concurrent writers: what the engine would do without group commit;
- reference (b): one fsync per 4 KiB write, one writer, on the same disk;
- reference (c): the disk's sequential write bandwidth, one large file fsynced at the end.
Targets (issue 2, section 4): with 64 writers, 4 KiB puts/s >= 5x reference (a); 1 MiB puts
move >= 30% of reference (c). The table goes to stdout and, with the machine and the date,
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb
import trio

from ringstore.storage.lmdb_store import LmdbStore

KIB = 1024
MIB = 1024 * KIB
MB = 1_000_000  # bandwidth in MB/s, as disks are quoted
SMALL_BYTES = 4 * KIB
LARGE_BYTES = 1 * MIB
MANY_WRITERS = 64
CASE_SECONDS = 3.0  # per case: long enough for hundreds of commits on a slow disk
MAX_CASE_BYTES = 1024 * MIB  # per case: bounds the disk space one case takes
MAX_CASE_OPS = 50_000  # per case: bounds the keys a get case reads back
SEQUENTIAL_BYTES = 512 * MIB  # reference (c): far past the disk's write cache...
SEQUENTIAL_SECONDS = 10.0  # ...unless the disk is so slow that this comes first
SMALL_TARGET_RATIO = 5.0
LARGE_TARGET_RATIO = 0.30
RESULTS = Path(__file__).with_name("RESULTS.md")
BUCKET = b"bench"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    concurrency: int
    ops: int
    seconds: float
    bytes_moved: int
    cpu_seconds: float
    latencies: tuple[float, ...]  # seconds, sorted

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes_moved / self.seconds / MB

    def latency_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, int(fraction * len(self.latencies)))
        return 1000 * self.latencies[index]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    name: str,
    concurrency: int,
    op: Callable[[int], Awaitable[int]],
    seconds: float,
    max_ops: int,
) -> Result:
    """Run `op(n)` (returning the bytes it moved) from `concurrency` tasks until either bound."""
    latencies: list[float] = []
    moved = 0
    next_n = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal moved, next_n
        while next_n < max_ops and time.perf_counter() < deadline:
            n, next_n = next_n, next_n + 1
            start = time.perf_counter()
            size = await op(n)
            latencies.append(time.perf_counter() - start)
            moved += size  # not `moved += await ...`: that reads `moved` before awaiting

    cpu_start, start = cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return Result(
        name,
        concurrency,
        len(latencies),
        elapsed,
        moved,
        cpu_seconds() - cpu_start,
        tuple(latencies),
    )


def value_of(n: int, size: int, filler: bytes) -> bytes:
    """A distinct value per n (chunks are content-addressed: equal values would be free)."""
    return n.to_bytes(8, "big") + filler[: size - 8]


def key_of(n: int) -> bytes:
    return b"key-%08d" % n


async def put_value(store: LmdbStore, n: int, size: int, filler: bytes) -> int:
    """Store a value as a coordinator does: inline up to inline_max, else as a chunk."""
    value = value_of(n, size, filler)
    if size <= store.inline_max:
        await store.put_record(BUCKET, key_of(n), value, [])
    else:
        chunk = await store.write_chunk(value)
        await store.put_record(BUCKET, key_of(n), b"", [chunk])
    return size


async def get_value(store: LmdbStore, n: int) -> int:
    stored = await store.get_record(BUCKET, key_of(n))
    assert stored is not None
    if not stored.chunks:
        return len(stored.record)
    return sum([len(await store.read_chunk(chunk)) for chunk in stored.chunks])


async def engine_cases(
    root: Path, size: int, concurrency: int, seconds: float, **params: int
) -> list[Result]:
    """Puts into a fresh engine, then gets of what they wrote (unless group commit is off)."""
    directory = Path(tempfile.mkdtemp(dir=root, prefix="engine-"))
    filler = os.urandom(size)
    max_ops = min(MAX_CASE_OPS, MAX_CASE_BYTES // size)
    label = f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB"
    reference = params.get("max_batch_ops") == 1
    try:
        store = LmdbStore(directory, **params)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            name = f"put {label}" + (", one put per transaction (a)" if reference else "")
            put = await drive(
                name, concurrency, lambda n: put_value(store, n, size, filler), seconds, max_ops
            )
            results = [put]
            if not reference:
                written = put.ops
                get = await drive(
                    f"get {label}",
                    concurrency,
                    lambda n: get_value(store, n % written),
                    seconds,
                    max_ops,
                )
                results.append(get)
            await store.aclose()
        return results
    finally:
        shutil.rmtree(directory)


def fsync_per_write(root: Path, seconds: float, max_ops: int) -> Result:
    """Reference (b): append 4 KiB and fsync, one writer, as one-commit-per-write would."""
    path = Path(tempfile.mkstemp(dir=root, prefix="fsync-")[1])
    block = os.urandom(SMALL_BYTES)
    latencies = []
    fd = os.open(path, os.O_WRONLY)
    try:
        cpu_start, start = cpu_seconds(), time.perf_counter()
        deadline = start + seconds
        while len(latencies) < max_ops and time.perf_counter() < deadline:
            began = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    return Result(
        "fsync per 4 KiB write (b)",
        1,
        len(latencies),
        elapsed,
        len(latencies) * SMALL_BYTES,
        cpu_seconds() - cpu_start,
        tuple(latencies),
    )


def sequential_write(root: Path, total_bytes: int, seconds: float) -> Result:
    """Reference (c): one large file in 1 MiB writes, fsynced once at the end."""
    path = Path(tempfile.mkstemp(dir=root, prefix="sequential-")[1])
    block = os.urandom(LARGE_BYTES)
    written = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        cpu_start, start = cpu_seconds(), time.perf_counter()
        deadline = start + seconds
        while written < total_bytes and time.perf_counter() < deadline:
            written += os.write(fd, block)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return Result(
        "sequential write, fsync at end (c)",
        1,
        written // LARGE_BYTES,
        elapsed,
        written,
        cpu_seconds() - cpu_start,
        (),
    )


def machine(root: Path) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    free_gib = shutil.disk_usage(root).free / 1024**3
    return (
        f"{os.cpu_count()} CPUs ({cpu}); disk under test {mount_of(root)}, "
        f"{free_gib:.0f} GiB free; load average {os.getloadavg()[0]:.1f} at the start; "
        f"Python {platform.python_version()}, py-lmdb {lmdb.__version__} "
        f"(LMDB {'.'.join(map(str, lmdb.version()))}), trio {trio.__version__}"
    )


def mount_of(path: Path) -> str:
    """`<directory> on <device> (<filesystem>)`, from /proc/mounts."""
    best = ("", "?", "?")
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, point, fstype = line.split()[:3]
                inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, device, fstype)
    except OSError:
        pass
    return f"{resolved} on {best[1]} ({best[2]})"


def table(results: list[Result]) -> str:
    lines = [
        "| case | concurrency | ops | s | ops/s | MB/s | p50 ms | p99 ms | CPU ms/op |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.ops} | {r.seconds:.2f} | {r.rate:,.0f} "
            f"| {r.mb_per_s:,.1f} | {r.latency_ms(0.5):.2f} | {r.latency_ms(0.99):.2f} "
            f"| {1000 * r.cpu_seconds / max(r.ops, 1):.3f} |"
        )
    return "\n".join(lines)


def verdicts(results: list[Result]) -> str:
    by_name = {(r.name, r.concurrency): r for r in results}
    small = by_name["put 4 KiB", MANY_WRITERS]
    single = by_name["put 4 KiB", 1]
    unbatched = by_name["put 4 KiB, one put per transaction (a)", MANY_WRITERS]
    large = by_name["put 1 MiB", MANY_WRITERS]
    sequential = by_name["sequential write, fsync at end (c)", 1]
    fsyncs = by_name["fsync per 4 KiB write (b)", 1]
    small_ratio = small.rate / unbatched.rate
    large_ratio = large.mb_per_s / sequential.mb_per_s
    small_verdict = "met" if small_ratio >= SMALL_TARGET_RATIO else "MISSED"
    large_verdict = "met" if large_ratio >= LARGE_TARGET_RATIO else "MISSED"
    return "\n".join(
        [
            f"- 4 KiB puts, {MANY_WRITERS} writers: {small.rate:,.0f}/s = {small_ratio:.1f}x the "
            f"one-put-per-transaction rate of {unbatched.rate:,.0f}/s (target >= "
            f"{SMALL_TARGET_RATIO:g}x): {small_verdict}; {small.rate / single.rate:.1f}x one "
            f"writer's {single.rate:,.0f}/s (also one put per transaction); "
            f"{small.rate / fsyncs.rate:.1f}x the disk's {fsyncs.rate:,.0f} fsyncs/s",
            f"- 1 MiB puts, {MANY_WRITERS} writers: {large.mb_per_s:,.1f} MB/s = "
            f"{100 * large_ratio:.0f}% of the sequential write bandwidth of "
            f"{sequential.mb_per_s:,.1f} MB/s (target >= {100 * LARGE_TARGET_RATIO:.0f}%): "
            f"{large_verdict}",
        ]
    )


async def run_all(root: Path, seconds: float) -> list[Result]:
    results = []
    for size in (SMALL_BYTES, LARGE_BYTES):
        for concurrency in (1, MANY_WRITERS):
            results += await engine_cases(root, size, concurrency, seconds)
    results += await engine_cases(root, SMALL_BYTES, MANY_WRITERS, seconds, max_batch_ops=1)
    results.append(fsync_per_write(root, seconds, MAX_CASE_OPS))
    results.append(sequential_write(root, SEQUENTIAL_BYTES, SEQUENTIAL_SECONDS))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=CASE_SECONDS, help="bound per case")
    parser.add_argument("--dir", type=Path, default=None, help="where the disk under test is")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="a line for RESULTS.md (what changed)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="ringstore-bench-"))
    try:
        about = machine(root)
        print(about, flush=True)
        results = trio.run(run_all, root, args.seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = "\n\n".join([table(results), verdicts(results)])
    print(report)
    if not args.no_record:
        command = f".venv/bin/python -m bench.storage --seconds {args.seconds:g}"
        if args.dir is not None:
            command += f" --dir {args.dir}"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = [f"## Storage engine: bench/storage.py, {stamp}", ""]
        if args.note:
            section += [args.note, ""]
        section += [f"Command: `{command}`", "", f"Machine: {about}", "", report, ""]
        new_file = not RESULTS.exists()
        with RESULTS.open("a") as out:
            if new_file:
                out.write("# Benchmark results\n\n")
            out.write("\n".join(section) + "\n")
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
