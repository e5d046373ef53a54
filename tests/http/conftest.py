"""Fixtures for the HTTP layer tests: one real node, an in-memory and a real-socket server on
its KV, and the raw HTTP/1.1 client of rawclient.py.

The node is a real `ringstore.node.Node` alone in its ring (n_val 1, so it meets every default
quorum), on the in-memory peer network, without its own HTTP listener: the tests serve its KV
handle (`node.coordinator`) themselves, over in-memory streams or real sockets. Its engine is
a `MemoryStore` by default (thread-free, so tests may run under `MockClock`); the socket tests
override the `storage` fixture to get the production LMDB engine. Tests observe what was
stored through the node (`node.replica.get`, `node.storage.statistics()`,
`node.storage.sweep`).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from rawclient import RawClient

from ringstore.config import NodeConfig, StorageConfig
from ringstore.coord.kv import Coordinator
from ringstore.http.riak import RiakApp
from ringstore.http.server import HttpLimits, HttpServer, listener_port
from ringstore.net.memnet import MemoryNetwork
from ringstore.node import Node
from ringstore.storage.engine import StorageEngine
from ringstore.storage.memory import MemoryStore

NODE_NAME = "n1"
SECRET = b"http-layer-tests-secret"
RING_SIZE = 8
INLINE_MAX_BYTES = 1024  # values above this are chunked: tests cover both
CHUNK_BYTES = 64 * 1024  # realistic enough, small enough that multi-chunk values stay fast
SETTLE_TIMEOUT_S = 30.0  # connections and uploads end well within this after a client leaves
SWEEP_TIMEOUT_S = 5.0  # an unreferenced chunk is sweepable again within this
STORAGE = StorageConfig(inline_max=INLINE_MAX_BYTES, chunk_size=CHUNK_BYTES)


# ---------------------------------------------------------------------------------------------
# Helpers

OneNode = Node  # what the `node` fixture gives (the name test modules annotate with)


async def start_node(nursery: trio.Nursery, data_dir: Path, storage: StorageEngine | None) -> Node:
    """A real node alone in its ring; `storage=None` gives it the LMDB engine in data_dir."""
    config = NodeConfig(
        name=NODE_NAME,
        data_dir=data_dir,
        http_port=0,
        peer_port=0,
        ring_size=RING_SIZE,
        n_val=1,
        storage=STORAGE,
    )
    node = Node(
        config,
        secret=SECRET,
        transport=MemoryNetwork(random.Random(0)).transport(NODE_NAME),
        storage=storage,
        addresses={},
        rng=random.Random(1),
        serve_http=False,
    )
    await nursery.start(node.run)
    return node


async def wait_settled(server: HttpServer) -> None:
    """Wait until the server has finished every connection (and so every upload)."""
    with trio.fail_after(SETTLE_TIMEOUT_S):
        while server.statistics().active_connections:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def assert_nothing_stored(node: Node) -> None:
    """No object, and every chunk an upload left behind unreferenced: the sweeper removes them.

    Swept until none is left: the engine leaves a chunk it is touching right now for the next
    sweep, but a chunk some record names is never swept, and fails this after the deadline.
    """
    before = node.storage.statistics()
    assert before.objects == 0, before
    removed = 0
    with trio.move_on_after(SWEEP_TIMEOUT_S):
        while node.storage.statistics().chunks:
            removed += await node.storage.sweep(grace_s=0)
            await trio.sleep(0.01)
    after = node.storage.statistics()
    assert (after.objects, after.chunks) == (0, 0), (before, removed, after)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def storage() -> StorageEngine | None:
    """The node's engine; a test module may override this fixture (None: LMDB in tmp_path)."""
    return MemoryStore(ring_size=RING_SIZE, inline_max=INLINE_MAX_BYTES, chunk_size=CHUNK_BYTES)


@pytest.fixture
async def node(
    nursery: trio.Nursery, tmp_path: Path, storage: StorageEngine | None
) -> AsyncIterator[Node]:
    node = await start_node(nursery, tmp_path / NODE_NAME, storage)
    yield node
    node.stop()


@pytest.fixture
def kv(node: Node) -> Coordinator:
    return node.coordinator


@pytest.fixture
def app(kv: Coordinator) -> RiakApp:
    return RiakApp(kv, rng=random.Random(7), wall_clock=time.time)


@pytest.fixture
def limits() -> HttpLimits:
    return HttpLimits()


@pytest.fixture
def server(app: RiakApp, limits: HttpLimits) -> HttpServer:
    return HttpServer(app, limits=limits, node_name="test", rng=random.Random(1))


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
def connect(server: HttpServer, nursery: trio.Nursery) -> Connect:
    """Open an in-memory connection to `server` (no sockets).

    With `lockstep=True` writes block until the other side reads, as a full socket would.
    """

    async def open_connection(*, lockstep: bool = False) -> RawClient:
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        client_stream, server_stream = pair()
        nursery.start_soon(server.handle_stream, server_stream)
        return RawClient(client_stream)

    return open_connection


@pytest.fixture
async def client(connect: Connect) -> RawClient:
    return await connect()


@dataclass(frozen=True)
class TcpServer:
    port: int
    server: HttpServer


TcpStart = Callable[..., Awaitable[TcpServer]]


@pytest.fixture
def start_tcp(app: RiakApp, nursery: trio.Nursery) -> TcpStart:
    """Start a real server on 127.0.0.1 with the given limits."""

    async def start(limits: HttpLimits | None = None, ssl_context=None) -> TcpServer:
        server = HttpServer(app, limits=limits, node_name="tcp")
        listeners = await nursery.start(
            lambda task_status: server.serve(
                "127.0.0.1", 0, ssl_context=ssl_context, task_status=task_status
            )
        )
        return TcpServer(listener_port(listeners[0]), server)

    return start


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """Open RawClients to 127.0.0.1:port (or over a given stream); all closed at the end."""
    opened: list[RawClient] = []

    async def open_(port: int, *, stream: trio.abc.Stream | None = None) -> RawClient:
        client = RawClient(stream or await trio.open_tcp_stream("127.0.0.1", port))
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.aclose()
