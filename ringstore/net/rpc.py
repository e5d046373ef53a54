"""Calls between nodes: authenticated, multiplexed connections with timeouts and reconnects.

`PeerService` is the Trio driver of `core.wire.Connection`. Per pair of nodes it keeps one
connection, used both ways: whichever side dialled, both sides send requests over it and
match replies by id. If both nodes dial each other at the same moment two connections
exist for a while; both sides then prefer the one dialled by the node with the smaller
name, and the other is closed once idle (SUPERSEDED_GRACE_S), so a racing call is never cut.

Flow of a call: `call(peer, method, body, timeout_s=...)` finds the peer's connection (or
dials it once for all concurrent callers), takes one of MAX_CALLS_IN_FLIGHT slots, queues
the request frame for the connection's single sender task (so frames never interleave),
and waits for the reply under the timeout. A broken connection fails its pending calls at
once with `PeerUnavailable`; the next call re-dials. Failed dials back off exponentially
(BACKOFF_*_S, jittered from the service's rng) and calls made during the back-off fail at
once rather than waiting, so a coordinator moves on to another replica.

`start_call` is a call without a task waiting for it, for the coordinator's replica reads
and replication merges: it goes out at once over an established connection (else it returns
False and the caller uses `call`), and its reply, or the error `call` would raise, is handed
to a function by the connection's reader. A task per call was a visible share of a small
request (bench/RESULTS.md). Its timeout is kept by one task per service that looks every
EXPIRY_TICK_S while any such call waits.

Serving (net/connection.py): each request runs its handler in its own task, a bounded
number per connection. A handler raising `RingstoreError` becomes an error reply
`{kind, message}` that the caller raises as `RemoteCallError(peer, kind, message)`; any
other exception is a bug: logged with its traceback, answered as kind "InternalError".

A connection that fails the handshake (wrong secret, replayed proof, garbage, silence for
`handshake_timeout_s`) is closed and logged; nothing it sent reaches a handler, because
`core.wire` yields no request before the peer has proved the secret.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ringstore.config import ConfigError
from ringstore.core import wire
from ringstore.errors import (
    LocalError,
    LocalProtocolError,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    RingstoreError,
)
from ringstore.net.connection import (
    MAX_CALLS_IN_FLIGHT,
    MAX_HANDLERS_PER_CONNECTION,
    RECEIVE_BYTES,
    Body,
    Handler,
    PeerConnection,
    remote_error,
)
from ringstore.net.transport import Transport

log = logging.getLogger(__name__)

# A legitimate peer finishes the handshake in one round trip; a socket that stays silent
# this long is a scanner or a wedged process, and holds no more of our resources.
HANDSHAKE_TIMEOUT_S = 5.0
# Re-dial back-off after failed dials: fast enough to notice a restart within a ping or
# two, slow enough that a dead peer costs one connect attempt every few seconds.
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
# How long a superseded duplicate connection lingers, so calls already racing on it finish.
SUPERSEDED_GRACE_S = 10.0
# How often calls started without a waiting task (`start_call`) are checked for their
# timeout: the most a PeerTimeout can be late. Only while some such call waits.
EXPIRY_TICK_S = 0.1

# What a failing dial, handshake or stream raises; anything else is a bug and propagates.
_CONNECTION_ERRORS = (
    PeerUnavailable,
    ProtocolError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


class PeerEvent(enum.Enum):
    """What `PeerService` tells its observers (liveness) about a peer's connections."""

    CONNECTED = "connected"  # a handshake with the peer completed (either direction)
    DIAL_FAILED = "dial failed"  # we could not reach the peer
    DISCONNECTED = "disconnected"  # a connection to the peer ended


@dataclass(frozen=True, slots=True)
class PeerServiceStats:
    open_connections: int
    connections_accepted: int
    connections_dialled: int
    dials_failed: int
    handshakes_failed: int
    calls_in_flight: int
    requests_handled: int
    requests_refused: int


def _describe(stream: trio.abc.Stream) -> str:
    """Best-effort remote address of a stream, for logs."""
    inner: Any = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    if sock is not None:
        try:
            host, port = sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "?"
    remote = getattr(inner, "remote", None)
    return str(remote) if remote is not None else "?"


class _PeerState:
    """What the service knows about reaching one peer."""

    __slots__ = ("connections", "current", "dialling", "failures", "next_dial_at", "last_error")

    def __init__(self) -> None:
        # A dict as an ordered set: iteration order must not depend on object ids, or two
        # simulator runs of one seed would schedule differently.
        self.connections: dict[PeerConnection, None] = {}
        self.current: PeerConnection | None = None
        self.dialling: trio.Event | None = None
        self.failures = 0
        self.next_dial_at = -math.inf
        self.last_error: PeerUnavailable | None = None


class PeerService:
    """This node's end of the peer protocol: serves handlers, makes calls, redials.

    `addresses` maps peer names to transport addresses and is read at every dial, so the
    owner may update it in place as membership changes. `handlers` maps method names
    (`core.wire.METHOD_PATTERN`) to `async fn(peer_name, body) -> body`; bodies are dicts
    of what `core.wire` can carry. `rng` jitters the re-dial back-off; `nonce_source`
    gives handshake nonces (os.urandom; the simulator passes its seeded `rng.randbytes`).
    """

    def __init__(
        self,
        node_name: str,
        secret: bytes,
        transport: Transport,
        addresses: Mapping[str, Any],
        handlers: Mapping[str, Handler],
        rng: random.Random,
        *,
        nonce_source: Callable[[int], bytes] = os.urandom,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT,
        max_handlers_per_connection: int = MAX_HANDLERS_PER_CONNECTION,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        superseded_grace_s: float = SUPERSEDED_GRACE_S,
    ) -> None:
        try:
            # Checks the name, the secret and the frame limit exactly as every connection will.
            wire.Connection(
                wire.Role.SERVER,
                node_name,
                secret,
                bytes(wire.NONCE_BYTES),
                max_frame_bytes=max_frame_bytes,
            )
        except LocalProtocolError as exc:
            raise ConfigError(f"peer service: {exc}") from None
        _check_methods(handlers)
        if not 1 <= max_calls_in_flight <= max_handlers_per_connection:
            raise ConfigError("need 1 <= max_calls_in_flight <= max_handlers_per_connection")
        if not handshake_timeout_s > 0 or not superseded_grace_s > 0:
            raise ConfigError("timeouts must be positive")
        self.node_name = node_name
        self._secret = secret
        self.transport = transport
        self.addresses = addresses
        self.handlers = dict(handlers)
        self.rng = rng
        self.nonce_source = nonce_source
        self.handshake_timeout_s = handshake_timeout_s
        self.max_calls_in_flight = max_calls_in_flight
        self.max_handlers_per_connection = max_handlers_per_connection
        self.max_frame_bytes = max_frame_bytes
        self.superseded_grace_s = superseded_grace_s
        self.bound_address: Any = None
        self._nursery: trio.Nursery | None = None
        self._expiry_wakeup: trio.Event | None = None  # set to wake the idle expiry task
        self._peers: dict[str, _PeerState] = {}
        self._observers: list[Callable[[str, PeerEvent], None]] = []
        self._accepted = 0
        self._dialled = 0
        self._dials_failed = 0
        self._handshakes_failed = 0
        self._requests_handled = 0
        self._requests_refused = 0

    # -- public --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers until cancelled; `task_status.started(bound_address)`."""
        if self._nursery is not None:
            raise LocalError(f"{self.node_name}: peer service is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expire_started_calls)
                self.bound_address = await nursery.start(self.transport.serve, self._accept)
                log.info("%s: peer service listening on %s", self.node_name, self.bound_address)
                task_status.started(self.bound_address)
        finally:
            self._nursery = None
            self.bound_address = None
            for state in self._peers.values():
                for connection in list(state.connections):
                    connection.close("service stopped")
            self._peers.clear()

    async def call(self, peer: str, method: str, body: Body, *, timeout_s: float) -> Body:
        """Call `method` on `peer`; return its reply body.

        Raises `PeerTimeout` after `timeout_s`, `PeerUnavailable` if the peer cannot be
        reached or the connection breaks, `RemoteCallError` if its handler raised, and
        `LocalProtocolError` (nothing sent) for a method name or body the wire cannot carry.
        """
        self._check_call(peer, timeout_s)
        request = wire.Request(0, method, body)  # validates before anything is sent or dialled
        with trio.CancelScope(deadline=trio.current_time() + timeout_s):
            connection = await self._connection_for(peer)
            reply = await connection.exchange(request.with_id, wire.Reply)
            if reply.ok:
                return reply.body
            raise remote_error(peer, reply.body)
        raise PeerTimeout(peer, timeout_s)

    def start_call(
        self,
        peer: str,
        method: str,
        body: Body,
        *,
        timeout_s: float,
        on_reply: Callable[[Body | None, RingstoreError | None], None],
    ) -> bool:
        """`call` without a task waiting for the reply, when it can start at once: over the
        peer's established connection, with a free call slot. Later, exactly once,
        `on_reply(reply_body, None)` or `on_reply(None, error)` with the error `call` would
        raise (PeerTimeout at most EXPIRY_TICK_S late). `on_reply` runs in the connection's
        reader (or whichever task ends the call): it must not block.

        False, having sent nothing, when the call cannot start at once (no connection yet,
        all slots taken): then `call`. A call that cannot travel raises LocalProtocolError
        (here, or from that `call`), having sent nothing.
        """
        self._check_call(peer, timeout_s)
        connection = self._current_connection(peer)
        if connection is None or self._nursery is None:
            return False  # `call` will refuse a call that cannot travel

        def answered(reply: wire.Reply | None, error: RingstoreError | None) -> None:
            if reply is not None and not reply.ok:
                error = remote_error(peer, reply.body)
            on_reply(None if error is not None or reply is None else reply.body, error)

        def request(message_id: int) -> wire.Request:
            # The head is checked here, the body as the frame is encoded: before it is sent.
            return wire.Request.for_sending(message_id, method, body)

        if not connection.start_exchange(request, wire.Reply, answered, timeout_s):
            return False
        if self._expiry_wakeup is not None:
            self._expiry_wakeup.set()
        return True

    async def _expire_started_calls(self) -> None:
        """Time out started calls (`start_call`): a look every EXPIRY_TICK_S while any wait."""
        while True:
            now = trio.current_time()
            waiting = False
            for state in list(self._peers.values()):
                for connection in list(state.connections):
                    waiting = connection.expire_calls(now) or waiting
            if waiting:
                await trio.sleep(EXPIRY_TICK_S)
            else:
                self._expiry_wakeup = trio.Event()
                await self._expiry_wakeup.wait()
                self._expiry_wakeup = None

    async def ping(self, peer: str, *, timeout_s: float) -> float:
        """Round trip a Ping to `peer` (dialling if needed); return the seconds it took."""
        self._check_call(peer, timeout_s)
        start = trio.current_time()
        with trio.move_on_after(timeout_s):
            connection = await self._connection_for(peer)
            await connection.exchange(wire.Ping, wire.Pong)
            return trio.current_time() - start
        raise PeerTimeout(peer, timeout_s)

    def register(self, method: str, handler: Handler) -> None:
        """Add or replace the handler of `method` (services built after this one add theirs)."""
        _check_methods({method: handler})
        self.handlers[method] = handler

    def drop_connections(self, peer: str, reason: str) -> None:
        """Close every connection to `peer` (liveness does this to a silent peer)."""
        state = self._peers.get(peer)
        for connection in list(state.connections if state else ()):
            connection.close(reason)

    def add_observer(self, observer: Callable[[str, PeerEvent], None]) -> None:
        """`observer(peer, event)` is called (synchronously) on every PeerEvent."""
        self._observers.append(observer)

    def connected_peers(self) -> frozenset[str]:
        return frozenset(name for name, s in self._peers.items() if s.current is not None)

    def statistics(self) -> PeerServiceStats:
        connections = [c for s in self._peers.values() for c in s.connections]
        return PeerServiceStats(
            open_connections=len(connections),
            connections_accepted=self._accepted,
            connections_dialled=self._dialled,
            dials_failed=self._dials_failed,
            handshakes_failed=self._handshakes_failed,
            calls_in_flight=sum(c.calls_in_flight for c in connections),
            requests_handled=self._requests_handled,
            requests_refused=self._requests_refused,
        )

    # -- connections ---------------------------------------------------------------------

    def _check_call(self, peer: str, timeout_s: float) -> None:
        if peer == self.node_name:
            raise LocalError(
                f"{self.node_name} cannot call itself over the network; call the local "
                "replica directly"
            )
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
            raise LocalError(f"timeout_s must be a positive finite number, got {timeout_s!r}")

    def _current_connection(self, peer: str) -> PeerConnection | None:
        state = self._peers.get(peer)
        return state.current if state else None

    async def _connection_for(self, peer: str) -> PeerConnection:
        if self._nursery is None:
            raise PeerUnavailable(peer, f"{self.node_name}'s peer service is not running")
        state = self._peers.setdefault(peer, _PeerState())
        if state.current is not None:
            return state.current
        if state.dialling is None:
            wait_s = state.next_dial_at - trio.current_time()
            if wait_s > 0:
                reason = state.last_error.args[0] if state.last_error else "unreachable"
                raise PeerUnavailable(peer, f"{reason} (next attempt in {wait_s:.2f} s)")
            state.dialling = trio.Event()
            self._nursery.start_soon(self._dial, peer, state, name=f"dial {peer}")
        await state.dialling.wait()
        if state.current is None:
            raise state.last_error or PeerUnavailable(peer)
        return state.current

    async def _dial(self, peer: str, state: _PeerState) -> None:
        try:
            stream: trio.abc.Stream | None = None
            try:
                address = self.addresses.get(peer)
                if address is None:
                    raise PeerUnavailable(peer, "no address known")
                stream = await self.transport.connect(address)
                codec = await self._handshake(stream, wire.Role.CLIENT)
                if codec.peer_name != peer:
                    raise ProtocolError(f"{address} answered as {codec.peer_name!r}, not {peer!r}")
            except _CONNECTION_ERRORS as exc:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                self._dial_failed(peer, state, exc)
                return
            except BaseException:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
            self._dialled += 1
            state.failures = 0
            state.next_dial_at = -math.inf
            state.last_error = None
            connection = PeerConnection(self, stream, codec, dialled=True)
            assert self._nursery is not None
            await self._nursery.start(connection.run)
        finally:
            done, state.dialling = state.dialling, None
            assert done is not None
            done.set()

    def _dial_failed(self, peer: str, state: _PeerState, exc: BaseException) -> None:
        self._dials_failed += 1
        state.failures += 1
        backoff_s = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (state.failures - 1))
        state.next_dial_at = trio.current_time() + backoff_s * self.rng.uniform(0.5, 1.0)
        detail = exc.args[0] if isinstance(exc, PeerUnavailable) else _reason(exc)
        state.last_error = PeerUnavailable(peer, str(detail))
        log.info("%s: cannot reach %s: %s", self.node_name, peer, detail)
        self._notify(peer, PeerEvent.DIAL_FAILED)

    async def _accept(self, stream: trio.abc.Stream) -> None:
        try:
            codec = await self._handshake(stream, wire.Role.SERVER)
        except _CONNECTION_ERRORS as exc:
            self._handshakes_failed += 1
            log.warning(
                "%s: dropped connection from %s: handshake failed: %s",
                self.node_name,
                _describe(stream),
                _reason(exc),
            )
            return
        self._accepted += 1
        await PeerConnection(self, stream, codec, dialled=False).run()

    async def _handshake(self, stream: trio.abc.Stream, role: wire.Role) -> wire.Connection:
        codec = wire.Connection(
            role,
            self.node_name,
            self._secret,
            self.nonce_source(wire.NONCE_BYTES),
            max_frame_bytes=self.max_frame_bytes,
        )
        with trio.fail_after(self.handshake_timeout_s):
            while True:
                event = codec.next_event()
                outgoing = codec.data_to_send()
                if outgoing:
                    await stream.send_all(outgoing)
                if isinstance(event, wire.Established):
                    return codec
                if event is not wire.NEED_DATA:
                    raise ProtocolError(f"unexpected {event!r} during the handshake")
                codec.receive_data(await stream.receive_some(RECEIVE_BYTES))

    def _connection_opened(self, connection: PeerConnection) -> None:
        state = self._peers.setdefault(connection.peer, _PeerState())
        state.connections[connection] = None
        self._choose_current(connection.peer, state)
        log.info(
            "%s: connected to %s (%s)",
            self.node_name,
            connection.peer,
            "dialled" if connection.dialled else "accepted",
        )
        self._notify(connection.peer, PeerEvent.CONNECTED)

    def _choose_current(self, peer: str, state: _PeerState) -> None:
        live = [c for c in state.connections if not c.closed]
        preferred_dialler = min(self.node_name, peer)
        # Both ends rank connections the same way, so they settle on the same one; among
        # equals the newest wins (an older one may be the half-open remains of a restart).
        ranked = sorted(enumerate(live), key=lambda ic: (ic[1].dialler == preferred_dialler, ic[0]))
        state.current = ranked[-1][1] if ranked else None
        for connection in live:
            if connection is not state.current:
                connection.retire_when_idle()

    def _connection_closed(self, connection: PeerConnection) -> None:
        state = self._peers.get(connection.peer)
        if state is None or connection not in state.connections:
            return
        del state.connections[connection]
        if state.current is connection:
            self._choose_current(connection.peer, state)
        self._notify(connection.peer, PeerEvent.DISCONNECTED)

    def _notify(self, peer: str, event: PeerEvent) -> None:
        for observer in self._observers:
            observer(peer, event)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or repr(exc.__cause__ or exc)


def _check_methods(handlers: Mapping[str, Handler]) -> None:
    bad = sorted(
        m for m in handlers if not (isinstance(m, str) and wire.METHOD_PATTERN.fullmatch(m))
    )
    if bad:
        raise ConfigError(
            f"handler method names must match {wire.METHOD_PATTERN.pattern}: "
            f"{', '.join(map(repr, bad))}"
        )
