"""The h11 server loop over in-memory streams to one node's real KV: framing, limits, timers
(on a mock clock), keep-alive, pipelining, 100-continue, logging and the connection limit."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from rawclient import RawClient

from ringstore.errors import QuorumError
from ringstore.http.connection import error_response
from ringstore.http.messages import Request, Response
from ringstore.http.server import HttpLimits, HttpServer
from tests.http.conftest import CHUNK_BYTES, assert_nothing_stored, wait_settled

if TYPE_CHECKING:
    from tests.http.conftest import Connect, OneNode

PUT_HEAD = b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"


async def assert_not_found(connect: Connect) -> None:
    client = await connect()
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404


async def test_keep_alive_serves_many_requests_on_one_connection(
    client: RawClient, server: HttpServer
) -> None:
    for _ in range(5):
        reply = await client.request("GET", "/ping")
        assert reply.status == 200
        assert reply.header("Connection") is None
        assert (reply.header("Server") or "").startswith("ringstore/")
        assert (reply.header("Date") or "").endswith(" GMT")
    stats = server.statistics()
    assert (stats.connections_total, stats.requests_total) == (1, 5)


async def test_pipelined_requests_are_answered_in_order(client: RawClient) -> None:
    body = b"pipelined"
    await client.send(
        PUT_HEAD
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert (await client.read_reply()).status == 204
    assert (await client.read_reply()).body == body
    assert (await client.read_reply()).body == b"OK"


async def test_put_without_length_or_chunked_is_411(
    client: RawClient, node: OneNode, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"\r\nhello")
    reply = await client.read_reply()
    assert reply.status == 411
    assert reply.header("Connection") == "close"
    assert await client.closed_by_server()
    await assert_nothing_stored(node)


@pytest.mark.parametrize("limits", [HttpLimits(max_object_bytes=100)])
async def test_declared_length_over_the_limit_is_413_before_the_body(
    client: RawClient, node: OneNode, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 101\r\n\r\n")  # no body sent at all
    reply = await client.read_reply()
    assert reply.status == 413
    assert reply.header("Connection") == "close"
    assert await client.closed_by_server()
    await assert_nothing_stored(node)


@pytest.mark.parametrize("limits", [HttpLimits(max_object_bytes=3 * CHUNK_BYTES)])
async def test_chunked_body_over_the_limit_is_413_and_stores_nothing(
    client: RawClient, node: OneNode, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    pieces = [random.Random(i).randbytes(CHUNK_BYTES) for i in range(4)]
    await client.send(
        PUT_HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for piece in pieces)
    )
    reply = await client.read_reply()
    assert reply.status == 413
    # the chunks before the limit reached the disk, but no record names them
    assert node.storage.statistics().chunks >= 1
    await assert_not_found(connect)
    await assert_nothing_stored(node)


async def test_chunked_body_is_accepted(client: RawClient) -> None:
    await client.send(
        PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert (await client.read_reply()).status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == b"hello world"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # chunk size is not hex
        b"5\r\nhelloXX0\r\n\r\n",  # chunk not followed by CRLF
    ],
)
async def test_malformed_chunked_is_400_and_stores_nothing(
    client: RawClient,
    node: OneNode,
    connect: Connect,
    body: bytes,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await client.send(PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    reply = await client.read_reply()
    assert reply.status == 400
    assert b"malformed request body" in reply.body
    await assert_not_found(connect)
    await assert_nothing_stored(node)


@pytest.mark.parametrize("limits", [HttpLimits(max_header_bytes=1024)])
async def test_header_block_too_large_is_431(
    client: RawClient, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    reply = await client.read_reply()
    assert reply.status == 431
    assert await client.closed_by_server()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /ping HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /ping HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nBad Header: v\r\n\r\n",
        PUT_HEAD + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
async def test_malformed_requests_are_400(
    client: RawClient, node: OneNode, raw: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(raw)
    reply = await client.read_reply()
    assert reply.status == 400
    assert await client.closed_by_server()
    await assert_nothing_stored(node)


async def test_unsupported_transfer_encoding_is_501(
    client: RawClient, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Transfer-Encoding: gzip\r\n\r\n")
    assert (await client.read_reply()).status == 501


async def test_unknown_method_is_405_with_allow(client: RawClient) -> None:
    await client.send(b"FROB /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    reply = await client.read_reply()
    assert reply.status == 405
    assert reply.header("Allow") == "DELETE, GET, HEAD, POST, PUT"
    assert (await client.request("GET", "/ping")).status == 200  # small body was drained


async def test_extra_bytes_after_the_body_are_a_bad_next_request(
    client: RawClient, node: OneNode, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 5\r\n\r\nhelloTHIS IS NOT HTTP\r\n\r\n")
    assert (await client.read_reply()).status == 204
    assert (await client.read_reply()).status == 400
    assert await client.closed_by_server()
    stored = await node.replica.get(b"b", b"k")
    assert stored is not None
    assert [content.inline for content in stored.siblings()] == [b"hello"]
    assert node.storage.statistics().objects == 1


async def test_expect_100_continue(client: RawClient) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await client.read_reply()
    assert interim.status == 100
    await client.send(b"hello")
    assert (await client.read_reply()).status == 204


async def test_expect_100_continue_refused_without_reading_the_body(
    client: RawClient, node: OneNode, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(
        b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    reply = await client.read_reply()
    assert reply.status == 400  # missing Content-Type, answered instead of 100
    assert reply.header("Connection") == "close"
    await assert_nothing_stored(node)


async def test_http_1_0_gets_an_answer_and_a_close(client: RawClient) -> None:
    await client.send(b"GET /ping HTTP/1.0\r\n\r\n")
    reply = await client.read_reply()
    assert (reply.status, reply.body) == (200, b"OK")
    assert await client.closed_by_server()


# -- timers (mock clock) -----------------------------------------------------------------------


@pytest.mark.parametrize("limits", [HttpLimits(header_timeout_s=5, idle_timeout_s=100)])
async def test_slow_headers_get_408_and_a_close(
    client: RawClient, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    await client.send(b"GET /ping HTTP/1.1\r\nHo")
    reply = await client.read_reply()
    assert reply.status == 408
    assert await client.closed_by_server()
    assert 5 <= trio.current_time() - start < 100


@pytest.mark.parametrize("limits", [HttpLimits(header_timeout_s=5, idle_timeout_s=30)])
async def test_idle_keep_alive_connection_is_closed_silently(
    client: RawClient, autojump_clock: trio.testing.MockClock
) -> None:
    assert (await client.request("GET", "/ping")).status == 200
    start = trio.current_time()
    assert await client.closed_by_server()
    assert client.buffer == b""  # no 408 for a client that was not sending anything
    assert 30 <= trio.current_time() - start < 31


@pytest.mark.parametrize("limits", [HttpLimits(body_idle_timeout_s=7)])
async def test_slow_body_gets_408_and_stores_nothing(
    client: RawClient, node: OneNode, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    sent = b"a" * (CHUNK_BYTES + 10)  # one whole chunk reaches the disk before the stall
    await client.send(PUT_HEAD + b"Content-Length: %d\r\n\r\n" % (3 * CHUNK_BYTES) + sent)
    reply = await client.read_reply()
    assert reply.status == 408
    assert 7 <= trio.current_time() - start < 8
    assert await client.closed_by_server()
    assert node.storage.statistics().chunks == 1
    await assert_not_found(connect)
    await assert_nothing_stored(node)


@pytest.mark.parametrize("limits", [HttpLimits(body_idle_timeout_s=7)])
async def test_body_idle_timer_restarts_with_each_piece(
    client: RawClient, autojump_clock: trio.testing.MockClock
) -> None:
    """The timer bounds the silence inside a body, not the whole upload."""
    start = trio.current_time()
    await client.send(PUT_HEAD + b"Content-Length: 9\r\n\r\nabc")
    for piece in (b"def", b"ghi"):
        await trio.sleep(5)
        await client.send(piece)
    assert (await client.read_reply()).status == 204
    assert trio.current_time() - start >= 10
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"abcdefghi")


@pytest.mark.parametrize("limits", [HttpLimits(send_timeout_s=3)])
async def test_client_that_stops_reading_is_dropped(
    server: HttpServer,
    connect: Connect,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await connect(lockstep=True)
    await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "a/b"}, b"x" * 100)
    await client.send(b"GET /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.fail_after(60):
        while server.statistics().active_connections:  # noqa: ASYNC110
            await trio.sleep(1)  # mock time: advances the clock, not the wall
    assert trio.current_time() >= 3
    # A client gone is an everyday event, not a server error with a traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("sent", [40, 2 * CHUNK_BYTES + 10])
async def test_client_gone_mid_body_stores_nothing(
    client: RawClient, node: OneNode, server: HttpServer, connect: Connect, sent: int
) -> None:
    body = random.Random(sent).randbytes(sent)  # distinct chunks: each is stored once
    await client.send(PUT_HEAD + b"Content-Length: %d\r\n\r\n" % (4 * CHUNK_BYTES) + body)
    await trio.testing.wait_all_tasks_blocked()  # the server took in all it was sent
    assert node.storage.statistics().chunks == sent // CHUNK_BYTES
    await client.aclose()
    await wait_settled(server)
    await assert_not_found(connect)
    await assert_nothing_stored(node)


# -- connection limit, logging -----------------------------------------------------------------


@pytest.mark.parametrize("limits", [HttpLimits(max_connections=2)])
async def test_connections_over_the_limit_get_503_at_once(
    connect: Connect, server: HttpServer, autojump_clock: trio.testing.MockClock
) -> None:
    first, second = await connect(), await connect()
    for client in (first, second):
        assert (await client.request("GET", "/ping")).status == 200
    third = await connect()
    reply = await third.read_reply()
    assert reply.status == 503
    assert reply.header("Retry-After") == "1"
    assert await third.closed_by_server()
    assert server.statistics().rejected_busy_total == 1
    await first.aclose()
    await trio.testing.wait_all_tasks_blocked()
    fourth = await connect()
    assert (await fourth.request("GET", "/ping")).status == 200


async def test_one_log_line_per_request(
    client: RawClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ringstore.http.connection")
    await client.request("GET", "/buckets/b/keys/k?r=1")
    await client.request("GET", "/ping")
    lines = [r.getMessage() for r in caplog.records if r.name == "ringstore.http.connection"]
    assert len(lines) == 2
    # Fast answers that are not server errors are the access log's DEBUG lines.
    assert {r.levelno for r in caplog.records if r.name == "ringstore.http.connection"} == {
        logging.DEBUG
    }
    first, second = (line.split() for line in lines)
    assert first[0] == "node=test" and first[1].startswith("req=")
    assert first[2:5] == ["GET", "/buckets/b/keys/k?r=1", "404"]
    assert first[5].endswith("ms")
    assert second[1] != first[1]  # each request has its own id


# -- errors the application did not expect -----------------------------------------------------


class FailingApp:
    """An application with a bug: no part of ringstore fails like this on purpose."""

    async def handle(self, request: Request) -> Response:
        if request.path == "/bug":
            raise RuntimeError("a bug")
        return Response(200, [("Content-Type", "text/plain")], b"fine")


async def test_a_bug_in_the_app_is_500_and_the_connection_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ringstore.http.connection")
    server = HttpServer(FailingApp(), node_name="bug")
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    client = RawClient(client_stream)
    reply = await client.request("GET", "/bug")
    assert reply.status == 500
    assert reply.body.startswith(b"Error: internal error (request ")
    assert b"a bug" not in reply.body  # internals stay in the log
    assert any("a bug" in (r.exc_text or "") for r in caplog.records)
    # A server error's access line is logged at INFO, where operators look.
    assert any(
        r.levelno == logging.INFO and r.getMessage().split()[2:5] == ["GET", "/bug", "500"]
        for r in caplog.records
        if r.name == "ringstore.http.connection"
    )
    assert (await client.request("GET", "/fine")).body == b"fine"


def test_error_groups_answer_with_the_error_that_says_most() -> None:
    """A KV call that used a nursery raises a group: the ringstore error in it decides."""
    group = ExceptionGroup("fan-out", [RuntimeError("noise"), QuorumError("w", 0, 2)])
    reply = error_response(ExceptionGroup("outer", [group]), "rid")
    assert reply.status == 503
    assert reply.body == b"w quorum not met: got 0, needed 2\n"
