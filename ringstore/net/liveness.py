"""Which peers are up: periodic pings; down after K misses or a failed dial, up at an answer.

One watcher task per member pings it every `ping_interval_s` over the peer service (which
dials when needed, so pings are also what re-dials a peer that went away). A ping slower
than `ping_timeout_s`, or failing, is a miss; `misses_down` misses in a row mark the peer
down and drop its connections (a silent connection may be half-open). A dial that fails
marks it down at once (the peer refused or could not be reached). Any answer — a pong or a
completed handshake in either direction — marks it up. When a connection breaks the
watcher pings at once instead of waiting for the next round, so a restarted peer is up
again within one round trip and a dead one is down within one failed dial.

Nodes start down: a peer counts as up only once it has answered. This node is always up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from ringstore.config import ConfigError
from ringstore.errors import PeerError
from ringstore.net.rpc import PeerEvent, PeerService

log = logging.getLogger(__name__)

# One tiny frame per peer per second, and a dead peer is noticed within a few seconds.
PING_INTERVAL_S = 1.0
# One slow or lost ping (a GC pause, a burst of large transfers) must not flap a node down.
MISSES_DOWN = 3
# A pong slower than a whole interval means the peer is not keeping up: count it as missed.
PING_TIMEOUT_S = PING_INTERVAL_S


@dataclass(frozen=True, slots=True)
class PeerHealth:
    """One peer as liveness sees it."""

    up: bool
    misses: int  # pings missed in a row
    last_rtt_s: float | None  # the last answered ping's round trip
    changed_at: float  # trio time of the last up/down change


class Liveness:
    """Tracks which members answer; `wait_membership_change()` wakes on every up/down change.

    `peers()` gives the current member names (default: the service's address book); it is
    read every round, so members may come and go.
    """

    def __init__(
        self,
        service: PeerService,
        *,
        peers: Callable[[], Iterable[str]] | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        ping_timeout_s: float | None = None,
        misses_down: int = MISSES_DOWN,
    ) -> None:
        ping_timeout_s = ping_interval_s if ping_timeout_s is None else ping_timeout_s
        if not ping_interval_s > 0 or not ping_timeout_s > 0:
            raise ConfigError("ping_interval_s and ping_timeout_s must be positive")
        if misses_down < 1:
            raise ConfigError("misses_down must be at least 1")
        self.service = service
        self.node_name = service.node_name
        self._peers = peers if peers is not None else (lambda: list(service.addresses))
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.misses_down = misses_down
        self._health: dict[str, PeerHealth] = {}
        self._kicks: dict[str, trio.Event] = {}
        self._changed = trio.Event()
        service.add_observer(self._observe)

    # -- queries -------------------------------------------------------------------------

    def is_up(self, node: str) -> bool:
        if node == self.node_name:
            return True
        health = self._health.get(node)
        return health is not None and health.up

    def up_nodes(self) -> frozenset[str]:
        """Every member that is up, this node included."""
        return frozenset([self.node_name, *(n for n, h in self._health.items() if h.up)])

    def health(self) -> dict[str, PeerHealth]:
        """A snapshot of every watched peer."""
        return dict(self._health)

    async def wait_membership_change(self) -> frozenset[str]:
        """Wait until some peer goes up or down; return the new `up_nodes()`."""
        await self._changed.wait()
        return self.up_nodes()

    # -- service -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    for peer in sorted(self._members()):
                        if peer not in self._kicks:
                            self._kicks[peer] = trio.Event()
                            self._health[peer] = PeerHealth(False, 0, None, trio.current_time())
                            nursery.start_soon(self._watch, peer, name=f"liveness {peer}")
                    await trio.sleep(self.ping_interval_s)
        finally:
            self._kicks.clear()
            if self._health:
                self._health.clear()
                self._signal_change()

    def _members(self) -> set[str]:
        return {peer for peer in self._peers() if peer != self.node_name}

    async def _watch(self, peer: str) -> None:
        try:
            early = False
            while peer in self._members():
                # Rounds start every interval whatever a ping takes, so K misses take K
                # intervals (with the default timeout of one interval).
                next_round_at = trio.current_time() + self.ping_interval_s
                try:
                    rtt_s = await self.service.ping(peer, timeout_s=self.ping_timeout_s)
                except PeerError as exc:
                    self._missed(peer, str(exc))
                else:
                    self._answered(peer, rtt_s)
                with trio.move_on_at(next_round_at) as waited:
                    # A broken connection starts the next round at once, but only every
                    # other round: a peer that accepts and drops at once cannot spin us.
                    if early:
                        await trio.sleep_forever()
                    await self._kicks[peer].wait()
                early = not waited.cancelled_caught
                self._kicks[peer] = trio.Event()
        finally:
            self._kicks.pop(peer, None)
            health = self._health.pop(peer, None)
            if health is not None and health.up:
                self._signal_change()

    def _observe(self, peer: str, event: PeerEvent) -> None:
        if peer not in self._health:
            return  # not a member we watch (yet)
        if event is PeerEvent.CONNECTED:
            self._answered(peer, None)
        elif event is PeerEvent.DIAL_FAILED:
            self._set(peer, up=False, misses=self.misses_down, why="dial failed")
        elif event is PeerEvent.DISCONNECTED:
            kick = self._kicks.get(peer)
            if kick is not None:
                kick.set()

    def _answered(self, peer: str, rtt_s: float | None) -> None:
        if peer in self._health:
            self._set(peer, up=True, misses=0, rtt_s=rtt_s, why="answered")

    def _missed(self, peer: str, why: str) -> None:
        health = self._health.get(peer)
        if health is None:
            return
        misses = health.misses + 1
        if health.up and misses >= self.misses_down:
            self.service.drop_connections(peer, f"missed {misses} pings")
        self._set(peer, up=health.up and misses < self.misses_down, misses=misses, why=why)

    def _set(
        self, peer: str, *, up: bool, misses: int, why: str, rtt_s: float | None = None
    ) -> None:
        old = self._health[peer]
        changed_at = old.changed_at if old.up == up else trio.current_time()
        rtt = rtt_s if rtt_s is not None else old.last_rtt_s
        self._health[peer] = PeerHealth(up, misses, rtt, changed_at)
        if old.up != up:
            log.info("%s: %s is %s (%s)", self.node_name, peer, "up" if up else "down", why)
            self._signal_change()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
