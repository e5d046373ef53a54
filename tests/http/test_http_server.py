"""The h11 server loop over in-memory streams: framing, limits, timers (on a mock clock),
keep-alive, pipelining, 100-continue, logging and the connection limit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from ringstore.http.server import HttpLimits, HttpServer

if TYPE_CHECKING:
    from conftest import Connect, DictKV, RawClient

PUT_HEAD = b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"


async def assert_nothing_stored(client_factory: Connect) -> None:
    client = await client_factory()
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
    client: RawClient, kv: DictKV, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"\r\nhello")
    reply = await client.read_reply()
    assert reply.status == 411
    assert reply.header("Connection") == "close"
    assert await client.closed_by_server()
    assert kv.put_outcomes == []


@pytest.mark.parametrize("limits", [HttpLimits(max_object_bytes=100)])
async def test_declared_length_over_the_limit_is_413_before_the_body(
    client: RawClient, kv: DictKV, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 101\r\n\r\n")  # no body sent at all
    reply = await client.read_reply()
    assert reply.status == 413
    assert reply.header("Connection") == "close"
    assert await client.closed_by_server()
    assert kv.put_outcomes == []


@pytest.mark.parametrize("limits", [HttpLimits(max_object_bytes=100)])
async def test_chunked_body_over_the_limit_is_413_and_stores_nothing(
    client: RawClient, kv: DictKV, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    chunk = b"x" * 60
    await client.send(
        PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + (b"3c\r\n" + chunk + b"\r\n") * 2
    )
    reply = await client.read_reply()
    assert reply.status == 413
    assert "failed" in (await kv.wait_put_outcomes(1))[0]
    await assert_nothing_stored(connect)


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
    kv: DictKV,
    connect: Connect,
    body: bytes,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await client.send(PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    reply = await client.read_reply()
    assert reply.status == 400
    assert b"malformed request body" in reply.body
    assert "failed" in (await kv.wait_put_outcomes(1))[0]
    await assert_nothing_stored(connect)


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
    client: RawClient, kv: DictKV, raw: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(raw)
    reply = await client.read_reply()
    assert reply.status == 400
    assert await client.closed_by_server()
    assert kv.put_outcomes == []


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
    client: RawClient, kv: DictKV, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 5\r\n\r\nhelloTHIS IS NOT HTTP\r\n\r\n")
    assert (await client.read_reply()).status == 204
    assert (await client.read_reply()).status == 400
    assert await client.closed_by_server()
    assert kv.put_outcomes == ["stored"]
    assert kv.records[(b"b", b"k")].contents[0].inline == b"hello"


async def test_expect_100_continue(client: RawClient) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await client.read_reply()
    assert interim.status == 100
    await client.send(b"hello")
    assert (await client.read_reply()).status == 204


async def test_expect_100_continue_refused_without_reading_the_body(
    client: RawClient, kv: DictKV, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(
        b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    reply = await client.read_reply()
    assert reply.status == 400  # missing Content-Type, answered instead of 100
    assert reply.header("Connection") == "close"
    assert kv.put_outcomes == []


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
    client: RawClient, kv: DictKV, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 10\r\n\r\nabc")
    reply = await client.read_reply()
    assert reply.status == 408
    assert await client.closed_by_server()
    assert "failed" in (await kv.wait_put_outcomes(1))[0]
    await assert_nothing_stored(connect)


@pytest.mark.parametrize("limits", [HttpLimits(send_timeout_s=3)])
async def test_client_that_stops_reading_is_dropped(
    server: HttpServer, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(lockstep=True)
    await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "a/b"}, b"x" * 100)
    await client.send(b"GET /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.fail_after(60):
        while server.statistics().active_connections:  # noqa: ASYNC110
            await trio.sleep(1)  # mock time: advances the clock, not the wall
    assert trio.current_time() >= 3


async def test_client_gone_mid_body_stores_nothing(
    client: RawClient, kv: DictKV, connect: Connect
) -> None:
    await client.send(PUT_HEAD + b"Content-Length: 100\r\n\r\n" + b"a" * 40)
    await client.aclose()
    outcomes = await kv.wait_put_outcomes(1)
    assert "failed" in outcomes[0]
    await assert_nothing_stored(connect)


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
    caplog.set_level(logging.INFO, logger="ringstore.http.connection")
    await client.request("GET", "/buckets/b/keys/k?r=1")
    await client.request("GET", "/ping")
    lines = [r.getMessage() for r in caplog.records if r.name == "ringstore.http.connection"]
    assert len(lines) == 2
    first, second = (line.split() for line in lines)
    assert first[0] == "node=test" and first[1].startswith("req=")
    assert first[2:5] == ["GET", "/buckets/b/keys/k?r=1", "404"]
    assert first[5].endswith("ms")
    assert second[1] != first[1]  # each request has its own id
