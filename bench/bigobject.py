"""One large object written to and read back from a running cluster while each node's resident
memory is watched: issue 6's "each node's RSS stays under 200 MiB while a single 2 GiB object
is written and read back".

    python -m bench.bigobject --cluster-json cluster/run/cluster.json [--size 2GiB] [-o F.json]

PUTs one object of `--size` random bytes (made and sent a piece at a time, so the generator
never holds the value and no two chunks are equal) through the first node with `?w=W`, GETs
it back through the second with `?r=R` and compares BLAKE3 of what was sent with BLAKE3 of
what came back, then DELETEs it. A thread reads every node's VmRSS every 10 ms, so a busy
event loop cannot hide a peak. Prints (and with `-o` writes as JSON) each phase's MB/s and each
node's peak RSS per phase; exits 1 if a node passed the limit or the bytes came back wrong.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import h11
import trio

from bench.matrix import RSS_LIMIT_MIB
from bench.workload import Target, format_size, parse_size
from ringstore.errors import BadRequest

MIB = 1024**2
DEFAULT_SIZE = "2GiB"
MAX_SIZE_BYTES = 16 * 1024**3  # bounds the run's time and the replicas' disk
PIECE_BYTES = MIB  # made, hashed and sent at a time
RECEIVE_BYTES = 256 * 1024
IO_TIMEOUT_S = 60.0  # any one connect, send or receive; a replicated write may wait on disks
SAMPLE_INTERVAL_S = 0.01
BUCKET = "bench-bigobject"
PHASES = ("put", "get")


class BigObjectFailed(Exception):
    """The object could not be written or read back whole."""


@dataclass(frozen=True, slots=True)
class NodeProcess:
    name: str
    target: Target
    pid: int


def nodes_of(manifest: dict[str, Any]) -> list[NodeProcess]:
    """The nodes of a cluster.json (scripts/start_cluster.sh writes it), in its order."""
    try:
        nodes = [
            NodeProcess(str(node["name"]), Target.parse(node["http_url"]), int(node["pid"]))
            for node in manifest["nodes"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(
            f"the cluster manifest lacks a node's name, http_url or pid: {exc}"
        ) from None
    if not nodes:
        raise BadRequest("the cluster manifest names no nodes")
    return nodes


def check_size(size: int) -> None:
    if not 1 <= size <= MAX_SIZE_BYTES:
        raise BadRequest(f"the object's size must be from 1 byte to {format_size(MAX_SIZE_BYTES)}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BadRequest(f"process {pid} reports no VmRSS")


class RssWatch:
    """Each node's highest VmRSS seen, read from a thread every SAMPLE_INTERVAL_S."""

    def __init__(self, nodes: Sequence[NodeProcess]) -> None:
        self.nodes = list(nodes)
        self.start = {node.name: rss_bytes(node.pid) for node in self.nodes}
        self.peaks = dict(self.start)
        self._stop = threading.Event()

    def _sample(self) -> None:
        for node in self.nodes:
            try:
                self.peaks[node.name] = max(self.peaks[node.name], rss_bytes(node.pid))
            except (OSError, BadRequest):
                pass  # the node exited: its peak so far stands, and the operation fails

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    @contextmanager
    def phase(self) -> Iterator[dict[str, int]]:
        """Watch for the `with` block; yields the peaks, filled in when it ends."""
        self.peaks = {node.name: rss_bytes(node.pid) for node in self.nodes}
        self._stop.clear()
        thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        thread.start()
        peaks: dict[str, int] = {}
        try:
            yield peaks
        finally:
            self._stop.set()
            thread.join()
            self._sample()
            peaks.update(self.peaks)


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.fail_after(IO_TIMEOUT_S):
        await stream.send_all(data)


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(IO_TIMEOUT_S):
            conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _exchange(
    target: Target,
    method: str,
    path: str,
    *,
    body_size: int = 0,
    body_seed: int = 0,
    sent: Any = None,
    received: Any = None,
) -> tuple[int, dict[bytes, bytes], int]:
    """One request on a fresh connection: (status, response headers, body bytes received).

    A body of `body_size` random bytes from `body_seed` is made and sent a piece at a time,
    each piece fed to `sent`; the response body is fed to `received` as it comes.
    """
    headers = [("Host", target.host_header), ("User-Agent", "ringstore-bench-bigobject")]
    if method == "PUT":
        headers += [("Content-Type", "application/octet-stream")]
        headers += [("Content-Length", str(body_size))]
    conn = h11.Connection(h11.CLIENT)
    try:
        with trio.fail_after(IO_TIMEOUT_S):
            stream = await trio.open_tcp_stream(target.host, target.port)
        async with stream:
            await _send(stream, conn.send(h11.Request(method=method, target=path, headers=headers)))
            rng = random.Random(body_seed)
            remaining = body_size
            while remaining:
                piece = rng.randbytes(min(PIECE_BYTES, remaining))
                sent.update(piece)
                for data in conn.send_with_data_passthrough(h11.Data(data=piece)) or ():
                    await _send(stream, data)
                remaining -= len(piece)
            await _send(stream, conn.send(h11.EndOfMessage()))
            response = await _next_event(stream, conn)
            if not isinstance(response, h11.Response):
                raise BigObjectFailed(f"{method} {path}: no response ({response!r})")
            count = 0
            while not isinstance(event := await _next_event(stream, conn), h11.EndOfMessage):
                if not isinstance(event, h11.Data):
                    raise BigObjectFailed(f"{method} {path}: the response broke off ({event!r})")
                count += len(event.data)
                if received is not None:
                    received.update(event.data)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
        raise BigObjectFailed(f"{method} {target.url}{path}: {exc!r}") from None
    return response.status_code, dict(response.headers), count


async def run_big_object(
    nodes: Sequence[NodeProcess], size: int, *, w: str = "2", r: str = "2", seed: int = 1
) -> dict[str, Any]:
    """PUT, GET back and DELETE one object of `size` bytes; the report (see the top)."""
    check_size(size)
    writer, reader = nodes[0], nodes[1 % len(nodes)]
    path = f"/buckets/{BUCKET}/keys/object-{seed}-{size}"
    watch = RssWatch(nodes)
    report: dict[str, Any] = {
        "size_bytes": size,
        "written_through": writer.name,
        "read_through": reader.name,
        "rss_limit_mib": RSS_LIMIT_MIB,
        "start_rss_mib": {name: value / MIB for name, value in watch.start.items()},
    }
    sent, received = blake3.blake3(), blake3.blake3()
    peaks: dict[str, dict[str, int]] = {}
    with watch.phase() as peaks["put"]:
        started = time.perf_counter()
        status, _, _ = await _exchange(
            writer.target, "PUT", f"{path}?w={w}", body_size=size, body_seed=seed, sent=sent
        )
        put_s = time.perf_counter() - started
    if status not in (200, 204):
        raise BigObjectFailed(f"PUT {path} through {writer.name} answered {status}")
    with watch.phase() as peaks["get"]:
        started = time.perf_counter()
        status, headers, count = await _exchange(
            reader.target, "GET", f"{path}?r={r}", received=received
        )
        get_s = time.perf_counter() - started
    if status != 200:
        raise BigObjectFailed(f"GET {path} through {reader.name} answered {status}")
    delete_status, _, _ = await _exchange(writer.target, "DELETE", path)
    identical = count == size and sent.digest() == received.digest()
    report |= {
        "put": {"seconds": put_s, "mb_per_s": size / put_s / 1e6},
        "get": {"seconds": get_s, "mb_per_s": size / get_s / 1e6, "bytes": count},
        "etag": headers.get(b"etag", b"").decode("latin-1"),
        "identical": identical,
        "delete_status": delete_status,
        "peak_rss_mib": {
            node.name: {phase: peaks[phase][node.name] / MIB for phase in PHASES} for node in nodes
        },
    }
    report["met"] = identical and all(
        peak < RSS_LIMIT_MIB
        for by_phase in report["peak_rss_mib"].values()
        for peak in by_phase.values()
    )
    return report


def summary(report: dict[str, Any]) -> str:
    size = format_size(report["size_bytes"])
    lines = [
        f"{size} PUT through {report['written_through']}: {report['put']['mb_per_s']:.1f} MB/s"
        f" ({report['put']['seconds']:.1f} s); GET through {report['read_through']}:"
        f" {report['get']['mb_per_s']:.1f} MB/s ({report['get']['seconds']:.1f} s); bytes back"
        f" {'identical' if report['identical'] else 'DIFFERENT'}",
    ]
    for name, by_phase in report["peak_rss_mib"].items():
        start = report["start_rss_mib"][name]
        lines.append(
            f"{name}: RSS {start:.0f} MiB before, peak {by_phase['put']:.0f} MiB while written,"
            f" {by_phase['get']:.0f} MiB while read (limit {report['rss_limit_mib']:g} MiB)"
        )
    lines.append("verdict: " + ("met" if report["met"] else "MISSED"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bigobject", description=__doc__)
    parser.add_argument("--cluster-json", type=Path, required=True, help="the cluster's manifest")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="the object's size (2GiB)")
    parser.add_argument("--w", default="2", help="the PUT's write quorum")
    parser.add_argument("--r", default="2", help="the GET's read quorum")
    parser.add_argument("--seed", type=int, default=1, help="the object's bytes (and key)")
    parser.add_argument("-o", "--output", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
        check_size(size)
    except BadRequest as exc:
        parser.error(str(exc))
    try:
        manifest = json.loads(args.cluster_json.read_text())
        nodes = nodes_of(manifest if isinstance(manifest, dict) else {})
    except (OSError, ValueError, BadRequest) as exc:
        parser.error(f"--cluster-json {args.cluster_json}: {exc}")
    try:
        for node in nodes:
            if not node.target.is_loopback():
                raise BadRequest(f"{node.name} is not on this machine: {node.target.url}")
            rss_bytes(node.pid)
        if args.output is not None and not args.output.parent.is_dir():
            raise BadRequest(f"no directory for the report: {args.output.parent}")
    except (OSError, ValueError, BadRequest) as exc:
        parser.error(str(exc))
    try:
        report = trio.run(partial(run_big_object, nodes, size, w=args.w, r=args.r, seed=args.seed))
    except (BadRequest, BigObjectFailed) as exc:
        print(f"bench.bigobject: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
