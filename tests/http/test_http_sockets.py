"""Every bad-input case of the HTTP API over real TCP sockets on 127.0.0.1 to one node's real
KV on LMDB, plus TLS, the connection limit, the public `serve_http` entry point and curl as an
independent client."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trustme

from ringstore.http.server import HttpLimits, listener_port, serve_http
from ringstore.storage.lmdb_store import LmdbStore
from tests.http.conftest import CHUNK_BYTES, assert_nothing_stored, wait_settled

if TYPE_CHECKING:
    from ringstore.coord.kv import Coordinator
    from tests.http.conftest import OneNode, TcpStart

PUT_HEAD = b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
FAST = HttpLimits(header_timeout_s=0.3, body_idle_timeout_s=0.3, idle_timeout_s=5)
BODY = random.Random(4).randbytes(3 * CHUNK_BYTES + 100)  # four distinct chunks


@pytest.fixture
def storage() -> None:
    """No injected engine: the node opens the production one (LMDB and chunk files)."""
    return None


async def stored(open_client, port: int) -> bool:
    client = await open_client(port)
    return (await client.request("GET", "/buckets/b/keys/k")).status == 200


async def test_put_without_length_is_411(start_tcp: TcpStart, open_client, node: OneNode) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    await client.send(PUT_HEAD + b"\r\nbody")
    assert (await client.read_reply()).status == 411
    assert await client.closed_by_server()
    await assert_nothing_stored(node)


@pytest.mark.parametrize("sent", [100, 2 * CHUNK_BYTES + 100])
async def test_short_body_then_hang_up_stores_nothing(
    start_tcp: TcpStart, open_client, node: OneNode, sent: int
) -> None:
    tcp = await start_tcp()
    client = await open_client(tcp.port)
    await client.send(PUT_HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:sent])
    await client.aclose()
    await wait_settled(tcp.server)
    assert not await stored(open_client, tcp.port)
    await assert_nothing_stored(node)


async def test_bytes_beyond_content_length_are_a_rejected_next_request(
    start_tcp: TcpStart, open_client, node: OneNode
) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    await client.send(PUT_HEAD + b"Content-Length: 3\r\n\r\nabcdefgh\r\n\r\n")
    assert (await client.read_reply()).status == 204
    assert (await client.read_reply()).status == 400
    assert await client.closed_by_server()
    stored_object = await node.replica.get(b"b", b"k")
    assert stored_object is not None
    assert [content.inline for content in stored_object.siblings()] == [b"abc"]


async def test_malformed_chunked_is_400_and_stores_nothing(
    start_tcp: TcpStart, open_client, node: OneNode
) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    good = b"%x\r\n" % len(BODY) + BODY + b"\r\n"  # a whole valid chunk, then garbage
    await client.send(PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + good + b"4\r\nabcdXX\r\n")
    assert (await client.read_reply()).status == 400
    assert not await stored(open_client, port)
    await assert_nothing_stored(node)


async def test_header_block_too_large_is_431(start_tcp: TcpStart, open_client) -> None:
    port = (await start_tcp(HttpLimits(max_header_bytes=4096))).port
    client = await open_client(port)
    await client.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n" + b"X-Filler: aaaaaaaa\r\n" * 1000)
    assert (await client.read_reply()).status == 431
    assert await client.closed_by_server()


async def test_slow_headers_get_408_and_a_close(start_tcp: TcpStart, open_client) -> None:
    port = (await start_tcp(FAST)).port
    client = await open_client(port)
    await client.send(b"GET /ping HTTP/1.1\r\n")
    assert (await client.read_reply()).status == 408
    assert await client.closed_by_server()


async def test_slow_body_gets_408_and_stores_nothing(
    start_tcp: TcpStart, open_client, node: OneNode
) -> None:
    port = (await start_tcp(FAST)).port
    client = await open_client(port)
    await client.send(PUT_HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:-1])
    assert (await client.read_reply()).status == 408
    assert await client.closed_by_server()
    assert not await stored(open_client, port)
    await assert_nothing_stored(node)


async def test_object_over_the_limit_is_413_before_the_body(
    start_tcp: TcpStart, open_client, node: OneNode
) -> None:
    port = (await start_tcp(HttpLimits(max_object_bytes=1000))).port
    client = await open_client(port)
    await client.send(PUT_HEAD + b"Content-Length: 5000000\r\n\r\n")
    assert (await client.read_reply()).status == 413
    await assert_nothing_stored(node)


async def test_unknown_method_is_405_with_allow(start_tcp: TcpStart, open_client) -> None:
    client = await open_client((await start_tcp()).port)
    reply = await client.request("FROB", "/buckets/b/keys/k")
    assert reply.status == 405
    assert reply.header("Allow") == "DELETE, GET, HEAD, POST, PUT"


async def test_missing_content_type_is_400(start_tcp: TcpStart, open_client, node: OneNode) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    reply = await client.request("PUT", "/buckets/b/keys/k", {}, b"value")
    assert (reply.status, reply.body) == (400, b"Missing Content-Type request header\n")
    assert not await stored(open_client, port)
    await assert_nothing_stored(node)


async def test_malformed_vclock_is_400(start_tcp: TcpStart, open_client, node: OneNode) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    headers = {"Content-Type": "text/plain", "X-Riak-Vclock": "!!!"}
    assert (await client.request("PUT", "/buckets/b/keys/k", headers, BODY)).status == 400
    assert not await stored(open_client, port)
    await assert_nothing_stored(node)


async def test_unsupported_accept_is_406(start_tcp: TcpStart, open_client) -> None:
    client = await open_client((await start_tcp()).port)
    await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "text/plain"}, b"v")
    reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "application/json"})
    assert reply.status == 406


async def test_digest_mismatch_is_400_and_stores_nothing(
    start_tcp: TcpStart, open_client, node: OneNode
) -> None:
    port = (await start_tcp()).port
    client = await open_client(port)
    wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
    headers = {"Content-Type": "text/plain", "Content-Digest": f"sha-256=:{wrong}:"}
    assert (await client.request("PUT", "/buckets/b/keys/k", headers, BODY)).status == 400
    assert not await stored(open_client, port)
    assert isinstance(node.storage, LmdbStore)
    assert node.storage.statistics().chunks == 4  # on disk before the digest was known...
    await assert_nothing_stored(node)  # ... but never referenced, so swept


async def test_connections_over_the_limit_get_503_and_never_hang(
    start_tcp: TcpStart, open_client
) -> None:
    port = (await start_tcp(HttpLimits(max_connections=2))).port
    first, second = await open_client(port), await open_client(port)
    for client in (first, second):
        assert (await client.request("GET", "/ping")).status == 200
    third = await open_client(port)
    reply = await third.read_reply()
    assert reply.status == 503
    assert await third.closed_by_server()
    await first.aclose()
    with trio.fail_after(10):  # the freed slot is given back once the server sees the close
        while True:
            fourth = await open_client(port)
            await fourth.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
            if (await fourth.read_reply()).status == 200:
                break


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_tls(
    start_tcp: TcpStart, tls: tuple[ssl.SSLContext, ssl.SSLContext], open_client
) -> None:
    server_context, client_context = tls
    port = (await start_tcp(ssl_context=server_context)).port
    # a plain-text client on the TLS port is dropped and does not disturb the server
    plain = await open_client(port)
    await plain.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
    assert await plain.closed_by_server()
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=client_context, https_compatible=True
    )
    client = await open_client(port, stream=stream)
    reply = await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "a/b"}, b"secret")
    assert reply.status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == b"secret"


# -- the public entry point and a client no one here wrote -------------------------------------


async def test_serve_http(kv: Coordinator, nursery: trio.Nursery, open_client) -> None:
    listeners = await nursery.start(
        lambda task_status: serve_http(
            kv, "127.0.0.1", 0, node_name="n1", rng=random.Random(5), task_status=task_status
        )
    )
    client = await open_client(listener_port(listeners[0]))
    reply = await client.request("POST", "/buckets/b/keys", {"Content-Type": "a/b"}, b"v")
    assert reply.status == 201
    assert (await client.request("GET", reply.header("Location") or "")).body == b"v"
    stats = json.loads((await client.request("GET", "/stats")).body)
    assert stats["nodename"] == "n1"
    assert stats["node_puts"] == 1
    assert stats["http_requests_total"] == 3
    assert stats["http_connections_active"] == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl(start_tcp: TcpStart, tmp_path: Path) -> None:
    port = (await start_tcp()).port
    base = f"http://127.0.0.1:{port}"
    value = random.Random(9).randbytes(3 * 1024 * 1024)  # over 1 MiB: curl sends Expect
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(value)

    async def curl(*args: str) -> bytes:
        result = await trio.run_process(
            ["curl", "-sS", "--max-time", "20", *args], capture_stdout=True, capture_stderr=True
        )
        return result.stdout

    status = await curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
        "-H", "Content-Type: application/octet-stream",
        "--data-binary", f"@{source}", f"{base}/buckets/b/keys/big%20one",
    )  # fmt: skip
    assert status == b"204"
    await curl("-o", str(target), f"{base}/buckets/b/keys/big+one")
    assert target.read_bytes() == value
    partial = await curl("-r", "10-19", "-o", "-", f"{base}/buckets/b/keys/big%20one")
    assert partial == value[10:20]
    assert b"riak_kv_wm_ping" in await curl("-H", "Accept: application/json", f"{base}/")
    assert await curl(f"{base}/ping") == b"OK"
