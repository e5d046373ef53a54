"""A node serving its HTTP API over TLS ([http] tls_cert_file / tls_key_file), with its limits."""

from __future__ import annotations

import ssl
from dataclasses import replace

import pytest
import trio
import trustme

from ringstore.config import HttpConfig
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration


async def request(stream: trio.abc.Stream, raw: bytes) -> bytes:
    await stream.send_all(raw)
    reply = b""
    while b"\r\n\r\n" not in reply:
        data = await stream.receive_some()
        if not data:
            break
        reply += data
    return reply


async def test_https_with_configured_limits(nursery, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    http = HttpConfig(
        max_connections=2,
        header_timeout_s=1.0,
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.pem",
    )
    cluster = Cluster(nursery, tmp_path, 1)
    cluster.configs["n1"] = replace(cluster.configs["n1"], http=http, n_val=1)
    await cluster.start()
    host, port = cluster.nodes["n1"].http_address
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    with trio.fail_after(10):
        tls = trio.SSLStream(
            await trio.open_tcp_stream(host, port), client_context, server_hostname=host
        )
        reply = await request(tls, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200")

        plain = await trio.open_tcp_stream(host, port)
        await plain.send_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await plain.receive_some()
        assert not answer.startswith(b"HTTP/1.1 200")  # plain HTTP on a TLS port gets nowhere
        await plain.aclose()

        second = trio.SSLStream(
            await trio.open_tcp_stream(host, port), client_context, server_hostname=host
        )
        await second.do_handshake()
        third = await trio.open_tcp_stream(host, port)  # over max_connections=2
        refused = await third.receive_some()
        assert refused == b"" or b"503" in refused
        for stream in (tls, second, third):
            await stream.aclose()
    cluster.stop_all()
