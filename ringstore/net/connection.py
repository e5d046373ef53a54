"""One authenticated peer connection: a reader that never blocks, one sender, bounded handlers.

`PeerService` (net/rpc.py) creates one `PeerConnection` per established stream and owns the
policy (which connection serves a peer, dialling, back-off). This module keeps one
connection's machinery: the reader dispatches replies to waiting calls, starts a handler
task per request (at most `max_handlers_per_connection`, beyond that an "Overloaded" error
reply) and answers pings itself; a single sender task writes every outgoing frame, so
frames never interleave; calls take one of `max_calls_in_flight` slots. The reader never
waits on anything but the socket, so replies to our calls always get through whatever the
peer asks of us: frames queued for the sender are bounded by calls + handlers, and only
pongs and refusals can pile up beyond that, when the peer stops reading; past
OUTBOX_SLACK_FRAMES of those the connection is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ringstore.core import wire
from ringstore.core.writes import coalesced
from ringstore.errors import (
    LocalError,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    RemoteCallError,
    RingstoreError,
)

if TYPE_CHECKING:
    from ringstore.net.rpc import PeerService

log = logging.getLogger(__name__)

# Calls one node has in flight to one peer; more callers wait for a slot (backpressure).
MAX_CALLS_IN_FLIGHT = 32
# Handlers one connection may run at once: the peer's calls plus room for calls whose
# callers timed out while their handler still runs. Bounds memory at this x frame size.
MAX_HANDLERS_PER_CONNECTION = 2 * MAX_CALLS_IN_FLIGHT
# Pongs and refusals the reader may queue beyond calls and replies; exceeding it means the
# peer is not reading what we send, so the connection is dropped.
OUTBOX_SLACK_FRAMES = 64
# One read; the codec keeps at most one incomplete frame plus this much.
RECEIVE_BYTES = 64 * 1024
# The largest read, when the rest of a frame being received (a chunk) is known to be at
# least this big: fewer trips through the reader for the same bytes.
LARGE_RECEIVE_BYTES = 1024 * 1024
# The sender joins queued frames into one write up to this size: fewer syscalls under load.
COALESCE_BYTES = 256 * 1024
# Error messages from peers are cut to this many characters (they end up in logs/replies).
MAX_ERROR_MESSAGE_CHARS = 1000

Body = dict[str, Any]
Frame = tuple[bytes, ...]  # a frame as pieces to write in order (codec.send_parts)


class Inline:
    """A handler that answers at once in the reader, without a task of its own: a plain
    function of (peer, body) for requests that never wait (a point read on the event loop).
    A task per request is a visible share of a small GET's time on the replica's side."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[str, Body], Body]) -> None:
        self.fn = fn


Handler = Callable[[str, Body], Awaitable[Body]] | Inline
OVERLOADED = "Overloaded"  # the error kind of a request refused for too many handlers
INTERNAL_ERROR = "InternalError"  # the error kind of a handler that raised a non-ringstore error


class _Pending:
    """One call or ping whose task waits for its answer."""

    __slots__ = ("expects", "done", "answer", "error")

    def __init__(self, expects: type) -> None:
        self.expects = expects
        self.done = trio.Event()
        self.answer: wire.Reply | wire.Pong | None = None
        self.error: PeerUnavailable | None = None


# What a started call's owner is told, once: (the answer, None) or (None, why there is none).
OnAnswer = Callable[[Any, "PeerUnavailable | PeerTimeout | None"], None]


class _Started:
    """A call made without a waiting task (`start_exchange`): the reader hands its answer to
    `on_answer`; `close` or `expire_calls` hand it the error instead. Exactly one of them
    does, and frees the call's slot."""

    __slots__ = ("expects", "on_answer", "deadline", "timeout_s")

    def __init__(self, expects: type, on_answer: OnAnswer, deadline: float, timeout_s: float):
        self.expects = expects
        self.on_answer = on_answer
        self.deadline = deadline
        self.timeout_s = timeout_s


class PeerConnection:
    """One established connection to `peer`: a reader, a sender and handler tasks."""

    def __init__(
        self, service: PeerService, stream: trio.abc.Stream, codec: wire.Connection, dialled: bool
    ) -> None:
        assert codec.peer_name is not None
        self.service = service
        self.stream = stream
        self.codec = codec
        self.peer = codec.peer_name
        self.dialled = dialled
        self.closed = False
        self.close_reason = ""
        self._pending: dict[int, _Pending | _Started] = {}
        self._next_id = 1
        self._handlers_running = 0
        self._call_slots = trio.Semaphore(service.max_calls_in_flight)
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[Frame](
            service.max_calls_in_flight + service.max_handlers_per_connection + OUTBOX_SLACK_FRAMES
        )
        self._nursery: trio.Nursery | None = None
        self._retiring = False

    @property
    def dialler(self) -> str:
        return self.service.node_name if self.dialled else self.peer

    @property
    def idle(self) -> bool:
        return not self._pending and self._handlers_running == 0

    @property
    def calls_in_flight(self) -> int:
        return len(self._pending)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_loop)
                self.service._connection_opened(self)
                task_status.started()
                await self._receive_loop()
        finally:
            self.close("service stopped")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    def close(self, reason: str) -> None:
        """End the connection now: pending calls fail at once with PeerUnavailable."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.info("%s: connection to %s closed: %s", self.service.node_name, self.peer, reason)
        error = PeerUnavailable(self.peer, f"connection lost: {reason}")
        for message_id, pending in list(self._pending.items()):
            if isinstance(pending, _Started):
                self._end_started(message_id, pending, None, error)
            elif not pending.done.is_set():
                pending.error = error
                pending.done.set()
        self._outbox_send.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self.service._connection_closed(self)

    def retire_when_idle(self) -> None:
        """Close this connection once it is idle and another one serves the peer."""
        if not self._retiring and self._nursery is not None and not self.closed:
            self._retiring = True
            self._nursery.start_soon(self._retire_loop)

    async def _retire_loop(self) -> None:
        while True:
            await trio.sleep(self.service.superseded_grace_s)
            if self.service._current_connection(self.peer) is self:
                self._retiring = False
                return
            if self.idle:
                self.close("superseded by another connection to the same peer")
                return

    # -- calls ---------------------------------------------------------------------------

    async def exchange(self, message_for: Callable[[int], wire.Message], expects: type) -> Any:
        # A free slot and room in the outbox are taken without a checkpoint: a call already
        # waits for its answer, and each needless trip through the scheduler is a visible
        # share of a small request's time.
        try:
            self._call_slots.acquire_nowait()
        except trio.WouldBlock:
            await self._call_slots.acquire()
        try:
            if self.closed:
                raise PeerUnavailable(self.peer, f"connection lost: {self.close_reason}")
            message_id = self._next_id
            self._next_id += 1
            frame = self.codec.send_parts(message_for(message_id))
            pending = _Pending(expects)
            self._pending[message_id] = pending
            try:
                try:
                    await self._queue(frame)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    raise PeerUnavailable(
                        self.peer, f"connection lost: {self.close_reason}"
                    ) from None
                await pending.done.wait()
            finally:
                del self._pending[message_id]
        finally:
            self._call_slots.release()
        if pending.error is not None:
            raise pending.error
        return pending.answer

    def start_exchange(
        self,
        message_for: Callable[[int], wire.Message],
        expects: type,
        on_answer: OnAnswer,
        timeout_s: float,
    ) -> bool:
        """`exchange` without a task waiting for the answer, if it can start at once (a free
        call slot, room in the outbox): `on_answer(answer, None)` is called from the reader,
        or `on_answer(None, error)` with PeerUnavailable when the connection ends, or with
        PeerTimeout from `expire_calls` once `timeout_s` has passed. `on_answer` runs in
        whichever task that is: it must not block, and what it raises is logged and dropped.

        False (nothing sent, nothing will be called): the caller should `exchange` instead.
        """
        if self.closed:
            return False
        try:
            self._call_slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        try:
            frame = self.codec.send_parts(message_for(self._next_id))
            self._outbox_send.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._call_slots.release()
            return False
        except BaseException:
            self._call_slots.release()
            raise
        self._pending[self._next_id] = _Started(
            expects, on_answer, trio.current_time() + timeout_s, timeout_s
        )
        self._next_id += 1
        return True

    def expire_calls(self, now: float) -> bool:
        """Fail the started calls whose timeout has passed at `now` (PeerTimeout); return
        whether any started call is still waiting."""
        expired: list[tuple[int, _Started]] = []
        waiting = False
        for message_id, pending in self._pending.items():
            if isinstance(pending, _Started):
                if pending.deadline <= now:
                    expired.append((message_id, pending))
                else:
                    waiting = True
        for message_id, pending in expired:
            self._end_started(message_id, pending, None, PeerTimeout(self.peer, pending.timeout_s))
        return waiting

    def _end_started(
        self,
        message_id: int,
        started: _Started,
        answer: wire.Reply | wire.Pong | None,
        error: PeerUnavailable | PeerTimeout | None,
    ) -> None:
        del self._pending[message_id]
        self._call_slots.release()
        try:
            started.on_answer(answer, error)
        except Exception:
            # Never into the reader (or whoever ended the call): it would take the
            # connection, and every other call on it, down with it.
            log.exception("%s: a call's answer function failed", self.service.node_name)

    async def _queue(self, frame: Frame) -> None:
        """Hand `frame` to the sender, waiting only if the outbox is full."""
        try:
            self._outbox_send.send_nowait(frame)
        except trio.WouldBlock:
            await self._outbox_send.send(frame)

    # -- tasks ---------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            async for frame in self._outbox_receive:
                frames = [frame]
                size = sum(map(len, frame))
                while size < COALESCE_BYTES:
                    try:
                        more = self._outbox_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    frames.append(more)
                    size += sum(map(len, more))
                await self._write(frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"send failed: {exc!r}")

    async def _write(self, frames: list[Frame]) -> None:
        """Send `frames` in order: small pieces joined into one write, a large piece (a
        chunk) on its own."""
        for data in coalesced((piece for frame in frames for piece in frame), COALESCE_BYTES):
            await self.stream.send_all(data)

    async def _receive_loop(self) -> None:
        try:
            while True:
                event = self.codec.next_event()
                if event is wire.NEED_DATA:
                    size = max(RECEIVE_BYTES, min(self.codec.bytes_missing, LARGE_RECEIVE_BYTES))
                    self.codec.receive_data(await self.stream.receive_some(size))
                elif event is wire.CLOSED:
                    self.close("closed by peer")
                    return
                else:
                    self._dispatch(event)
        except ProtocolError as exc:
            log.warning("%s: protocol error from %s: %s", self.service.node_name, self.peer, exc)
            self.close(f"protocol error: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"receive failed: {exc!r}")

    def _dispatch(self, message: object) -> None:
        if isinstance(message, wire.Request):
            handler = self.service.handlers.get(message.method)
            if isinstance(handler, Inline):
                self._answer_inline(message, handler)
                return
            if self._handlers_running >= self.service.max_handlers_per_connection:
                self.service._requests_refused += 1
                self._send_nowait(
                    wire.Reply(
                        message.id,
                        False,
                        error_body(
                            OVERLOADED,
                            f"{self.service.node_name} runs {self._handlers_running} requests "
                            "from you already",
                        ),
                    )
                )
                return
            assert self._nursery is not None
            self._handlers_running += 1
            self._nursery.start_soon(self._handle, message)
        elif isinstance(message, wire.Reply | wire.Pong):
            pending = self._pending.get(message.id)
            if pending is None or (isinstance(pending, _Pending) and pending.done.is_set()):
                return  # the caller gave up (timeout); the answer is no longer wanted
            if not isinstance(message, pending.expects):
                raise ProtocolError(f"{type(message).__name__} answers message {message.id}")
            if isinstance(pending, _Started):
                self._end_started(message.id, pending, message, None)
            else:
                pending.answer = message
                pending.done.set()
        elif isinstance(message, wire.Ping):
            self._send_nowait(wire.Pong(message.id))
        else:
            raise ProtocolError(f"unexpected {type(message).__name__}")

    def _send_nowait(self, message: wire.Message) -> None:
        self._queue_nowait(self.codec.send_parts(message))

    def _queue_nowait(self, frame: Frame) -> None:
        """Queue a frame the reader made (an answer, a pong or a refusal) without waiting."""
        try:
            self._outbox_send.send_nowait(frame)
        except trio.WouldBlock:
            raise ProtocolError("the peer does not read what we send") from None
        except trio.ClosedResourceError:
            pass  # closing: the peer is gone anyway

    def _answer_inline(self, request: wire.Request, handler: Inline) -> None:
        try:
            frame = self.codec.send_parts(
                wire.Reply.for_sending(request.id, True, handler.fn(self.peer, request.body))
            )
        except Exception as exc:
            self._log_bug(request, exc)
            frame = self._error_frame(request, exc)
        self.service._requests_handled += 1
        self._queue_nowait(frame)

    def _log_bug(self, request: wire.Request, exc: Exception) -> None:
        """Log a handler's failure that is not a RingstoreError: a bug, with its traceback."""
        if not isinstance(exc, RingstoreError):
            log.error(
                "%s: handler for %r (request %d from %s) failed",
                self.service.node_name,
                request.method,
                request.id,
                self.peer,
                exc_info=exc,
            )

    def _error_frame(self, request: wire.Request, exc: Exception) -> Frame:
        """The error reply to `request` whose handler raised `exc` (a bug is "InternalError":
        its details stay in our log)."""
        if isinstance(exc, RingstoreError):
            body = error_body(type(exc).__name__, str(exc))
        else:
            body = error_body(INTERNAL_ERROR, "handler failed")
        return self.codec.send_parts(wire.Reply(request.id, False, body))

    async def _handle(self, request: wire.Request) -> None:
        try:
            handler = self.service.handlers.get(request.method)
            try:
                if handler is None or isinstance(handler, Inline):
                    raise LocalError(f"no handler for method {request.method!r}")
                body = await handler(self.peer, request.body)
                if self.closed:
                    return
                frame = self.codec.send_parts(wire.Reply.for_sending(request.id, True, body))
            except Exception as exc:
                self._log_bug(request, exc)
                if self.closed:
                    return
                frame = self._error_frame(request, exc)
            self.service._requests_handled += 1
            try:
                await self._queue(frame)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the connection ended; the caller has already been told
        finally:
            self._handlers_running -= 1


def error_body(kind: str, message: str) -> Body:
    return {"kind": kind, "message": message[:MAX_ERROR_MESSAGE_CHARS]}


def remote_error(peer: str, body: Body) -> RemoteCallError:
    kind, message = body.get("kind"), body.get("message")
    if not isinstance(kind, str) or not isinstance(message, str):
        return RemoteCallError(peer, "MalformedError", f"unreadable error reply {body!r:.200}")
    return RemoteCallError(peer, kind[:100], message[:MAX_ERROR_MESSAGE_CHARS])
