"""Fixtures for the HTTP layer tests: a stand-in KV, an in-memory and a real-socket server,
and a raw HTTP/1.1 client that shares no code with the server.

`DictKV` below is a STAND-IN for unit tests of the HTTP layer only. It keeps objects in a
dict and models just enough of the KV contract (siblings, contexts, tombstones, chunked
values, bucket props, Riak's query validation via core/props.py) to exercise every HTTP path.
It is not a model of ringstore's replication. To run these tests against the real KV, change
only the `kv` fixture (for example to a one-node `coord.kv.Coordinator` over a `MemoryStore`);
the tests that look inside the stand-in (`put_outcomes`, `wait_put_outcomes`, `records`,
`fail_with`, `fail_read_with`, its stats and node name) are HTTP-layer unit tests and stay
on it. The others assume nothing about sibling order or listing batches.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from ringstore.coord.api import BodyCheck, GetResult, NodeInfo, PutResult, WriteMeta
from ringstore.core.hashing import chunk_hash
from ringstore.core.props import DEFAULT_PROPS, BucketProps, resolve_options
from ringstore.core.versions import Content
from ringstore.errors import BadContext, NotFound
from ringstore.http.riak import RiakApp
from ringstore.http.server import HttpLimits, HttpServer, listener_port

START_US = 1_700_000_000_000_000  # the stand-in's wall clock starts here (2023-11-14)
REPLY_TIMEOUT_S = 120.0  # a reply that takes longer means a hung server (mock clocks jump)


# ---------------------------------------------------------------------------------------------
# The stand-in KV


@dataclass(frozen=True, slots=True)
class StubObject:
    contents: tuple[Content, ...]

    def siblings(self) -> list[Content]:
        return list(self.contents)

    def is_tombstone(self) -> bool:
        return all(content.deleted for content in self.contents)


@dataclass
class _Record:
    version: int
    contents: tuple[Content, ...]


class DictKV:
    """STAND-IN KV for HTTP-layer unit tests only (see the module docstring)."""

    INLINE_MAX_BYTES = 16  # small, so tests cover both inline and chunked values
    # Tiny chunks and odd-sized read pieces for small values, so chunk edges get exercised;
    # big ones (the curl test's megabytes) use sizes closer to the real store's.
    SMALL_VALUE_BYTES = 4096
    CHUNK_BYTES = (10, 64 * 1024)
    READ_PIECE_BYTES = (7, 64 * 1024 - 1)

    def __init__(self) -> None:
        self.records: dict[tuple[bytes, bytes], _Record] = {}
        self.chunk_store: dict[bytes, bytes] = {}
        self.props: dict[bytes, BucketProps] = {}
        self.now_us = START_US
        self.put_outcomes: list[str] = []
        self._outcome_event = trio.Event()
        self.fail_with: BaseException | None = None  # raised by the next KV call
        self.fail_read_with: BaseException | None = None  # raised by read_value...
        self.fail_read_after = 0  # ... after this many pieces
        self.gets = 0
        self.puts = 0

    # helpers for tests
    def wall_clock(self) -> float:
        return self.now_us / 1_000_000

    async def wait_put_outcomes(self, count: int) -> list[str]:
        with trio.fail_after(REPLY_TIMEOUT_S):
            while len(self.put_outcomes) < count:
                await self._outcome_event.wait()
        return self.put_outcomes

    def _record_outcome(self, outcome: str) -> None:
        self.put_outcomes.append(outcome)
        self._outcome_event.set()
        self._outcome_event = trio.Event()

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    def _props(self, bucket: bytes) -> BucketProps:
        return self.props.get(bucket, DEFAULT_PROPS)

    @staticmethod
    def _context(version: int) -> str:
        return base64.b64encode(f"stub-v{version}".encode()).decode()

    @staticmethod
    def _parse_context(context: str) -> int:
        try:
            text = base64.b64decode(context, validate=True).decode()
            if not text.startswith("stub-v"):
                raise ValueError(text)
            return int(text[len("stub-v") :])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadContext("X-Riak-Vclock is not a valid context") from None

    # the KV protocol
    async def get(self, bucket: bytes, key: bytes, query: Mapping[str, str]) -> GetResult:
        self._maybe_fail()
        resolve_options(self._props(bucket), query, "get")
        self.gets += 1
        record = self.records.get((bucket, key))
        if record is None:
            return GetResult(None, None)
        return GetResult(StubObject(record.contents), self._context(record.version))

    async def put(
        self,
        bucket: bytes,
        key: bytes,
        meta: WriteMeta,
        body: AsyncIterator[bytes],
        context: str | None,
        query: Mapping[str, str],
        check: BodyCheck | None = None,
    ) -> PutResult:
        try:
            self._maybe_fail()
            options = resolve_options(self._props(bucket), query, "put")
            seen = None if context is None else self._parse_context(context)
            pieces = [piece async for piece in body]
            if check is not None:
                check.verify()
        except BaseException as exc:
            self._record_outcome(f"failed: {exc!r}")
            raise
        data = b"".join(pieces)
        self.now_us += 1_000_000
        self.puts += 1
        chunks: tuple[bytes, ...] = ()
        if len(data) > self.INLINE_MAX_BYTES:
            step = self.CHUNK_BYTES[len(data) > self.SMALL_VALUE_BYTES]
            pieces_ = [data[i : i + step] for i in range(0, len(data), step)]
            chunks = tuple(chunk_hash(piece) for piece in pieces_)
            self.chunk_store.update(zip(chunks, pieces_, strict=True))
        content = Content(
            content_type=meta.content_type,
            charset=meta.charset,
            content_encoding=meta.content_encoding,
            user_meta=meta.user_meta,
            links=meta.links,
            size=len(data),
            etag=chunk_hash(data).hex(),
            last_modified_us=self.now_us,
            inline=data if not chunks else None,
            chunks=chunks,
        )
        record = self.records.get((bucket, key))
        if record is None:
            record = self.records[(bucket, key)] = _Record(0, (content,))
        elif self._props(bucket).allow_mult and seen != record.version:
            live = tuple(c for c in record.contents if not c.deleted)
            record.contents = (*live, content)
        else:
            record.contents = (content,)
        record.version += 1
        self._record_outcome("stored")
        result = StubObject(record.contents) if options.returnbody else None
        return PutResult(result, self._context(record.version))

    async def delete(
        self, bucket: bytes, key: bytes, context: str | None, query: Mapping[str, str]
    ) -> None:
        self._maybe_fail()
        resolve_options(self._props(bucket), query, "delete")
        if context is not None:
            self._parse_context(context)
        record = self.records.get((bucket, key))
        if record is None or record.contents[0].deleted and len(record.contents) == 1:
            raise NotFound("not found")
        self.now_us += 1_000_000
        tombstone = Content.tombstone(self.now_us)
        record.contents = (tombstone,)
        record.version += 1

    async def read_value(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        start: int = 0,
        end: int | None = None,
    ) -> AsyncIterator[bytes]:
        data = b"".join(self.chunk_store[h] for h in content.chunks)
        end = len(data) if end is None else end
        step = self.READ_PIECE_BYTES[len(data) > self.SMALL_VALUE_BYTES]
        for count, offset in enumerate(range(start, end, step)):
            await trio.lowlevel.checkpoint()
            if self.fail_read_with is not None and count == self.fail_read_after:
                exc, self.fail_read_with = self.fail_read_with, None
                raise exc
            yield data[offset : min(offset + step, end)]

    async def list_buckets(self) -> AsyncIterator[list[bytes]]:
        self._maybe_fail()
        names = sorted({bucket for bucket, _ in self.records})
        for i in range(0, len(names), 2):
            yield names[i : i + 2]

    async def list_keys(self, bucket: bytes) -> AsyncIterator[list[bytes]]:
        self._maybe_fail()
        names = sorted(key for b, key in self.records if b == bucket)
        for i in range(0, len(names), 2):
            yield names[i : i + 2]

    async def get_props(self, bucket: bytes) -> BucketProps:
        self._maybe_fail()
        return self._props(bucket)

    async def set_props(self, bucket: bytes, props: Mapping[str, object]) -> BucketProps:
        self.props[bucket] = BucketProps.from_json(props, self._props(bucket))
        return self.props[bucket]

    async def reset_props(self, bucket: bytes) -> None:
        self.props.pop(bucket, None)

    def info(self) -> NodeInfo:
        return NodeInfo(
            name="stub@127.0.0.1",
            version="ringstore-test",
            stats={"node_gets": self.gets, "node_puts": self.puts},
        )


# ---------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # the chunks of a chunked body

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return ", ".join(values) if values else None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class RawClient:
    """Speaks HTTP/1.1 by hand over any trio stream, so tests can send any bytes at all."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError(f"connection closed; got {bytes(self.buffer)!r}")
        index = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:index])
        del self.buffer[:index]
        return data

    async def _read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self._fill():
                raise EOFError("connection closed mid-body")
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_reply(self, *, head: bool = False) -> Reply:
        with trio.fail_after(REPLY_TIMEOUT_S):
            return await self._read_reply(head)

    async def _read_reply(self, head: bool) -> Reply:
        raw_head = (await self._read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = raw_head[:-4].split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        reply = Reply(int(status), reason[0] if reason else "", headers)
        if head or reply.status in (204, 304) or 100 <= reply.status < 200:
            return reply
        length = reply.header("content-length")
        if reply.header("transfer-encoding") == "chunked":
            while True:
                size = int((await self._read_until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._read_until(b"\r\n")
                    break
                chunk = await self._read_exact(size)
                await self._read_exact(2)
                reply.chunks.append(chunk)
            reply.body = b"".join(reply.chunks)
        elif length is not None:
            reply.body = await self._read_exact(int(length))
        else:
            while await self._fill():
                pass
            reply.body = bytes(self.buffer)
            self.buffer.clear()
        return reply

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | list[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Reply:
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if not any(name.lower() == "host" for name, _ in items):
            items.insert(0, ("Host", "test"))
        if body is not None and not any(
            name.lower() in ("content-length", "transfer-encoding") for name, _ in items
        ):
            items.append(("Content-Length", str(len(body))))
        lines = [f"{method} {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in items]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        reply = await self.read_reply(head=method == "HEAD")
        while reply.status == 100:
            reply = await self.read_reply(head=method == "HEAD")
        return reply

    async def closed_by_server(self) -> bool:
        """True once the server closes (after any bytes still buffered)."""
        with trio.fail_after(REPLY_TIMEOUT_S):
            while await self._fill():
                pass
        return self.eof

    async def aclose(self) -> None:
        await self.stream.aclose()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def kv() -> DictKV:
    """The one place to swap in the real KV (see the module docstring)."""
    return DictKV()


@pytest.fixture
def app(kv: DictKV) -> RiakApp:
    return RiakApp(kv, rng=random.Random(7), wall_clock=kv.wall_clock)


@pytest.fixture
def limits() -> HttpLimits:
    return HttpLimits()


@pytest.fixture
def server(app: RiakApp, kv: DictKV, limits: HttpLimits) -> HttpServer:
    return HttpServer(
        app, limits=limits, node_name="test", wall_clock=kv.wall_clock, rng=random.Random(1)
    )


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


TcpStart = Callable[..., Awaitable[int]]


@pytest.fixture
def start_tcp(app: RiakApp, kv: DictKV, nursery: trio.Nursery) -> TcpStart:
    """Start a real server on 127.0.0.1 with the given limits; returns its port."""

    async def start(limits: HttpLimits | None = None, ssl_context=None) -> int:
        server = HttpServer(app, limits=limits, node_name="tcp", wall_clock=kv.wall_clock)
        listeners = await nursery.start(
            lambda task_status: server.serve(
                "127.0.0.1", 0, ssl_context=ssl_context, task_status=task_status
            )
        )
        return listener_port(listeners[0])

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
