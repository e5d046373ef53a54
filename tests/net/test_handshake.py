"""Peers that fail the handshake are dropped and nothing they sent reaches a handler.

Covers a wrong secret, a replayed handshake, garbage, a request sent before the handshake,
a silent peer, the wrong node at an address, garbage after a good handshake, and mutual
TLS (a client without a valid certificate never gets to the peer protocol).
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import trio
import trustme

from ringstore.core import wire
from ringstore.errors import PeerUnavailable
from ringstore.net.rpc import PeerService
from ringstore.net.transport import TcpTransport

DEADLINE_S = 10.0
SECRET = b"cluster secret for tests, 32b!!!"  # the one conftest.Cluster uses


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, peer: str, body: dict) -> dict:
        self.calls += 1
        return {"n": self.calls}


class RecordingStream(trio.abc.Stream):
    """Passes everything through and keeps a copy of what was sent."""

    def __init__(self, inner: trio.abc.Stream, sent: bytearray) -> None:
        self.inner = inner
        self.sent = sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingTransport:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent = bytearray()

    async def serve(self, handler: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(handler, task_status=task_status)

    async def connect(self, address: Any) -> trio.abc.Stream:
        return RecordingStream(await self.inner.connect(address), self.sent)


async def raw_connect(cluster: Any, name: str) -> trio.abc.Stream:
    """A connection to `name` that speaks whatever the test sends, not the protocol."""
    return await cluster.transport("mallory").connect(cluster.addresses[name])


def split_frames(data: bytes, *, partial: bool = False) -> list[bytes]:
    """Whole frames in `data`; a trailing incomplete one is an error unless `partial`."""
    frames = []
    while data:
        end = wire.LENGTH_PREFIX_BYTES + int.from_bytes(data[: wire.LENGTH_PREFIX_BYTES], "big")
        if len(data) < end:
            assert partial, "incomplete frame"
            break
        frames.append(data[:end])
        data = data[end:]
    return frames


async def read_until_dropped(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while data := await stream.receive_some():
            received += data
    except trio.BrokenResourceError:
        pass
    return received


async def test_wrong_secret_is_refused_both_ways(make_cluster, clock) -> None:
    counter = Counter()
    async with make_cluster() as cluster:
        b = await cluster.start("b", {"count": counter})
        m = await cluster.start("m", {"count": counter}, secret=b"not the cluster secret!!")
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(PeerUnavailable):
                await m.call("b", "count", {}, timeout_s=5)
            with pytest.raises(PeerUnavailable, match="failed to prove the secret"):
                await b.call("m", "count", {}, timeout_s=5)
        assert counter.calls == 0
        assert b.statistics().handshakes_failed == 1
        assert m.statistics().handshakes_failed == 1
        assert b.statistics().open_connections == m.statistics().open_connections == 0


async def test_replayed_handshake_is_refused(make_cluster, clock) -> None:
    counter = Counter()
    async with make_cluster() as cluster:
        recorder = RecordingTransport(cluster.transport("a"))
        a = await cluster.start("a", transport=recorder)
        b = await cluster.start("b", {"count": counter})
        with trio.fail_after(DEADLINE_S):
            assert await a.call("b", "count", {}, timeout_s=5) == {"n": 1}
            hello, proof, request = split_frames(bytes(recorder.sent))
            stream = await raw_connect(cluster, "b")
            async with stream:
                await stream.send_all(hello)
                challenge = b""  # with a fresh nonce, so the recorded proof must fail
                while len(challenge) < 4 or len(split_frames(challenge, partial=True)) < 1:
                    challenge += await stream.receive_some()
                await stream.send_all(proof + request)
                await read_until_dropped(stream)
        assert counter.calls == 1  # the replayed request never ran
        assert b.statistics().handshakes_failed == 1
        assert b.statistics().requests_handled == 1


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(random.Random(1).randbytes(5000), id="random bytes"),
        pytest.param(b"\xff\xff\xff\xff" + b"x" * 100, id="huge length prefix"),
        pytest.param(b"\x00\x00\x00\x05hello", id="not cbor"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n", id="http request"),
        pytest.param(
            wire.encode_frame(wire.Request(1, "count", {})), id="request before handshake"
        ),
        pytest.param(
            wire.encode_frame(wire.Hello("mallory", os.urandom(wire.NONCE_BYTES)))
            + wire.encode_frame(wire.Request(1, "count", {})),
            id="request instead of proof",
        ),
    ],
)
async def test_garbage_is_dropped(make_cluster, clock, garbage: bytes) -> None:
    counter = Counter()
    async with make_cluster() as cluster:
        b = await cluster.start("b", {"count": counter})
        with trio.fail_after(DEADLINE_S):
            stream = await raw_connect(cluster, "b")
            async with stream:
                await stream.send_all(garbage)
                await read_until_dropped(stream)
        assert counter.calls == 0
        assert b.statistics().handshakes_failed == 1
        assert b.statistics().open_connections == 0


async def test_silent_peer_is_dropped_after_the_handshake_timeout(make_cluster, clock) -> None:
    counter = Counter()
    async with make_cluster() as cluster:
        b = await cluster.start("b", {"count": counter}, handshake_timeout_s=0.5)
        with trio.fail_after(DEADLINE_S):
            # Timed from before the connect: the server's clock starts at its accept, which
            # comes after this and, on a loaded machine, well before the connect returns.
            start = trio.current_time()
            stream = await raw_connect(cluster, "b")
            async with stream:
                assert await read_until_dropped(stream) == b""
            elapsed = trio.current_time() - start
        assert 0.5 <= elapsed < 5
        if clock is not None:
            assert elapsed == pytest.approx(0.5)
        assert b.statistics().handshakes_failed == 1
        assert counter.calls == 0


async def test_wrong_node_at_an_address_is_refused(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"count": Counter()})
        await cluster.start("c", {"count": Counter()})
        cluster.addresses["b"] = cluster.addresses["c"]
        with trio.fail_after(DEADLINE_S), pytest.raises(PeerUnavailable, match="answered as 'c'"):
            await a.call("b", "count", {}, timeout_s=5)
        assert a.statistics().open_connections == 0
        with trio.fail_after(DEADLINE_S):
            assert await a.call("c", "count", {}, timeout_s=5) == {"n": 1}


async def test_garbage_after_the_handshake_drops_the_connection(make_cluster, clock) -> None:
    counter = Counter()
    async with make_cluster() as cluster:
        b = await cluster.start("b", {"count": counter})
        codec = wire.Connection(wire.Role.CLIENT, "mallory", SECRET, os.urandom(wire.NONCE_BYTES))
        with trio.fail_after(DEADLINE_S):
            stream = await raw_connect(cluster, "b")
            async with stream:
                while True:
                    event = codec.next_event()
                    await stream.send_all(codec.data_to_send())
                    if isinstance(event, wire.Established):
                        break
                    codec.receive_data(await stream.receive_some())
                await stream.send_all(codec.send(wire.Request(7, "count", {})))
                while not isinstance(event := codec.next_event(), wire.Reply):
                    assert event is wire.NEED_DATA
                    codec.receive_data(await stream.receive_some())
                assert event == wire.Reply(7, True, {"n": 1})
                await stream.send_all(b"\x00\x00\x00\x03\xff\xff\xff")
                await read_until_dropped(stream)
        assert counter.calls == 1
        assert b.statistics().connections_accepted == 1
        assert b.statistics().handshakes_failed == 0
        assert b.statistics().open_connections == 0


async def test_mutual_tls_calls(tls) -> None:
    counter = Counter()
    addresses: dict[str, Any] = {}

    def service(name: str) -> PeerService:
        transport = TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)
        rng = random.Random(name)
        return PeerService(name, SECRET, transport, addresses, {"count": counter}, rng)

    a, b = service("a"), service("b")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            addresses["a"] = await nursery.start(a.run)
            addresses["b"] = await nursery.start(b.run)
            assert await a.call("b", "count", {}, timeout_s=5) == {"n": 1}
            assert await b.call("a", "count", {}, timeout_s=5) == {"n": 2}
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("client_kind", ["no certificate", "certificate from another CA"])
async def test_mutual_tls_refuses_a_client_without_a_valid_certificate(
    ca: trustme.CA, tls, make_tls, client_kind: str
) -> None:
    counter = Counter()
    if client_kind == "no certificate":
        bad_client = make_tls(ca, client_cert=False).client
    else:
        bad_client = make_tls(trustme.CA()).client
        ca.configure_trust(bad_client)  # it trusts the server, but the server does not trust it
    addresses: dict[str, Any] = {}
    good = TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)
    bad = TcpTransport(server_ssl_context=tls.server, client_ssl_context=bad_client)
    b = PeerService("b", SECRET, good, addresses, {"count": counter}, random.Random(1))
    m = PeerService("m", SECRET, bad, addresses, {}, random.Random(2))
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            addresses["b"] = await nursery.start(b.run)
            await nursery.start(m.run)
            with pytest.raises(PeerUnavailable):
                await m.call("b", "count", {}, timeout_s=5)
            nursery.cancel_scope.cancel()
    assert counter.calls == 0
    assert b.statistics().handshakes_failed == 1
    assert b.statistics().connections_accepted == 0
