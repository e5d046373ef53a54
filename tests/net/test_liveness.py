"""Liveness: peers go down when stopped or cut off, and come back up at their first answer."""

from __future__ import annotations

import pytest
import trio

from ringstore.config import ConfigError
from ringstore.net.liveness import Liveness

DEADLINE_S = 10.0
# Runs on the in-memory network (under MockClock) only: overrides the `kind` fixture.
MEMORY_ONLY = pytest.mark.parametrize("kind", ["memory"])


async def wait_until(live: Liveness, predicate) -> None:
    while not predicate():
        await live.wait_membership_change()


async def test_stopped_node_goes_down_and_restarted_node_comes_up(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b")
        live = Liveness(a, ping_interval_s=0.2)
        assert live.up_nodes() == {"a"} and live.is_up("a") and not live.is_up("b")
        await cluster.nursery.start(live.run)
        with trio.fail_after(DEADLINE_S):
            assert await live.wait_membership_change() == {"a", "b"}
            assert live.is_up("b")
            start = trio.current_time()
            await cluster.stop("b")
            await wait_until(live, lambda: not live.is_up("b"))
            # The broken connection triggers a ping at once, and its dial is refused:
            # no need to wait for K missed rounds.
            assert trio.current_time() - start < 3 * live.ping_interval_s
            assert live.up_nodes() == {"a"}
            await cluster.start("b")
            await wait_until(live, lambda: live.is_up("b"))
            assert live.health()["b"].misses == 0


@MEMORY_ONLY  # partitions exist on the in-memory network only
async def test_partitioned_peer_goes_down_after_k_misses_and_up_after_heal(
    make_cluster, clock
) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b")
        live = Liveness(a, ping_interval_s=1.0, misses_down=3)
        await cluster.nursery.start(live.run)
        await wait_until(live, lambda: live.is_up("b"))
        await trio.sleep(5)  # some quiet rounds
        assert live.health()["b"].misses == 0
        cluster.net.partition([("a", "b")])
        start = trio.current_time()
        await wait_until(live, lambda: not live.is_up("b"))
        # Stalled pings time out one per interval: down after about K intervals.
        assert 2.0 <= trio.current_time() - start <= 4.0
        assert a.statistics().open_connections == 0  # the silent connection was dropped
        await trio.sleep(10)
        assert not live.is_up("b")
        cluster.net.heal()
        start = trio.current_time()
        await wait_until(live, lambda: live.is_up("b"))
        assert trio.current_time() - start <= 5.0  # a hung connect, then the next round


@MEMORY_ONLY  # timing is exercised under MockClock
async def test_membership_is_read_every_round(make_cluster, clock) -> None:
    async with make_cluster() as cluster:
        a = await cluster.start("a")
        await cluster.start("b")
        members = {"a", "b"}
        live = Liveness(a, peers=lambda: members, ping_interval_s=0.5)
        await cluster.nursery.start(live.run)
        await wait_until(live, lambda: live.is_up("b"))
        await cluster.start("c")
        members.add("c")
        await wait_until(live, lambda: live.is_up("c"))
        members.discard("b")
        await wait_until(live, lambda: not live.is_up("b"))
        assert set(live.health()) == {"c"}
        assert live.up_nodes() == {"a", "c"}


def test_bad_settings_are_refused(make_cluster) -> None:
    class FakeService:
        node_name = "a"
        addresses: dict = {}

        def add_observer(self, observer) -> None:
            pass

    with pytest.raises(ConfigError):
        Liveness(FakeService(), ping_interval_s=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Liveness(FakeService(), ping_timeout_s=-1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Liveness(FakeService(), misses_down=0)  # type: ignore[arg-type]
