"""PeerService calls over real TCP sockets and over the in-memory network (same scenarios).

Every test taking `make_cluster` and `clock` runs twice: over TCP on 127.0.0.1 in real time
and over a MemoryNetwork under MockClock(autojump_threshold=0).
"""

from __future__ import annotations

import functools
import logging
import random

import pytest
import trio

from ringstore.config import ConfigError
from ringstore.errors import (
    LocalError,
    LocalProtocolError,
    NotFound,
    PeerTimeout,
    PeerUnavailable,
    RemoteCallError,
)
from ringstore.net import rpc
from ringstore.net.connection import Inline
from ringstore.net.memnet import LinkFaults, MemoryNetwork
from ringstore.net.rpc import PeerEvent, PeerService

DEADLINE_S = 10.0  # generous bound on any wait in these tests; they finish far sooner
# Runs on the in-memory network (under MockClock) only: overrides the `kind` fixture.
MEMORY_ONLY = pytest.mark.parametrize("kind", ["memory"])


async def echo(peer: str, body: dict) -> dict:
    return {"peer": peer, "body": body}


class Blocker:
    """A handler that never returns on its own; counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.entered = trio.Event()
        self.release = trio.Event()

    async def __call__(self, peer: str, body: dict) -> dict:
        self.calls += 1
        self.running += 1
        self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return {"released": True}

    async def wait_for_calls(self, count: int) -> None:
        while self.calls < count:
            self.entered = trio.Event()
            await self.entered.wait()


def disconnected(service: PeerService, peer: str) -> trio.Event:
    """An event set when `service` sees its connection to `peer` end."""
    event = trio.Event()

    def observe(name: str, what: PeerEvent) -> None:
        if name == peer and what is PeerEvent.DISCONNECTED:
            event.set()

    service.add_observer(observe)
    return event


async def test_round_trip_both_ways_over_one_connection(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a", {"echo": echo})
        b = await cluster.start("b", {"echo": echo})
        with trio.fail_after(DEADLINE_S):
            assert await a.call("b", "echo", {"x": 1}, timeout_s=5) == {
                "peer": "a",
                "body": {"x": 1},
            }
            assert await b.call("a", "echo", {"y": b"\x00" * 10}, timeout_s=5) == {
                "peer": "b",
                "body": {"y": b"\x00" * 10},
            }
            assert await a.ping("b", timeout_s=5) >= 0
        for service, accepted, dialled in ((a, 0, 1), (b, 1, 0)):
            stats = service.statistics()
            assert stats.open_connections == 1
            assert (stats.connections_accepted, stats.connections_dialled) == (accepted, dialled)
            assert stats.requests_handled == 1
        assert a.connected_peers() == {"b"}


async def test_large_bodies_cross_intact(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a", {"echo": echo})
        await cluster.start("b", {"echo": echo})
        payload = random.Random(5).randbytes(1024 * 1024)
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    call = functools.partial(a.call, timeout_s=5)
                    nursery.start_soon(call, "b", "echo", {"i": i, "data": payload})
            reply = await a.call("b", "echo", {"data": payload}, timeout_s=5)
        assert reply["body"]["data"] == payload


async def test_many_concurrent_calls_share_one_connection(make_cluster, clock) -> None:
    active = 0
    most_active = 0

    async def slow_echo(peer: str, body: dict) -> dict:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        await trio.sleep(0.001 * (body["i"] % 7))
        active -= 1
        return {"i": body["i"]}

    async with make_cluster() as cluster:
        a = await cluster.start("a", max_calls_in_flight=8)
        b = await cluster.start("b", {"echo": slow_echo})
        results: dict[int, dict] = {}

        async def one(i: int) -> None:
            results[i] = await a.call("b", "echo", {"i": i}, timeout_s=DEADLINE_S)

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
        assert results == {i: {"i": i} for i in range(300)}
        assert 1 < most_active <= 8  # concurrent, and bounded by the caller's slots
        assert a.statistics().connections_dialled == 1
        assert b.statistics().connections_accepted == 1
        assert a.statistics().calls_in_flight == 0


async def test_error_replies_carry_kind_and_message(make_cluster, clock, caplog) -> None:
    async def not_found(peer: str, body: dict) -> dict:
        raise NotFound(f"no key {body['key']!r}")

    async def buggy(peer: str, body: dict) -> dict:
        raise ValueError("secret internals")

    async def bad_reply(peer: str, body: dict) -> dict:
        return {"value": 1.5}  # floats cannot travel

    handlers = {"get": not_found, "buggy": buggy, "bad-reply": bad_reply, "echo": echo}
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", handlers)
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(RemoteCallError) as info:
                await a.call("b", "get", {"key": "k1"}, timeout_s=5)
            assert (info.value.peer, info.value.kind) == ("b", "NotFound")
            assert info.value.remote_message == "no key 'k1'"
            with (
                caplog.at_level(logging.ERROR, logger="ringstore.net.rpc"),
                pytest.raises(RemoteCallError) as info,
            ):
                await a.call("b", "buggy", {}, timeout_s=5)
            assert info.value.kind == "InternalError"
            assert "secret internals" not in str(info.value)
            assert "secret internals" in caplog.text  # logged on the serving side
            with pytest.raises(RemoteCallError) as info:
                await a.call("b", "bad-reply", {}, timeout_s=5)
            assert info.value.kind == "LocalProtocolError"
            with pytest.raises(RemoteCallError, match="no handler for method 'nope'") as info:
                await a.call("b", "nope", {}, timeout_s=5)
            assert info.value.kind == "LocalError"
            cluster.services["b"].register("nope", echo)
            assert await a.call("b", "nope", {}, timeout_s=5) == {"peer": "a", "body": {}}
            # The connection survives every error reply.
            assert await a.call("b", "echo", {}, timeout_s=5) == {"peer": "a", "body": {}}
            assert a.statistics().connections_dialled == 1


async def test_inline_handlers_answer_at_once_even_when_every_handler_slot_is_busy(
    make_cluster, clock, caplog
) -> None:
    def lookup(peer: str, body: dict) -> dict:
        if body.get("key") == "missing":
            raise NotFound("no such key")
        if body.get("key") == "bug":
            raise ValueError("secret internals")
        return {"peer": peer, "value": body.get("key")}

    blocker = Blocker()
    handlers = {"lookup": Inline(lookup), "block": blocker}
    async with make_cluster() as cluster:
        a = await cluster.start("a", max_calls_in_flight=4)
        await cluster.start("b", handlers, max_calls_in_flight=1, max_handlers_per_connection=1)
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(a.call, "b", "block", {}, timeout_s=5))
                await blocker.wait_for_calls(1)  # the one handler slot is taken
                reply = await a.call("b", "lookup", {"key": "k"}, timeout_s=5)
                assert reply == {"peer": "a", "value": "k"}
                with pytest.raises(RemoteCallError) as info:
                    await a.call("b", "lookup", {"key": "missing"}, timeout_s=5)
                assert (info.value.kind, info.value.remote_message) == ("NotFound", "no such key")
                with caplog.at_level(logging.ERROR), pytest.raises(RemoteCallError) as info:
                    await a.call("b", "lookup", {"key": "bug"}, timeout_s=5)
                assert info.value.kind == "InternalError"
                assert "secret internals" not in str(info.value)
                assert "secret internals" in caplog.text  # logged on the serving side
                blocker.release.set()
            assert await a.call("b", "lookup", {"key": "again"}, timeout_s=5) == {
                "peer": "a",
                "value": "again",
            }
            assert a.statistics().connections_dialled == 1


async def test_bad_calls_are_refused_before_anything_is_sent(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo})
        with pytest.raises(LocalError, match="cannot call itself"):
            await a.call("a", "echo", {}, timeout_s=1)
        for timeout_s in (0, -1, float("inf"), float("nan")):
            with pytest.raises(LocalError, match="timeout_s"):
                await a.call("b", "echo", {}, timeout_s=timeout_s)
        with pytest.raises(LocalProtocolError, match="method"):
            await a.call("b", "Not A Method", {}, timeout_s=1)
        with pytest.raises(LocalProtocolError):
            await a.call("b", "echo", {"f": 1.5}, timeout_s=1)
        with pytest.raises(LocalProtocolError):
            await a.call("b", "echo", ["not", "a", "dict"], timeout_s=1)  # type: ignore[arg-type]
        with pytest.raises(PeerUnavailable, match="no address known"):
            await a.call("zed", "echo", {}, timeout_s=1)
        assert a.statistics().connections_dialled == 0


async def test_frames_over_the_limit_are_refused_locally(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a", max_frame_bytes=64 * 1024)
        await cluster.start("b", {"echo": echo})
        with trio.fail_after(DEADLINE_S):
            with pytest.raises(LocalProtocolError, match="frame limit"):
                await a.call("b", "echo", {"data": bytes(100_000)}, timeout_s=5)
            assert await a.call("b", "echo", {}, timeout_s=5) == {"peer": "a", "body": {}}


async def test_call_timeout(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        b = await cluster.start("b", {"block": blocker, "echo": echo})
        with trio.fail_after(DEADLINE_S):
            start = trio.current_time()
            with pytest.raises(PeerTimeout) as info:
                await a.call("b", "block", {}, timeout_s=0.3)
            elapsed = trio.current_time() - start
            assert info.value.peer == "b" and info.value.timeout_s == 0.3
            assert 0.3 <= elapsed < 2.0
            if clock is not None:
                assert elapsed == pytest.approx(0.3)
            assert blocker.calls == 1 and a.statistics().calls_in_flight == 0
            # The connection stays usable, and the late reply is ignored.
            assert await a.call("b", "echo", {}, timeout_s=5) == {"peer": "a", "body": {}}
            blocker.release.set()
            assert await a.call("b", "echo", {"n": 2}, timeout_s=5) == {
                "peer": "a",
                "body": {"n": 2},
            }
            assert b.statistics().requests_handled == 3


async def test_broken_connection_fails_pending_calls_at_once(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"block": blocker})
        failures: list[BaseException] = []

        async def pending_call() -> None:
            try:
                await a.call("b", "block", {}, timeout_s=60)
            except PeerUnavailable as exc:
                failures.append(exc)

        start = trio.current_time()
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(pending_call)
                await blocker.wait_for_calls(5)
                await cluster.stop("b")
        assert len(failures) == 5
        assert all("connection lost" in str(exc) for exc in failures)
        assert trio.current_time() - start < 5  # at once, not at the 60 s timeout
        assert a.statistics().open_connections == 0


async def test_reconnects_after_the_peer_restarts(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo})
        with trio.fail_after(DEADLINE_S):
            assert await a.call("b", "echo", {"n": 1}, timeout_s=5)
            gone = disconnected(a, "b")
            await cluster.stop("b")
            await gone.wait()  # a call racing the close could fail: the peer never read it
            await cluster.start("b", {"echo": echo})
            assert await a.call("b", "echo", {"n": 2}, timeout_s=5) == {
                "peer": "a",
                "body": {"n": 2},
            }
        assert a.statistics().connections_dialled == 2


@MEMORY_ONLY  # exact back-off timing is checked under MockClock
async def test_failed_dials_back_off_exponentially(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo})
        await a.call("b", "echo", {}, timeout_s=5)
        gone = disconnected(a, "b")
        await cluster.stop("b")
        await gone.wait()
        for failures in range(1, 8):
            with pytest.raises(PeerUnavailable, match="refused"):
                await a.call("b", "echo", {}, timeout_s=5)
            assert a.statistics().dials_failed == failures
            bound_s = min(rpc.BACKOFF_MAX_S, rpc.BACKOFF_INITIAL_S * 2 ** (failures - 1))
            # Jitter keeps the wait within [bound/2, bound]: before half of it, calls fail
            # at once without dialling.
            await trio.sleep(bound_s / 2 * 0.99)
            with pytest.raises(PeerUnavailable, match="next attempt in"):
                await a.call("b", "echo", {}, timeout_s=5)
            assert a.statistics().dials_failed == failures
            await trio.sleep(bound_s / 2 * 1.02)
        await cluster.start("b", {"echo": echo})
        assert await a.call("b", "echo", {}, timeout_s=5) == {"peer": "a", "body": {}}


async def test_handlers_beyond_the_bound_are_refused(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a = await cluster.start("a", max_calls_in_flight=4)
        b = await cluster.start(
            "b", {"block": blocker}, max_calls_in_flight=1, max_handlers_per_connection=2
        )
        outcomes: list[RemoteCallError] = []
        two_refused = trio.Event()

        async def one() -> None:
            try:
                await a.call("b", "block", {}, timeout_s=5)
            except RemoteCallError as exc:
                outcomes.append(exc)
                if len(outcomes) == 2:
                    two_refused.set()

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)
                await two_refused.wait()
                await blocker.wait_for_calls(2)
                assert blocker.running == 2
                blocker.release.set()
        assert [exc.kind for exc in outcomes] == ["Overloaded", "Overloaded"]
        assert b.statistics().requests_refused == 2


@MEMORY_ONLY  # the grace period is waited out under MockClock
async def test_simultaneous_dials_settle_on_one_connection(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a", {"echo": echo})
        b = await cluster.start("b", {"echo": echo})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(a.call, "b", "echo", {}, timeout_s=5))
            nursery.start_soon(functools.partial(b.call, "a", "echo", {}, timeout_s=5))
        assert a.statistics().open_connections == 2
        await trio.sleep(rpc.SUPERSEDED_GRACE_S * 1.5)
        for service in (a, b):
            assert service.statistics().open_connections == 1
        # Both ends kept the connection dialled by "a", the smaller name.
        assert a._current_connection("b").dialled  # type: ignore[union-attr]
        assert not b._current_connection("a").dialled  # type: ignore[union-attr]
        assert await b.call("a", "echo", {}, timeout_s=5) == {"peer": "b", "body": {}}


async def test_calls_before_start_and_after_stop_are_unavailable(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = PeerService("a", b"x" * 32, cluster.transport("a"), {}, {}, random.Random(1))
        with pytest.raises(PeerUnavailable, match="not running"):
            await a.call("b", "echo", {}, timeout_s=1)
        a = await cluster.start("a")
        await cluster.stop("a")
        with pytest.raises(PeerUnavailable, match="not running"):
            await a.call("b", "echo", {}, timeout_s=1)


def test_bad_service_configuration_is_refused() -> None:
    transport = MemoryNetwork(random.Random(1)).transport("a")

    def make(**overrides: object) -> PeerService:
        args: dict = dict(
            node_name="a",
            secret=b"k" * 32,
            transport=transport,
            addresses={},
            handlers={},
            rng=random.Random(1),
        )
        args.update(overrides)
        return PeerService(**args)

    make()
    with pytest.raises(ConfigError, match="secret"):
        make(secret=b"short")
    with pytest.raises(ConfigError, match="name"):
        make(node_name="")
    with pytest.raises(ConfigError, match="method names"):
        make(handlers={"Bad Name": echo})
    with pytest.raises(ConfigError, match="method names"):
        make().register("", echo)
    with pytest.raises(ConfigError, match="max_calls_in_flight"):
        make(max_calls_in_flight=0)
    with pytest.raises(ConfigError, match="max_calls_in_flight"):
        make(max_calls_in_flight=10, max_handlers_per_connection=5)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        make(max_frame_bytes=10)
    with pytest.raises(ConfigError, match="positive"):
        make(handshake_timeout_s=0)


@MEMORY_ONLY  # partitions exist on the in-memory network only
async def test_partition_stalls_calls_and_heal_resumes(make_cluster, clock) -> None:
    blocker = Blocker()
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo, "block": blocker})
        assert await a.call("b", "echo", {}, timeout_s=5)
        cluster.net.partition([("a", "b")])
        with pytest.raises(PeerTimeout):
            await a.call("b", "echo", {}, timeout_s=2)
        cluster.net.heal()
        assert await a.call("b", "echo", {"n": 1}, timeout_s=5) == {"peer": "a", "body": {"n": 1}}
        assert a.statistics().connections_dialled == 1  # the stalled connection survived

        failures: list[PeerUnavailable] = []

        async def pending_call() -> None:
            try:
                await a.call("b", "block", {}, timeout_s=60)
            except PeerUnavailable as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending_call)
            await blocker.wait_for_calls(1)
            start = trio.current_time()
            cluster.net.partition([("a", "b")], break_streams=True)
        assert len(failures) == 1 and trio.current_time() == start  # failed at once
        with pytest.raises(PeerUnavailable, match="partitioned"):
            await a.call("b", "echo", {}, timeout_s=10)  # the re-dial hangs, then fails
        cluster.net.heal()
        await trio.sleep(rpc.BACKOFF_MAX_S)
        assert await a.call("b", "echo", {}, timeout_s=5) == {"peer": "a", "body": {}}
        assert a.statistics().connections_dialled == 2


@MEMORY_ONLY  # link delays exist on the in-memory network only
async def test_link_delay_is_one_round_trip_per_call(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b", {"echo": echo})
        cluster.net.set_faults("a", "b", LinkFaults(delay_s=0.1))
        assert await a.call("b", "echo", {}, timeout_s=5)  # connect + handshake
        start = trio.current_time()
        assert await a.call("b", "echo", {}, timeout_s=5)
        assert trio.current_time() - start == pytest.approx(0.2)
        with pytest.raises(PeerTimeout):
            await a.call("b", "echo", {}, timeout_s=0.15)
