"""An in-memory network of named endpoints whose links the simulator can delay, break and cut.

`MemoryNetwork(rng)` hands out one `MemoryTransport` per node name; `connect(name)` gives
a pair of in-process byte streams (`trio.abc.Stream`), so the peer layer above runs exactly
as over TCP. All faults are per link (an unordered pair of names) and every random choice
comes from the `random.Random` passed in, so one seed gives one run:

- delay: each write reaches the reader `delay_s + uniform(0, jitter_s)` seconds later;
  bytes stay in order (a later write never overtakes an earlier one), as on TCP.
- connect failure: a connect fails with a given probability (the node looks down).
- partition: pairs that cannot talk. Connecting across a partition waits
  `connect_timeout_s` and fails (a dropped SYN, not a refusal); existing streams stall —
  writes fill the buffer then block, nothing is delivered — until the partition heals, or
  break at once when asked (`break_streams=True`), like a reset.
- break: every stream of a link (or of a node) fails with `trio.BrokenResourceError`.

Duplication and reordering are not offered: they are not things a byte stream can do (TCP
delivers each connection's bytes once, in order), and the layers above only ever see
streams. Their message-level effects still happen the way they do in production: a call
that timed out or whose connection broke may have been executed anyway, and a retry on a
new connection can arrive after newer traffic. Tests for idempotency drive those retries.

Each direction of a stream buffers at most `buffer_bytes` (plus one write), like a socket
buffer, so a reader that stops reading pushes back on the writer.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from ringstore.errors import PeerUnavailable
from ringstore.net.transport import StreamHandler

log = logging.getLogger(__name__)

# Enough for several large frames in flight, small enough that backpressure shows in tests.
DEFAULT_BUFFER_BYTES = 256 * 1024
# The same default as TcpTransport: how long a connect into a partition hangs before failing.
DEFAULT_CONNECT_TIMEOUT_S = 3.0

Link = frozenset[str]


def _link(a: str, b: str) -> Link:
    return frozenset((a, b))


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Per-link settings: latency of each write and the chance a connect fails."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    connect_failure_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must not be negative")
        if not 0.0 <= self.connect_failure_probability <= 1.0:
            raise ValueError("connect_failure_probability must be within [0, 1]")


@dataclass(frozen=True, slots=True)
class NetworkStats:
    connects: int
    connects_failed: int
    open_streams: int
    bytes_delivered: int


class _Pipe:
    """One direction of a stream: writes from `src` waiting to be read at `dst`."""

    def __init__(self, network: MemoryNetwork, src: str, dst: str) -> None:
        self.network = network
        self.src = src
        self.dst = dst
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.buffered = 0
        self.last_delivery_at = 0.0
        self.write_closed = False  # the writer closed: the reader sees EOF after the data
        self.read_closed = False  # the reader closed: writes fail as on a reset socket
        self.broken = False
        self._wakeup = trio.Event()

    def notify(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def wait(self, deadline: float = float("inf")) -> None:
        with trio.move_on_at(deadline):
            await self._wakeup.wait()

    def break_(self) -> None:
        self.broken = True
        self.chunks.clear()
        self.buffered = 0
        self.notify()


class MemoryStream(trio.abc.Stream):
    """One end of an in-memory connection between two named endpoints."""

    def __init__(
        self, network: MemoryNetwork, local: str, remote: str, outgoing: _Pipe, incoming: _Pipe
    ) -> None:
        self.network = network
        self.local = local
        self.remote = remote
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._sending = False
        self._receiving = False

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await self._send_all(bytes(data))
        finally:
            self._sending = False

    async def _send_all(self, data: bytes) -> None:
        pipe = self._out
        await trio.lowlevel.checkpoint()
        while True:
            self._check_usable()
            if pipe.broken or pipe.read_closed:
                raise trio.BrokenResourceError(f"{self.local} -> {self.remote}: connection reset")
            if pipe.write_closed:
                raise trio.ClosedResourceError("the sending side was closed")
            if pipe.buffered < self.network.buffer_bytes:
                break
            await pipe.wait()
        if not data:
            return
        deliver_at = max(
            trio.current_time() + self.network._latency(self.local, self.remote),
            pipe.last_delivery_at,
        )
        pipe.last_delivery_at = deliver_at
        pipe.chunks.append((deliver_at, data))
        pipe.buffered += len(data)
        pipe.notify()

    async def wait_send_all_might_not_block(self) -> None:
        pipe = self._out
        await trio.lowlevel.checkpoint()
        while (
            not self._closed
            and not pipe.broken
            and not pipe.read_closed
            and pipe.buffered >= self.network.buffer_bytes
        ):
            await pipe.wait()
        self._check_usable()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            return await self._receive_some(max_bytes)
        finally:
            self._receiving = False

    async def _receive_some(self, max_bytes: int | None) -> bytes:
        pipe = self._in
        await trio.lowlevel.checkpoint()
        while True:
            self._check_usable()
            if pipe.broken:
                raise trio.BrokenResourceError(f"{self.remote} -> {self.local}: connection reset")
            if pipe.chunks and self.network.can_talk(pipe.src, pipe.dst):
                deliver_at, data = pipe.chunks[0]
                if deliver_at <= trio.current_time():
                    break
                await pipe.wait(deliver_at)
            elif not pipe.chunks and pipe.write_closed:
                return b""
            else:
                await pipe.wait()
        if max_bytes is None or len(data) <= max_bytes:
            pipe.chunks.popleft()
        else:
            pipe.chunks[0] = (deliver_at, data[max_bytes:])
            data = data[:max_bytes]
        pipe.buffered -= len(data)
        self.network._bytes_delivered += len(data)
        pipe.notify()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.write_closed = True
            self._in.read_closed = True
            self._in.chunks.clear()
            self._in.buffered = 0
            self._out.notify()
            self._in.notify()
            self.network._forget(self)
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """One node's view of a `MemoryNetwork`: addresses are node names."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name

    async def serve(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self.name in self.network._listeners:
            raise OSError(f"{self.name} is already listening")
        async with trio.open_nursery() as nursery:
            self.network._listeners[self.name] = (nursery, handler)
            try:
                task_status.started(self.name)
                await trio.sleep_forever()
            finally:
                del self.network._listeners[self.name]

    async def connect(self, address: str) -> trio.abc.Stream:
        return await self.network._connect(self.name, address)


class MemoryNetwork:
    """Named endpoints joined by in-memory links under the simulator's control."""

    def __init__(
        self,
        rng: random.Random,
        *,
        default_faults: LinkFaults = LinkFaults(),
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be positive")
        self.rng = rng
        self.default_faults = default_faults
        self.buffer_bytes = buffer_bytes
        self.connect_timeout_s = connect_timeout_s
        self._faults: dict[Link, LinkFaults] = {}
        self._cut: set[Link] = set()
        self._listeners: dict[str, tuple[trio.Nursery, StreamHandler]] = {}
        # Dicts as ordered sets: wake-up order must not depend on object ids (seeded runs).
        self._streams: dict[Link, dict[MemoryStream, None]] = collections.defaultdict(dict)
        self._connects = 0
        self._connects_failed = 0
        self._bytes_delivered = 0

    def transport(self, name: str) -> MemoryTransport:
        if not name:
            raise ValueError("an endpoint needs a name")
        return MemoryTransport(self, name)

    # -- controls ------------------------------------------------------------------------

    def set_faults(self, a: str, b: str, faults: LinkFaults) -> None:
        """Set delay/jitter/connect-failure for the link between `a` and `b`."""
        self._faults[_link(a, b)] = faults

    def faults(self, a: str, b: str) -> LinkFaults:
        return self._faults.get(_link(a, b), self.default_faults)

    def partition(self, pairs: Iterable[tuple[str, str]], *, break_streams: bool = False) -> None:
        """Cut these links: connects hang then fail; streams stall (or break if asked)."""
        for a, b in pairs:
            if a == b:
                raise ValueError(f"cannot partition {a!r} from itself")
            self._cut.add(_link(a, b))
            if break_streams:
                self.break_link(a, b)
        self._wake_all()

    def isolate(self, name: str, others: Iterable[str], *, break_streams: bool = False) -> None:
        """Cut `name` off from each of `others`."""
        self.partition(
            ((name, other) for other in others if other != name), break_streams=break_streams
        )

    def heal(self, pairs: Iterable[tuple[str, str]] | None = None) -> None:
        """Restore the given links, or every link when `pairs` is None; stalled data flows."""
        if pairs is None:
            self._cut.clear()
        else:
            for a, b in pairs:
                self._cut.discard(_link(a, b))
        self._wake_all()

    def can_talk(self, a: str, b: str) -> bool:
        return a == b or _link(a, b) not in self._cut

    def break_link(self, a: str, b: str) -> int:
        """Reset every open stream between `a` and `b`; return how many there were."""
        return self._break(_link(a, b))

    def break_node(self, name: str) -> int:
        """Reset every open stream of `name` (what its peers see when it crashes)."""
        return sum(self._break(link) for link in list(self._streams) if name in link)

    def statistics(self) -> NetworkStats:
        return NetworkStats(
            connects=self._connects,
            connects_failed=self._connects_failed,
            open_streams=sum(len(s) for s in self._streams.values()),
            bytes_delivered=self._bytes_delivered,
        )

    # -- internals -----------------------------------------------------------------------

    def _wake_all(self) -> None:
        for streams in self._streams.values():
            for stream in streams:
                stream._in.notify()
                stream._out.notify()

    def _break(self, link: Link) -> int:
        streams = self._streams.pop(link, {})
        for stream in streams:
            stream._out.break_()
            stream._in.break_()
        return len(streams)

    def _latency(self, src: str, dst: str) -> float:
        faults = self.faults(src, dst)
        jitter = self.rng.uniform(0.0, faults.jitter_s) if faults.jitter_s else 0.0
        return faults.delay_s + jitter

    def _forget(self, stream: MemoryStream) -> None:
        link = _link(stream.local, stream.remote)
        streams = self._streams.get(link)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self._streams[link]

    async def _connect(self, src: str, dst: str) -> MemoryStream:
        self._connects += 1
        try:
            return await self._open(src, dst)
        except PeerUnavailable:
            self._connects_failed += 1
            raise

    async def _open(self, src: str, dst: str) -> MemoryStream:
        faults = self.faults(src, dst)
        if not self.can_talk(src, dst):
            await trio.sleep(self.connect_timeout_s)
            raise PeerUnavailable(dst, "cannot connect: timed out (partitioned)")
        # A connect costs one round trip (SYN, SYN-ACK).
        await trio.sleep(self._latency(src, dst) + self._latency(dst, src))
        if faults.connect_failure_probability and (
            self.rng.random() < faults.connect_failure_probability
        ):
            raise PeerUnavailable(dst, "cannot connect: injected failure")
        if not self.can_talk(src, dst):
            await trio.sleep(self.connect_timeout_s)
            raise PeerUnavailable(dst, "cannot connect: timed out (partitioned)")
        listener = self._listeners.get(dst)
        if listener is None:
            raise PeerUnavailable(dst, "cannot connect: connection refused")
        nursery, handler = listener
        forward = _Pipe(self, src, dst)
        backward = _Pipe(self, dst, src)
        client = MemoryStream(self, src, dst, forward, backward)
        server = MemoryStream(self, dst, src, backward, forward)
        self._streams[_link(src, dst)].update({client: None, server: None})
        nursery.start_soon(_serve_one, handler, server, name=f"memnet {dst}<-{src}")
        return client


async def _serve_one(handler: StreamHandler, stream: MemoryStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)
