"""Real nodes in one Trio run: TCP on 127.0.0.1 with ephemeral ports, LMDB on tmp dirs.

Or, given a `MemoryNetwork`, `memory_stores()` and `serve_http=False`, the same nodes on the
in-memory network with in-memory engines and no sockets at all: thread-free, so they run
under `MockClock(autojump_threshold=0)`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from ringstore.config import NodeConfig, PeerAddress, StorageConfig, TlsConfig
from ringstore.coord.api import WriteMeta
from ringstore.net.memnet import MemoryNetwork
from ringstore.node import Node
from ringstore.storage.engine import StorageEngine
from ringstore.storage.memory import MemoryStore

SECRET = b"integration-test-secret"
START_TIMEOUT_S = 20.0
TEXT = WriteMeta(content_type="text/plain")


async def body_of(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


# (node config, the engine of the node's previous run or None) -> the engine for this run.
StorageFactory = Callable[[NodeConfig, StorageEngine | None], StorageEngine]


def memory_stores(wall_clock: Callable[[], float] = time.time) -> StorageFactory:
    """In-memory engines; a restarted node recovers what its previous engine made durable."""

    def make(config: NodeConfig, previous: StorageEngine | None) -> StorageEngine:
        if isinstance(previous, MemoryStore):
            return MemoryStore.recover(previous)
        return MemoryStore(
            ring_size=config.ring_size,
            inline_max=config.storage.inline_max,
            chunk_size=config.storage.chunk_size,
            wall_clock=wall_clock,
        )

    return make


class Cluster:
    """N nodes with a static membership; nodes can be stopped and restarted on their data."""

    def __init__(
        self,
        nursery: trio.Nursery,
        root: Path,
        count: int,
        *,
        network: MemoryNetwork | None = None,
        storage: StorageConfig | None = None,
        ring_size: int = 16,
        tls: TlsConfig | None = None,
        storage_factory: StorageFactory | None = None,
        wall_clock: Callable[[], float] = time.time,
        serve_http: bool = True,
    ) -> None:
        self.nursery = nursery
        self.network = network
        self.storage_factory = storage_factory
        self.wall_clock = wall_clock
        self.serve_http = serve_http
        self.names = [f"n{i}" for i in range(1, count + 1)]
        self.addresses: dict[str, Any] = {}
        members = tuple(PeerAddress(name, "127.0.0.1", 0) for name in self.names)
        self.configs = {
            name: NodeConfig(
                name=name,
                data_dir=root / name,
                http_port=0,
                peer_port=0,
                ring_size=ring_size,
                members=members,
                storage=storage or StorageConfig(inline_max=1024, chunk_size=4096),
                tls=tls,
            )
            for name in self.names
        }
        self.nodes: dict[str, Node] = {}
        self._stopped: dict[str, trio.Event] = {}

    async def start(self) -> None:
        for name in self.names:
            await self.start_node(name)
        await self.wait_all_up()

    async def start_node(self, name: str) -> Node:
        addresses = {n: a for n, a in self.addresses.items() if n != name}
        for other in self.names:
            if other != name and other not in addresses:
                addresses[other] = ("127.0.0.1", 1) if self.network is None else other
        transport = self.network.transport(name) if self.network is not None else None
        storage = None
        if self.storage_factory is not None:
            previous = self.nodes[name].storage if name in self.nodes else None
            storage = self.storage_factory(self.configs[name], previous)
        node = Node(
            self.configs[name],
            secret=SECRET,
            addresses=addresses,
            transport=transport,
            storage=storage,
            wall_clock=self.wall_clock,
            serve_http=self.serve_http,
        )
        self.nodes[name] = node
        stopped = self._stopped[name] = trio.Event()

        async def run(task_status: trio.TaskStatus[Node]) -> None:
            try:
                await node.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run)
        self.addresses[name] = node.peer_address if self.network is None else name
        if self.network is None:
            # Real ephemeral ports: keep the config's port for restarts on the same address.
            host, port = node.peer_address[:2]
            self.configs[name] = replace(self.configs[name], peer_port=port)
            for other in self.nodes.values():
                if other.name != name:
                    other.addresses[name] = (host, port)
        return node

    async def stop_node(self, name: str) -> None:
        self.nodes[name].stop()
        await self._stopped[name].wait()

    async def restart_node(self, name: str) -> Node:
        await self.stop_node(name)
        node = await self.start_node(name)
        await self.wait_all_up()
        return node

    def running(self) -> list[Node]:
        return [n for name, n in self.nodes.items() if not self._stopped[name].is_set()]

    async def wait_until(self, condition, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll a condition spread over several nodes (no single event covers it)."""
        with trio.fail_after(timeout_s):
            while not condition():  # noqa: ASYNC110
                await trio.sleep(0.01)

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], timeout_s: float = START_TIMEOUT_S
    ) -> None:
        """Poll an async condition, such as what a replica's storage holds (no event for it)."""
        with trio.fail_after(timeout_s):
            while not await check():  # noqa: ASYNC110
                await trio.sleep(0.01)

    async def wait_views(self, wanted) -> None:
        """Wait until every running node's up-set satisfies `wanted(node, up_nodes)`."""
        with trio.fail_after(START_TIMEOUT_S):
            for node in self.running():
                while not wanted(node, node.liveness.up_nodes()):
                    await node.liveness.wait_membership_change()

    async def wait_all_up(self) -> None:
        names = {n.name for n in self.running()}
        await self.wait_views(lambda node, up: up >= names)

    async def wait_down(self, name: str) -> None:
        await self.wait_views(lambda node, up: name not in up)

    def stop_all(self) -> None:
        for node in self.running():
            node.stop()
