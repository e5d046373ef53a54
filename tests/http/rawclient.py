"""A raw HTTP/1.1 client that shares no code with the server: tests send any bytes at all and
read answers byte by byte (used by tests/http and the integration tests over real sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import trio

REPLY_TIMEOUT_S = 120.0  # a reply that takes longer means a hung server (mock clocks jump)


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

    async def read_head(self) -> Reply:
        """Only the status line and headers of the next reply: its body stays unread."""
        with trio.fail_after(REPLY_TIMEOUT_S):
            return await self._read_head()

    async def body_pieces(self, length: int, piece_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The next `length` bytes as they arrive, never held whole (for huge bodies)."""
        remaining = length
        while remaining:
            if not self.buffer and not await self._fill():
                raise EOFError(f"connection closed with {remaining} body bytes to come")
            take = min(remaining, len(self.buffer), piece_bytes)
            piece = bytes(self.buffer[:take])
            del self.buffer[:take]
            remaining -= take
            yield piece

    async def _read_head(self) -> Reply:
        raw_head = (await self._read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = raw_head[:-4].split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return Reply(int(status), reason[0] if reason else "", headers)

    async def _read_reply(self, head: bool) -> Reply:
        reply = await self._read_head()
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
