"""Resource bounds of a real node's HTTP service (issue 4): thousands of requests, aborted ones
included, leave its file descriptors and Trio tasks where they started; connections over the
limit get 503 and never hang the node; a 2 GiB PUT and GET keep its memory bounded."""

from __future__ import annotations

import functools
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import blake3
import pytest
import trio

from ringstore.config import StorageConfig
from ringstore.http.server import HttpLimits, listener_port, serve_http
from tests.http.rawclient import RawClient
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration

CHUNK_BYTES = 64 * 1024
MIB = 1024 * 1024
SMALL_CHUNKS = StorageConfig(inline_max=1024, chunk_size=CHUNK_BYTES)  # requests cross chunks
SETTLE_TIMEOUT_S = 20.0  # aborted connections end within the server's linger/close timers
FD_TOLERANCE = 2  # e.g. a trio wakeup or thread-cache fd opened lazily during the run
TASK_TOLERANCE = 2  # e.g. a liveness round in flight when we count
STORED = random.Random(5).randbytes(4 * MIB + 7)  # big enough to be cut mid-response
RANGE = {"Range": "bytes=0-99"}
PUT_HEAD = b"PUT /buckets/b/keys/%s HTTP/1.1\r\nHost: t\r\nContent-Type: a/b\r\n"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def start_lone_node(nursery, tmp_path, storage: StorageConfig) -> Cluster:
    """One real node (LMDB, TCP) configured with n_val 1, so it meets every default quorum."""
    cluster = Cluster(nursery, tmp_path, 1, storage=storage)
    cluster.configs["n1"] = replace(cluster.configs["n1"], n_val=1)
    await cluster.start()
    return cluster


@pytest.fixture
async def one_node(nursery, tmp_path) -> AsyncIterator[Cluster]:
    """A lone node with small chunks, so that ordinary requests cross chunk boundaries."""
    cluster = await start_lone_node(nursery, tmp_path, SMALL_CHUNKS)
    yield cluster
    cluster.stop_all()


async def connect(address: tuple[str, int]) -> RawClient:
    return RawClient(await trio.open_tcp_stream(*address))


async def wait_back_to(fds: int, tasks: int) -> None:
    """Wait until descriptors and tasks are back within tolerance of a baseline."""
    try:
        with trio.fail_after(SETTLE_TIMEOUT_S):
            # Polled: nothing signals a closed descriptor or a finished task.
            while open_fds() > fds + FD_TOLERANCE or count_tasks() > tasks + TASK_TOLERANCE:  # noqa: ASYNC110
                await trio.sleep(0.05)
    except trio.TooSlowError:
        pytest.fail(f"fds {open_fds()} (started at {fds}), tasks {count_tasks()} (at {tasks})")


# -- the kinds of request a worker makes -------------------------------------------------------


# One in 20 requests of a session writes: enough to exercise the write path (chunk files, LMDB
# commits) without the run being a benchmark of this machine's fsync.
SESSION_REQUESTS = 20  # requests on one keep-alive connection before it is closed
# A worker opens a keep-alive session this often, else makes one request on a fresh connection
# (half of them aborted or garbage): about 3 in 4 requests are on keep-alive connections.
SESSION_SHARE = 1 / 8
SESSION_KINDS = ("put",) + ("head",) * 4 + ("range",) * 5 + ("missing",) * 5 + ("ping",) * 5


async def keep_alive_session(address, count: int, rng: random.Random) -> None:
    """`count` mixed requests on one connection."""
    client = await connect(address)
    try:
        for _ in range(count):
            key = f"/buckets/b/keys/k{rng.randrange(50)}"
            kind = rng.choice(SESSION_KINDS)
            if kind == "put":
                value = rng.randbytes(rng.choice([10, 2000, 70_000]))
                reply = await client.request("PUT", key, {"Content-Type": "a/b"}, value)
                assert reply.status == 204
            elif kind == "head":
                assert (await client.request("HEAD", key)).status in (200, 300, 404)
            elif kind == "range":
                reply = await client.request("GET", "/buckets/b/keys/stored", RANGE)
                assert (reply.status, reply.body) == (206, STORED[:100])
            elif kind == "missing":
                assert (await client.request("GET", "/buckets/b/keys/nothing")).status == 404
            else:
                assert (await client.request("GET", "/ping")).body == b"OK"
    finally:
        await client.aclose()


async def fresh_connection(address, rng: random.Random) -> None:
    client = await connect(address)
    try:
        reply = await client.request("GET", "/buckets/b/keys/small")
        assert (reply.status, reply.body) == (200, b"small")
    finally:
        await client.aclose()


async def abort_mid_body(address, rng: random.Random) -> None:
    """A PUT that stops after part of its body: the client hangs up."""
    client = await connect(address)
    size = rng.choice([500, 3 * CHUNK_BYTES])
    await client.send(PUT_HEAD % b"aborted" + b"Content-Length: %d\r\n\r\n" % size)
    await client.send(rng.randbytes(size // 2))
    await client.aclose()


async def abort_mid_response(address, rng: random.Random) -> None:
    """A GET of a large value whose client reads only the start of the answer."""
    client = await connect(address)
    await client.send(b"GET /buckets/b/keys/stored HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await client.read_head()
    assert head.status == 200
    await client.aclose()


async def garbage(address, rng: random.Random) -> None:
    """Bytes that are not HTTP, and a request cut off in its headers."""
    client = await connect(address)
    await client.send(rng.choice([b"NOT HTTP AT ALL\r\n\r\n", b"GET /ping HTTP/1.1\r\nHo"]))
    await client.aclose()


async def run_mix(address, total: int, workers: int, seed: int) -> None:
    """`total` requests from `workers` concurrent clients (see SESSION_SHARE)."""
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        rng = random.Random(seed * 1000 + index)
        one_shots: list[Callable] = [fresh_connection] * 3 + [
            abort_mid_body,
            abort_mid_response,
            garbage,
        ]
        while done < total:
            if rng.random() < SESSION_SHARE:
                count = min(SESSION_REQUESTS, total - done)
                done += count
                await keep_alive_session(address, count, rng)
            else:
                done += 1
                await rng.choice(one_shots)(address, rng)

    async with trio.open_nursery() as nursery:
        for index in range(workers):
            nursery.start_soon(worker, index)


async def hygiene(one_node: Cluster, total: int) -> None:
    address = one_node.nodes["n1"].http_address
    client = await connect(address)
    for key, value in (("stored", STORED), ("small", b"small")):
        reply = await client.request(
            "PUT", f"/buckets/b/keys/{key}", {"Content-Type": "a/b"}, value
        )
        assert reply.status == 204
    await client.aclose()
    await run_mix(address, 200, 4, seed=0)  # warm up: thread pools, lazily opened files
    await wait_back_to(open_fds(), count_tasks())  # quiet again
    fds, tasks = open_fds(), count_tasks()
    await run_mix(address, total, 8, seed=1)
    await wait_back_to(fds, tasks)
    # and the node still serves
    client = await connect(address)
    reply = await client.request("GET", "/buckets/b/keys/stored")
    assert (reply.status, reply.body) == (200, STORED)
    await client.aclose()


async def test_requests_leave_fds_and_tasks_where_they_started(one_node) -> None:
    await hygiene(one_node, 1_000)


@pytest.mark.slow
async def test_20000_requests_leave_fds_and_tasks_where_they_started(one_node) -> None:
    await hygiene(one_node, 20_000)


async def test_connections_over_the_limit_get_503_and_never_hang_the_node(one_node) -> None:
    node = one_node.nodes["n1"]
    limit = 4
    fds, tasks = open_fds(), count_tasks()
    # A second listener on the node's KV with a small limit: Node takes no HTTP limits (reported).
    async with trio.open_nursery() as serving:
        listeners = await serving.start(
            functools.partial(
                serve_http,
                node.coordinator,
                "127.0.0.1",
                0,
                limits=HttpLimits(max_connections=limit),
            )
        )
        limited = ("127.0.0.1", listener_port(listeners[0]))
        held = [await connect(limited) for _ in range(limit)]
        for client in held:
            assert (await client.request("GET", "/ping")).status == 200
        with trio.fail_after(10):
            for _ in range(3 * limit):
                extra = await connect(limited)
                reply = await extra.read_reply()
                assert reply.status == 503
                assert reply.header("Retry-After") == "1"
                assert await extra.closed_by_server()
                await extra.aclose()
            # the node itself never stalled: its own port and the held connections still answer
            main = await connect(node.http_address)
            assert (await main.request("GET", "/ping")).status == 200
            await main.aclose()
            for client in held:
                assert (await client.request("GET", "/buckets/b/keys/x")).status == 404
        for client in held:
            await client.aclose()
        with trio.fail_after(10):  # a freed slot is given back once the server sees the close
            while True:
                again = await connect(limited)
                await again.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
                status = (await again.read_reply()).status
                await again.aclose()
                if status == 200:
                    break
        # Stopping the server (not closing its listener under it) closes the listener too.
        serving.cancel_scope.cancel()
    await wait_back_to(fds, tasks)


# -- the 2 GiB streaming target ----------------------------------------------------------------

STREAM_BYTES = int(os.environ.get("RINGSTORE_STREAM_TEST_BYTES", 2 * 1024**3))
RSS_GROWTH_MAX_BYTES = 200 * MIB  # issue 4: a 2 GiB PUT and GET keep RSS under 200 MiB
RSS_SAMPLE_S = 0.01
PIECE_BYTES = MIB  # what the client generates and sends at a time


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRss:
    """Samples this process's resident memory from a thread, so a busy event loop cannot
    hide a peak."""

    def __init__(self) -> None:
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@pytest.fixture
async def production_node(nursery, tmp_path) -> AsyncIterator[Cluster]:
    """One real node with the production storage settings (1 MiB chunks)."""
    cluster = await start_lone_node(nursery, tmp_path, StorageConfig())
    yield cluster
    cluster.stop_all()


@pytest.mark.slow
async def test_streaming_put_and_get_keep_memory_bounded(production_node) -> None:
    address = production_node.nodes["n1"].http_address
    rng = random.Random(11)
    sent = blake3.blake3()
    client = await connect(address)
    with PeakRss() as rss:
        started = trio.current_time()
        await client.send(
            PUT_HEAD.replace(b"/b/", b"/big/") % b"k" + b"Content-Length: %d\r\n\r\n" % STREAM_BYTES
        )
        remaining = STREAM_BYTES
        while remaining:
            piece = rng.randbytes(min(PIECE_BYTES, remaining))
            sent.update(piece)
            await client.send(piece)
            remaining -= len(piece)
        assert (await client.read_reply()).status == 204
        put_s = trio.current_time() - started

        started = trio.current_time()
        await client.send(b"GET /buckets/big/keys/k HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await client.read_head()
        assert head.status == 200
        assert head.header("Content-Length") == str(STREAM_BYTES)
        received = blake3.blake3()
        async for piece in client.body_pieces(STREAM_BYTES):
            received.update(piece)
        get_s = trio.current_time() - started
    await client.aclose()
    growth = rss.peak - rss.baseline
    print(
        f"\n{STREAM_BYTES / MIB:.0f} MiB: PUT {put_s:.1f} s, GET {get_s:.1f} s,"
        f" RSS {rss.baseline / MIB:.0f} MiB -> peak {rss.peak / MIB:.0f} MiB"
    )
    assert received.digest() == sent.digest()
    assert growth < RSS_GROWTH_MAX_BYTES, f"RSS grew by {growth / MIB:.0f} MiB"
