"""MemoryNetwork: streams between named endpoints, with delay, partitions, breaks and refusals."""

from __future__ import annotations

import random

import pytest
import trio

from ringstore.errors import PeerUnavailable
from ringstore.net.memnet import LinkFaults, MemoryNetwork


async def echo(stream: trio.abc.Stream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the tests break connections on purpose


async def test_round_trip_and_eof(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    async with trio.open_nursery() as nursery:
        assert await nursery.start(net.transport("b").serve, echo) == "b"
        stream = await net.transport("a").connect("b")
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.send_all(b"abcdef")
        assert await stream.receive_some(4) == b"abcd"
        assert await stream.receive_some(4) == b"ef"
        assert net.statistics().open_streams == 2
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        nursery.cancel_scope.cancel()
    assert net.statistics().open_streams == 0


async def test_closing_one_end_gives_eof_to_readers_and_resets_writers(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    accepted: list[trio.abc.Stream] = []
    got_one = trio.Event()

    async def keep(stream: trio.abc.Stream) -> None:
        accepted.append(stream)
        got_one.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, keep)
        client = await net.transport("a").connect("b")
        await got_one.wait()
        await client.send_all(b"last words")
        await client.aclose()
        server = accepted[0]
        assert await server.receive_some() == b"last words"
        assert await server.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"anyone there?")
        nursery.cancel_scope.cancel()


async def test_delay_is_per_link_and_order_is_kept_under_jitter(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(7))
    net.set_faults("a", "b", LinkFaults(delay_s=0.5, jitter_s=0.4))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        start = trio.current_time()
        stream = await net.transport("a").connect("b")
        connect_s = trio.current_time() - start
        assert 1.0 <= connect_s <= 1.8  # one round trip
        for i in range(50):
            await stream.send_all(bytes([i]))
        received = b""
        while len(received) < 50:
            received += await stream.receive_some()
        assert received == bytes(range(50))
        assert trio.current_time() - start >= connect_s + 1.0
        nursery.cancel_scope.cancel()


async def test_same_seed_same_timings(autojump_clock) -> None:
    async def run(seed: int) -> list[float]:
        net = MemoryNetwork(random.Random(seed), default_faults=LinkFaults(0.01, 0.2))
        times = []
        async with trio.open_nursery() as nursery:
            await nursery.start(net.transport("b").serve, echo)
            stream = await net.transport("a").connect("b")
            start = trio.current_time()
            for _ in range(10):
                await stream.send_all(b"x")
                await stream.receive_some()
                times.append(round(trio.current_time() - start, 9))
            nursery.cancel_scope.cancel()
        return times

    assert await run(3) == await run(3)
    assert await run(3) != await run(4)


async def test_connect_refused_without_listener_and_injected_failures(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    with pytest.raises(PeerUnavailable, match="refused"):
        await net.transport("a").connect("b")
    net.set_faults("a", "b", LinkFaults(connect_failure_probability=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        with pytest.raises(PeerUnavailable, match="injected"):
            await net.transport("a").connect("b")
        stream = await net.transport("c").connect("b")  # other links are unaffected
        await stream.aclose()
        nursery.cancel_scope.cancel()
    stats = net.statistics()
    assert (stats.connects, stats.connects_failed) == (3, 2)
    net.set_faults("a", "b", LinkFaults())
    with pytest.raises(PeerUnavailable, match="refused"):
        await net.transport("a").connect("b")  # the listener went away with its task


async def test_partition_stalls_streams_and_heal_delivers(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1), connect_timeout_s=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        stream = await net.transport("a").connect("b")
        net.partition([("a", "b")])
        assert not net.can_talk("b", "a")
        await stream.send_all(b"queued")
        with trio.move_on_after(30):
            await stream.receive_some()
            pytest.fail("data crossed a partition")
        start = trio.current_time()
        with pytest.raises(PeerUnavailable, match="partitioned"):
            await net.transport("a").connect("b")
        assert trio.current_time() - start == pytest.approx(2.0)
        net.heal()
        assert await stream.receive_some() == b"queued"
        nursery.cancel_scope.cancel()


async def test_partition_can_break_streams_and_isolate(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        stream = await net.transport("a").connect("b")
        other = await net.transport("c").connect("b")
        net.isolate("b", ["a", "c"], break_streams=True)
        for s in (stream, other):
            with pytest.raises(trio.BrokenResourceError):
                await s.send_all(b"x")
        net.heal([("a", "b")])
        assert net.can_talk("a", "b") and not net.can_talk("c", "b")
        again = await net.transport("a").connect("b")
        await again.send_all(b"ok")
        assert await again.receive_some() == b"ok"
        with pytest.raises(ValueError):
            net.partition([("a", "a")])
        nursery.cancel_scope.cancel()


async def test_break_link_and_break_node_reset_blocked_readers(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        stream = await net.transport("a").connect("b")
        outcome: list[type[BaseException]] = []

        async def blocked_reader() -> None:
            try:
                await stream.receive_some()
            except trio.BrokenResourceError as exc:
                outcome.append(type(exc))

        async with trio.open_nursery() as readers:
            readers.start_soon(blocked_reader)
            await trio.testing.wait_all_tasks_blocked()
            assert net.break_link("b", "a") == 2
        assert outcome == [trio.BrokenResourceError]
        stream2 = await net.transport("a").connect("b")
        assert net.break_node("b") == 2
        with pytest.raises(trio.BrokenResourceError):
            await stream2.receive_some()
        nursery.cancel_scope.cancel()


async def test_writer_blocks_when_the_reader_does_not_read(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1), buffer_bytes=1000)
    accepted: list[trio.abc.Stream] = []
    got_one = trio.Event()

    async def keep(stream: trio.abc.Stream) -> None:
        accepted.append(stream)
        got_one.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, keep)
        stream = await net.transport("a").connect("b")
        await got_one.wait()
        await stream.send_all(b"x" * 1000)
        with trio.move_on_after(10) as scope:
            await stream.send_all(b"y")
        assert scope.cancelled_caught
        assert await accepted[0].receive_some() == b"x" * 1000
        with trio.fail_after(1):
            await stream.send_all(b"y")
        nursery.cancel_scope.cancel()


async def test_concurrent_use_of_one_direction_is_an_error(autojump_clock) -> None:
    net = MemoryNetwork(random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.transport("b").serve, echo)
        stream = await net.transport("a").connect("b")
        nursery.start_soon(stream.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.receive_some()
        with pytest.raises(ValueError):
            await stream.receive_some(0)
        nursery.cancel_scope.cancel()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkFaults(delay_s=-1)
    with pytest.raises(ValueError):
        LinkFaults(connect_failure_probability=1.5)
    with pytest.raises(ValueError):
        MemoryNetwork(random.Random(1), buffer_bytes=0)
    with pytest.raises(ValueError):
        MemoryNetwork(random.Random(1)).transport("")
