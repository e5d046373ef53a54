"""One client connection: an h11 state machine driven over a Trio stream, bounded in time
and memory.

The cycle, one task per connection (h11 keeps the protocol state, this module does the I/O):

    read request head   -- idle timer until the first byte, then the header timer (-> 408);
                           the head is bounded by `max_header_bytes` (-> 431)
    framing checks      -- PUT/POST need Content-Length or chunked (411); a declared
                           length over the object limit is refused before any body (413);
                           both Content-Length and Transfer-Encoding is refused (400)
    app.handle(request) -- the body is read only as the handler iterates it, one socket
                           read at a time, each under the body idle timer (-> 408)
    send response       -- the first body piece is fetched before the status line, so an
                           early failure still gets an honest status; each write has a timer
    keep alive or close -- an unread small body is drained; anything else closes, after a
                           short "lingering" read so the client sees our answer, not a reset

The idle and header timers are a deadline the connection keeps as a number and one watchdog
task per connection that cancels the connection when it passes: a cancel scope per request
costs about 15 us of CPU to enter and leave, a visible share of a small GET. The watchdog
looks again at least every `_watch_interval` seconds, so a deadline moved closer (the
header timer starting at a request's first byte) is kept to the instant.

Errors from the handler map to statuses here: `HttpError` as given,
`ringstore.errors.RingstoreError` to its `http_status` (QuorumError 503), anything else 500
with the traceback in the log.
"""

from __future__ import annotations

import functools
import http
import importlib.metadata
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import h11
import trio

from ringstore.core.httpsem import format_http_date
from ringstore.core.writes import coalesced
from ringstore.errors import RingstoreError
from ringstore.http.messages import (
    Headers,
    HttpError,
    Request,
    RequestBody,
    Response,
    StreamBody,
    aclose_iterator,
    text_response,
)

log = logging.getLogger(__name__)

RECEIVE_BYTES = 64 * 1024  # one socket read of a request head
# One socket read of a request body with at least this much still to come (or chunked), and
# so the largest body piece handed to KV.put: fewer trips through h11 per MiB of upload.
BODY_RECEIVE_BYTES = 256 * 1024
DRAIN_MAX_BYTES = 64 * 1024  # an unread body this small is read and dropped to keep alive
LINGER_TIMEOUT_S = 2.0  # after a close with input pending, how long we read and drop it
LINGER_MAX_BYTES = 1024 * 1024  # ... and how much: enough for the client to see our answer
CLOSE_TIMEOUT_S = 1.0  # a graceful close (TLS close_notify) that takes longer is forced
LOGGED_TARGET_CHARS = 200  # request-targets are cut to this in log lines
# From the installed distribution: `ringstore.__version__` is missing when the editable
# install maps `ringstore` as a namespace package (as the current .venv does).
SERVER_HEADER = f"ringstore/{importlib.metadata.version('ringstore')}"
_SERVER_FIELD = (b"Server", SERVER_HEADER.encode("ascii"))  # in every response: encoded once
BODY_METHODS = frozenset({"PUT", "POST"})
NO_BODY_STATUSES = frozenset({204, 304})
# A response body up to this size goes out in one write with the head (one syscall, one
# timer); larger pieces are written on their own, never copied into a joined buffer.
COALESCE_BODY_BYTES = 64 * 1024
# Successful requests are logged at DEBUG (an access log costs a visible share of a small
# request's time); server errors and requests slower than this are logged at INFO.
SLOW_REQUEST_S = 1.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-node bounds of the HTTP server: every timer and size a client could stretch."""

    max_connections: int = 1024  # beyond this, new connections get 503 and are closed
    max_header_bytes: int = 64 * 1024  # request line + headers; a vclock plus metadata fits
    max_object_bytes: int = 5 * 1024**3  # values stream in chunks: this guards disk, not RAM
    idle_timeout_s: float = 60.0  # keep-alive connection with no new request
    header_timeout_s: float = 15.0  # from a request's first byte to the end of its headers
    body_idle_timeout_s: float = 30.0  # longest silence inside a request body
    send_timeout_s: float = 60.0  # longest a single write may wait on a slow reader

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_header_bytes", "max_object_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"HttpLimits.{name} must be a positive integer")
        for name in (
            "idle_timeout_s",
            "header_timeout_s",
            "body_idle_timeout_s",
            "send_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpLimits.{name} must be positive")


class App(Protocol):
    async def handle(self, request: Request) -> Response: ...


class RequestObserver(Protocol):
    """Told about every request once its response is over (metrics count them this way)."""

    def request_done(self, request: Request | None, status: int, duration_s: float) -> None:
        """`request` is None for one that could not be parsed (answered 400/408/431)."""


class ConnectionLost(Exception):
    """The client went away or stopped reading; nothing more can be said to it."""


@functools.lru_cache(maxsize=128)
def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _encode_header(name: str, value: str) -> tuple[bytes, bytes]:
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        encoded = value.encode("utf-8")
    return name.encode("ascii"), encoded


def _head_size(event: h11.Request) -> int:
    """The size of a request's head as sent, give or take optional whitespace."""
    request_line = len(event.method) + len(event.target) + len(" HTTP/1.1\r\n") + 1
    fields = sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
    return request_line + fields + 2


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_exceptions(inner)]
    return [exc]


def error_response(exc: BaseException, request_id: str) -> Response:
    """The response for an exception out of a handler or a body stream.

    Exception groups (a KV call that used a nursery) are searched for the error that says
    most: an HttpError, else a RingstoreError; anything else is a bug and answers 500.
    """
    leaves = _leaf_exceptions(exc)
    for leaf in leaves:
        if isinstance(leaf, HttpError):
            return leaf.to_response()
    for leaf in leaves:
        if isinstance(leaf, RingstoreError):
            return text_response(leaf.http_status, str(leaf) or type(leaf).__name__)
    log.error("request %s failed", request_id, exc_info=exc)
    return text_response(500, f"Error: internal error (request {request_id})")


async def linger(stream: trio.abc.Stream) -> None:
    """Half-close and read what the client still sends, so closing does not reset the
    connection before it has read our response (bounded in time by the caller, in bytes here).
    """
    if isinstance(stream, trio.SocketStream):
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
    drained = 0
    while drained < LINGER_MAX_BYTES:
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        drained += len(data)


async def close_stream(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Connection:
    """One client connection: the h11 state machine and the socket it is driven over."""

    def __init__(
        self,
        app: App,
        stream: trio.abc.Stream,
        *,
        limits: HttpLimits,
        node_name: str,
        wall_clock: Callable[[], float],
        next_request_id: Callable[[], str],
        observer: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.observer = observer
        self.limits = limits
        self.node_name = node_name
        self.wall_clock = wall_clock
        self.next_request_id = next_request_id
        self.stream = stream
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self.peer_closed = False
        # Close with a lingering read: the client may still be sending.
        self.close_lingering = False
        self.body_bytes = 0
        self.body_declared: int | None = 0  # the request's Content-Length (None: chunked)
        # The idle or header timer while a request head is awaited, else infinity (see the top).
        self._head_deadline = math.inf
        self._head_started = False  # a byte of the awaited head has arrived
        self._watch_interval = min(limits.idle_timeout_s, limits.header_timeout_s) / 4

    async def run(self) -> None:
        with trio.CancelScope() as scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_head_deadline, scope)
                    await self._serve_requests()
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The watchdog raises nothing: a group holds this task's own exception
                # (ConnectionLost, say), which the server expects as it is.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
        if scope.cancelled_caught and self._head_started and not self.peer_closed:
            await self._send_early_error(408, "timed out waiting for the request headers")

    async def _serve_requests(self) -> None:
        while True:
            event = await self._read_request_head()
            if event is None:
                return
            await self._serve_request(event)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _watch_head_deadline(self, connection_scope: trio.CancelScope) -> None:
        while True:
            now = trio.current_time()
            if now >= self._head_deadline:
                connection_scope.cancel()
                return
            await trio.sleep_until(min(self._head_deadline, now + self._watch_interval))

    async def close(self) -> None:
        try:
            if self.close_lingering and not self.peer_closed:
                with trio.move_on_after(LINGER_TIMEOUT_S):
                    await linger(self.stream)
        finally:
            await close_stream(self.stream)

    # -- receiving ---------------------------------------------------------------------------

    async def _receive(self, max_bytes: int = RECEIVE_BYTES) -> int:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.peer_closed = True
        self.conn.receive_data(data)
        return len(data)

    async def _read_request_head(self) -> h11.Request | None:
        """The next request's head, or None when the connection is to end; past the idle or
        header deadline the watchdog cancels the connection (and `run` answers 408 if the
        head had begun)."""
        limits = self.limits
        self._head_started = bool(self.conn.trailing_data[0])  # pipelined bytes buffered
        first_timeout = limits.header_timeout_s if self._head_started else limits.idle_timeout_s
        self._head_deadline = trio.current_time() + first_timeout
        try:
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if self.peer_closed and not self._head_started:
                        return None
                    status = exc.error_status_hint
                    message = (
                        f"request header block over {limits.max_header_bytes} bytes"
                        if status == 431
                        else f"malformed request: {exc}"
                    )
                    self._head_deadline = math.inf
                    await self._send_early_error(status, message)
                    return None
                if event is h11.NEED_DATA:
                    if await self._receive() and not self._head_started:
                        self._head_started = True
                        self._head_deadline = trio.current_time() + limits.header_timeout_s
                    continue
                if isinstance(event, h11.Request):
                    if _head_size(event) > limits.max_header_bytes:
                        # h11 bounds only an incomplete head; one that arrived whole in a
                        # single read is measured here.
                        self._head_deadline = math.inf
                        await self._send_early_error(
                            431, f"request header block over {limits.max_header_bytes} bytes"
                        )
                        return None
                    return event
                return None  # ConnectionClosed
        finally:
            self._head_deadline = math.inf

    async def _receive_body_piece(self) -> bytes | None:
        """The next piece of the request body, None at its end; HttpError if it cannot come."""
        if self.conn.they_are_waiting_for_100_continue:
            try:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            except ConnectionLost:
                raise HttpError(400, "client went away", close=True) from None
        event = self._next_body_event()
        if event is h11.NEED_DATA:
            # The timer only where a read is needed: a small body (and the end of every
            # body-less request) is usually buffered already, with the head.
            with trio.move_on_after(self.limits.body_idle_timeout_s):
                while event is h11.NEED_DATA:
                    declared = self.body_declared
                    large = declared is None or declared - self.body_bytes >= BODY_RECEIVE_BYTES
                    await self._receive(BODY_RECEIVE_BYTES if large else RECEIVE_BYTES)
                    event = self._next_body_event()
            if event is h11.NEED_DATA:
                raise HttpError(408, "timed out waiting for the request body", close=True)
        if isinstance(event, h11.Data):
            self.body_bytes += len(event.data)
            if self.body_bytes > self.limits.max_object_bytes:
                raise HttpError(
                    413,
                    f"request body over {self.limits.max_object_bytes} bytes",
                    close=True,
                )
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise HttpError(400, "unexpected data in request body", close=True)

    def _next_body_event(self) -> h11.Event | type[h11.NEED_DATA]:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            if self.peer_closed:
                raise HttpError(
                    400,
                    "client closed the connection before the body was complete",
                    close=True,
                ) from None
            raise HttpError(400, f"malformed request body: {exc}", close=True) from None

    async def _drain_body(self) -> bool:
        """Read and drop the rest of a small unread body; False if that failed."""
        try:
            while await self._receive_body_piece() is not None:
                pass
        except HttpError:
            return False
        return True

    # -- one request -------------------------------------------------------------------------

    async def _serve_request(self, event: h11.Request) -> None:
        started_at = trio.current_time()
        self.body_bytes = 0
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers = Headers.from_h11(event.headers.raw_items())
        length_header = headers.get("content-length")
        if length_header is not None:
            declared: int | None = int(length_header)
        else:  # chunked, or no body at all (a request without framing headers has none)
            declared = None if "transfer-encoding" in headers else 0
        self.body_declared = declared
        request = Request(
            method=event.method.decode("ascii", "replace"),
            target=target,
            path=path,
            query=query,
            headers=headers,
            body=RequestBody(self._receive_body_piece, declared),
            request_id=self.next_request_id(),
        )
        response = await self._respond(request)
        status = response.status
        try:
            status = await self._finish(request, response)
        finally:
            duration_s = trio.current_time() - started_at
            level = logging.INFO if status >= 500 or duration_s >= SLOW_REQUEST_S else logging.DEBUG
            log.log(
                level,
                "node=%s req=%s %s %s %d %.1fms",
                self.node_name,
                request.request_id,
                request.method,
                target[:LOGGED_TARGET_CHARS],
                status,
                duration_s * 1000,
            )
            if self.observer is not None:
                self.observer.request_done(request, status, duration_s)

    def _framing_error(self, request: Request) -> HttpError | None:
        headers = request.headers
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 section 6.3: the framing is ambiguous (a request-smuggling vector);
            # refuse it and close.
            return HttpError(400, "both Content-Length and Transfer-Encoding sent", close=True)
        if request.method not in BODY_METHODS:
            return None
        if "content-length" not in headers and "transfer-encoding" not in headers:
            return HttpError(
                411, "Content-Length or chunked Transfer-Encoding required", close=True
            )
        limit = self.limits.max_object_bytes
        if request.body.declared_length is not None and request.body.declared_length > limit:
            return HttpError(413, f"request body over {limit} bytes", close=True)
        return None

    async def _respond(self, request: Request) -> Response:
        framing = self._framing_error(request)
        if framing is not None:
            return framing.to_response()
        try:
            response = await self.app.handle(request)
        except Exception as exc:
            response = error_response(exc, request.request_id)
        if request.body.failure is not None:
            # The handler may have turned the body's failure into something else (a KV
            # wrapping it); the client deserves the real reason.
            response = request.body.failure.to_response()
        return response

    async def _finish(self, request: Request, response: Response) -> int:
        """Send the response (and drain a small unread body); the status actually sent."""
        drain = False
        if self.conn.their_state is h11.SEND_BODY:
            body = request.body
            remaining = (
                None if body.declared_length is None else body.declared_length - body.received
            )
            if (
                response.close
                or body.failure is not None
                or self.conn.they_are_waiting_for_100_continue
                or remaining is None
                or remaining > DRAIN_MAX_BYTES
            ):
                response.close = True
            else:
                drain = True
        if response.close:
            self.close_lingering = True
        status = await self._send_response(
            response, head_only=request.method == "HEAD", rid=request.request_id
        )
        if drain and not await self._drain_body():
            self.close_lingering = False
        return status

    # -- sending -----------------------------------------------------------------------------

    async def _send(self, event: h11.Event) -> None:
        await self._write_pieces(self.conn.send_with_data_passthrough(event) or [])

    async def _write_pieces(self, pieces: list[bytes]) -> None:
        """Write what h11 made of some events: small pieces joined into one write, a large
        piece (a chunk of a value) on its own, never copied into a joined buffer."""
        for data in coalesced(pieces, COALESCE_BODY_BYTES):
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        # A CancelScope rather than trio.fail_after: the same deadline without a generator
        # context manager per write.
        with trio.CancelScope(deadline=trio.current_time() + self.limits.send_timeout_s) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(str(exc)) from None
        if scope.cancelled_caught:
            raise ConnectionLost(f"send timed out after {self.limits.send_timeout_s} s")

    async def _send_early_error(self, status: int, message: str) -> None:
        """Answer a request we could not parse or that came too slowly, then close."""
        response = text_response(status, message, close=True)
        self.close_lingering = True
        log.info("node=%s req=- - - %d %s", self.node_name, status, message)
        if self.observer is not None:
            self.observer.request_done(None, status, 0.0)
        try:
            await self._send_response(response, head_only=False, rid="-")
        except (ConnectionLost, h11.LocalProtocolError):
            pass

    def _head(self, response: Response, head_only: bool) -> h11.Response:
        headers = [
            _SERVER_FIELD,
            (b"Date", format_http_date(self.wall_clock()).encode("ascii")),
        ]
        headers += [_encode_header(name, value) for name, value in response.headers]
        if response.status not in NO_BODY_STATUSES:
            length = response.content_length
            if length is not None:
                headers.append((b"Content-Length", b"%d" % length))
        if response.close:
            headers.append((b"Connection", b"close"))
        return h11.Response(
            status_code=response.status, headers=headers, reason=_reason(response.status)
        )

    async def _send_response(self, response: Response, *, head_only: bool, rid: str) -> int:
        """Send `response`, or the error that replaced it when its body failed at once;
        the status sent."""
        stream: AsyncIterator[bytes] | None = None
        first: bytes | None = None
        if (
            isinstance(response.body, StreamBody)
            and not head_only
            and response.status not in NO_BODY_STATUSES
        ):
            stream = response.body.open()
            try:
                first = await anext(stream, None)
            except Exception as exc:
                await aclose_iterator(stream)
                stream = None
                replacement = error_response(exc, rid)
                replacement.close = response.close
                response = replacement
        try:
            # The head, a small body and the end go out in one write.
            passthrough = self.conn.send_with_data_passthrough
            pieces = passthrough(self._head(response, head_only)) or []
            if not head_only and response.status not in NO_BODY_STATUSES:
                if stream is None:
                    assert isinstance(response.body, bytes)
                    if response.body:
                        pieces += passthrough(h11.Data(data=response.body)) or []
                elif first is not None:
                    if first:
                        pieces += passthrough(h11.Data(data=first)) or []
                    await self._write_pieces(pieces)
                    pieces = []
                    await self._send_rest(stream, rid)
            pieces += passthrough(h11.EndOfMessage()) or []
            await self._write_pieces(pieces)
        except h11.LocalProtocolError as exc:
            # The body did not match its declared length: the client must not take a
            # short or long value for the real one, so the connection ends here.
            log.error("node=%s req=%s response framing broken: %s", self.node_name, rid, exc)
            raise ConnectionLost(str(exc)) from None
        finally:
            if stream is not None:
                await aclose_iterator(stream)
        return response.status

    async def _send_rest(self, stream: AsyncIterator[bytes], rid: str) -> None:
        try:
            async for piece in stream:
                if piece:
                    await self._send(h11.Data(data=piece))
        except ConnectionLost:
            raise
        except Exception as exc:
            # Status and headers are gone already: cutting the connection is the only way
            # left to tell the client the body is incomplete.
            log.warning(
                "node=%s req=%s response body failed mid-stream: %r",
                self.node_name,
                rid,
                exc,
            )
            raise ConnectionLost(str(exc)) from None
