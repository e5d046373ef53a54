"""TcpTransport over real sockets on 127.0.0.1: plain, mutual TLS, refusals and timeouts."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

from ringstore.config import ConfigError, PeerAddress
from ringstore.errors import PeerUnavailable
from ringstore.net.transport import TcpTransport

DEADLINE_S = 10.0


async def echo(stream: trio.abc.Stream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the tests break connections on purpose


async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = await stream.receive_some(size - len(data))
        assert more, "stream ended early"
        data += more
    return data


async def test_plain_tcp_round_trip_on_an_ephemeral_port() -> None:
    transport = TcpTransport("127.0.0.1", 0)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, echo)
            assert address[0] == "127.0.0.1" and address[1] > 0
            assert transport.bound_address == address
            stream = await TcpTransport().connect(address)
            async with stream:
                await stream.send_all(b"hello peer")
                assert await receive_exactly(stream, 10) == b"hello peer"
            nursery.cancel_scope.cancel()
    assert transport.bound_address is None


async def test_connect_to_a_closed_port_is_unavailable() -> None:
    transport = TcpTransport()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(transport.serve, echo)
        nursery.cancel_scope.cancel()
    with trio.fail_after(DEADLINE_S), pytest.raises(PeerUnavailable, match="cannot connect"):
        await TcpTransport().connect(address)


async def test_connect_times_out_when_the_tls_handshake_never_finishes(tls) -> None:
    silent_server = TcpTransport()  # plain TCP: never answers the client's TLS hello

    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    client = TcpTransport(
        server_ssl_context=tls.server, client_ssl_context=tls.client, connect_timeout_s=0.3
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(silent_server.serve, silent)
        with trio.fail_after(DEADLINE_S), pytest.raises(PeerUnavailable, match="timed out"):
            await client.connect(address)
        nursery.cancel_scope.cancel()


async def test_mutual_tls_round_trip(tls) -> None:
    server = TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)
    client = TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)
    seen: list[trio.abc.Stream] = []

    async def record_and_echo(stream: trio.abc.Stream) -> None:
        seen.append(stream)
        await echo(stream)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, record_and_echo)
            stream = await client.connect(address)
            async with stream:
                assert isinstance(stream, trio.SSLStream)
                await stream.send_all(b"x" * 100_000)
                assert await receive_exactly(stream, 100_000) == b"x" * 100_000
            assert isinstance(seen[0], trio.SSLStream)
            peer_cert = seen[0].getpeercert()
            assert peer_cert is not None and peer_cert.get("subjectAltName")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("client_kind", ["no certificate", "certificate from another CA"])
async def test_mutual_tls_refuses_a_client_without_a_valid_certificate(
    ca: trustme.CA, tls, make_tls, client_kind: str
) -> None:
    if client_kind == "no certificate":
        bad_client = make_tls(ca, client_cert=False).client
    else:
        bad_client = make_tls(trustme.CA()).client
        # Trusts our CA (so it accepts the server) but presents a foreign certificate.
        ca.configure_trust(bad_client)
    server = TcpTransport(server_ssl_context=tls.server, client_ssl_context=tls.client)
    received: list[bytes] = []
    handler_errors: list[BaseException] = []
    refused = trio.Event()

    async def record(stream: trio.abc.Stream) -> None:
        try:
            received.append(await stream.receive_some())
        except trio.BrokenResourceError as exc:
            handler_errors.append(exc)
        refused.set()

    client = TcpTransport(server_ssl_context=tls.server, client_ssl_context=bad_client)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, record)
            try:
                stream = await client.connect(address)
            except PeerUnavailable:
                pass  # refused during the handshake (TLS 1.2 style)
            else:
                # TLS 1.3: the client finishes first and learns of the refusal on first use.
                async with stream:
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"let me in")
                        await stream.receive_some()
            await refused.wait()
            nursery.cancel_scope.cancel()
    assert received == []
    assert isinstance(handler_errors[0].__cause__, ssl.SSLError)


def test_bad_tls_configuration_is_refused(tls) -> None:
    with pytest.raises(ConfigError, match="both"):
        TcpTransport(server_ssl_context=tls.server)
    with pytest.raises(ConfigError, match="both"):
        TcpTransport(client_ssl_context=tls.client)
    lax = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ConfigError, match="client certificates"):
        TcpTransport(server_ssl_context=lax, client_ssl_context=tls.client)
    with pytest.raises(ConfigError, match="port"):
        TcpTransport(port=70000)
    with pytest.raises(ConfigError, match="connect_timeout_s"):
        TcpTransport(connect_timeout_s=0)


async def test_addresses_may_be_peer_addresses_and_bad_ones_are_unavailable() -> None:
    transport = TcpTransport()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(transport.serve, echo)
        stream = await TcpTransport().connect(PeerAddress("b", host, port))
        await stream.aclose()
        for bad in ["b", ("127.0.0.1",), ("127.0.0.1", "80"), ("127.0.0.1", 0), None]:
            with pytest.raises(PeerUnavailable, match="not a \\(host, port\\) address"):
                await TcpTransport().connect(bad)
        nursery.cancel_scope.cancel()
