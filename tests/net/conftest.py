"""Shared fixtures for the peer networking tests: a test CA and mutual-TLS contexts."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trustme
from trio.testing import MockClock

from ringstore.net.memnet import MemoryNetwork
from ringstore.net.rpc import Handler, PeerService
from ringstore.net.transport import TcpTransport


@dataclass(frozen=True)
class TlsPair:
    server: ssl.SSLContext
    client: ssl.SSLContext


def tls_contexts(ca: trustme.CA, *, client_cert: bool = True) -> TlsPair:
    """Contexts for a node whose server cert names 127.0.0.1, signed by `ca`."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    if client_cert:
        ca.issue_cert("ringstore-node").configure_cert(client)
    return TlsPair(server, client)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA) -> TlsPair:
    return tls_contexts(ca)


@pytest.fixture
def make_tls() -> Callable[..., TlsPair]:
    """`make_tls(ca, client_cert=True)`: contexts for odd cases (no cert, another CA)."""
    return tls_contexts


SECRET = b"cluster secret for tests, 32b!!!"


class Cluster:
    """Peer services over one kind of transport, each stoppable and restartable.

    `kind` is "tcp" (real sockets on 127.0.0.1, optionally mutual TLS) or "memory"
    (a MemoryNetwork, meant to run under MockClock). Everything stops with the nursery.
    """

    def __init__(self, kind: str, nursery: trio.Nursery, tls: TlsPair | None = None) -> None:
        self.kind = kind
        self.nursery = nursery
        self.tls = tls
        self.net = MemoryNetwork(random.Random(0)) if kind == "memory" else None
        self.addresses: dict[str, Any] = {}
        self.services: dict[str, PeerService] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}

    def transport(self, name: str, tls: TlsPair | None = None) -> Any:
        if self.net is not None:
            return self.net.transport(name)
        tls = tls or self.tls
        if tls is None:
            return TcpTransport("127.0.0.1", 0)
        return TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)

    async def start(
        self,
        name: str,
        handlers: Mapping[str, Handler] | None = None,
        *,
        secret: bytes = SECRET,
        transport: Any = None,
        **options: Any,
    ) -> PeerService:
        service = PeerService(
            name,
            secret,
            transport or self.transport(name),
            self.addresses,
            handlers or {},
            random.Random(name),
            **options,
        )
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            try:
                with scope:
                    await service.run(task_status=task_status)
            finally:
                stopped.set()

        self.addresses[name] = await self.nursery.start(run)
        self.services[name] = service
        self._scopes[name] = scope
        self._stopped[name] = stopped
        return service

    async def stop(self, name: str) -> None:
        self._scopes[name].cancel()
        await self._stopped[name].wait()


@pytest.fixture(params=["tcp", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock(kind: str) -> MockClock | None:
    """Virtual time for the in-memory network; real time (None) for real sockets."""
    return MockClock(autojump_threshold=0) if kind == "memory" else None


@pytest.fixture
def make_cluster(kind: str) -> Callable[..., Any]:
    @asynccontextmanager
    async def make(tls: TlsPair | None = None) -> AsyncIterator[Cluster]:
        async with trio.open_nursery() as nursery:
            yield Cluster(kind, nursery, tls)
            nursery.cancel_scope.cancel()

    return make
