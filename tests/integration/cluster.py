"""Real nodes in one Trio run: TCP on 127.0.0.1 with ephemeral ports, LMDB on tmp dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from ringstore.config import NodeConfig, PeerAddress, StorageConfig, TlsConfig
from ringstore.coord.api import WriteMeta
from ringstore.net.memnet import MemoryNetwork
from ringstore.node import Node

SECRET = b"integration-test-secret"
START_TIMEOUT_S = 20.0
TEXT = WriteMeta(content_type="text/plain")


async def body_of(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


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
    ) -> None:
        self.nursery = nursery
        self.network = network
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
        node = Node(
            self.configs[name], secret=SECRET, addresses=addresses, transport=transport
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
