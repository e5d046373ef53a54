"""The request and response values passed between the h11 server loop and the API handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field


class HttpError(Exception):
    """A response decided before or instead of the handler's own (4xx/5xx, text/plain).

    `close` asks the server to close the connection after sending it: the request's framing
    can no longer be trusted or the body was not read.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)
        self.close = close

    def to_response(self) -> Response:
        return text_response(self.status, self.message, self.headers, close=self.close)


class Headers:
    """Request headers in arrival order, names matched case-insensitively.

    Values are decoded as ISO-8859-1, which maps every byte to one character, so any byte a
    client sent survives a round trip back into a response header.
    """

    __slots__ = ("_items", "_joined")

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = [(name, name.lower(), value) for name, value in items]
        # A handler asks for a dozen names per request; one dict built here answers each
        # in a lookup instead of a scan of every header.
        joined: dict[str, str] = {}
        for _, lower, value in self._items:
            previous = joined.get(lower)
            joined[lower] = value if previous is None else f"{previous}, {value}"
        self._joined = joined

    @classmethod
    def from_h11(cls, raw_items: Iterable[tuple[bytes, bytes]]) -> Headers:
        return cls((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_items)

    def get(self, name: str) -> str | None:
        """All values of `name` joined by ", " (RFC 9110 section 5.3), or None if absent."""
        return self._joined.get(name.lower())

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for _, lower, value in self._items if lower == wanted]

    def items(self) -> list[tuple[str, str]]:
        """(name as the client spelled it, value) pairs in order."""
        return [(name, value) for name, _, value in self._items]

    def prefixed(self, prefix: str) -> list[tuple[str, str]]:
        """(name as the client spelled it, value) of each header whose name starts with
        `prefix` (given in lower case), in order."""
        return [(name, value) for name, lower, value in self._items if lower.startswith(prefix)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined


class RequestBody:
    """The request body as an async iterator of byte pieces, read from the socket on demand.

    Reading is lazy, so a handler that never iterates never reads (the server then drains or
    closes). A failure (timeout, malformed chunked encoding, client gone, too large) is
    raised to whoever iterates, typically inside `KV.put`, so nothing is stored, and is kept
    in `failure` so the server answers with it whatever the handler made of it.
    """

    __slots__ = ("_receive", "declared_length", "received", "finished", "failure")

    def __init__(
        self, receive: Callable[[], Awaitable[bytes | None]], declared_length: int | None
    ) -> None:
        self._receive = receive
        self.declared_length = declared_length
        self.received = 0
        self.finished = False
        self.failure: HttpError | None = None

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self.failure is not None:
            raise self.failure
        if self.finished:
            raise StopAsyncIteration
        try:
            piece = await self._receive()
        except HttpError as exc:
            self.failure = exc
            raise
        if piece is None:
            self.finished = True
            raise StopAsyncIteration
        self.received += len(piece)
        return piece

    async def read_all(self, limit_bytes: int) -> bytes:
        """The whole body, or HttpError 413 once it exceeds `limit_bytes`."""
        if self.declared_length is not None and self.declared_length > limit_bytes:
            raise HttpError(413, f"request body over {limit_bytes} bytes", close=True)
        pieces = []
        async for piece in self:
            pieces.append(piece)
            if self.received > limit_bytes:
                raise HttpError(413, f"request body over {limit_bytes} bytes", close=True)
        return b"".join(pieces)


@dataclass(slots=True)
class Request:
    method: str
    target: str  # the request-target as sent: percent-encoded path and query
    path: str  # the path part of `target`, still percent-encoded
    query: str  # the raw query string (no "?")
    headers: Headers
    body: RequestBody
    request_id: str
    # The metrics label, set by the application that routed the request, so metrics need
    # not route it a second time; None when no application saw it (a framing error).
    operation: str | None = None


@dataclass(frozen=True, slots=True)
class StreamBody:
    """A response body produced piece by piece; `length` None means unknown (chunked).

    `open` is called once per pass over the body; a handler may call it itself first (for
    example to hash the value for Repr-Digest), since values can be read again.
    """

    length: int | None
    open: Callable[[], AsyncIterator[bytes]]


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | StreamBody = b""
    close: bool = False  # close the connection after this response

    @property
    def content_length(self) -> int | None:
        if isinstance(self.body, bytes):
            return len(self.body)
        return self.body.length


async def aclose_iterator(iterator: AsyncIterator[object]) -> None:
    """Close an async iterator that can be closed (async generators can); others need not."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def text_response(
    status: int, message: str, headers: Iterable[tuple[str, str]] = (), *, close: bool = False
) -> Response:
    """A text/plain response whose body is `message` plus a newline, as Riak's error bodies."""
    body = message if message.endswith("\n") else message + "\n"
    return Response(
        status,
        [("Content-Type", "text/plain"), *headers],
        body.encode("utf-8", "replace"),
        close=close,
    )
