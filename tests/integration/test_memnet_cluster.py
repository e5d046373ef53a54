"""Replication end to end on the in-memory network: test_cluster.py's scenarios and 5-node ones.

Every node is a real `Node` with a `MemoryStore` engine, linked by a `MemoryNetwork`, all in
one Trio run under `MockClock(autojump_threshold=0)`: timeouts, liveness rounds and link
delays pass in virtual time, so the tests measure latency exactly and never wait for real.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from ringstore.core.hashing import chunk_hash
from ringstore.errors import QuorumError
from ringstore.net.memnet import LinkFaults, MemoryNetwork
from tests.integration.cluster import TEXT, Cluster, body_of, memory_stores

pytestmark = pytest.mark.integration

CHUNK = 4096  # the Cluster's default chunk size; values above 1024 bytes are chunked
WALL_EPOCH_S = 1_700_000_000.0  # the virtual wall clock starts here (any plausible date)
# Every link is this slow unless a test says otherwise: small, but never zero, so that
# latency is real and a request that waits for a slow replica cannot hide.
FAST_LINK_S = 0.001
# A slow replica that still answers pings within the liveness timeout (round trip 0.8 s < 1 s),
# so it stays up and in the preference list: the quorum logic, not liveness, must route
# around it.
SLOW_LINK_S = 0.4
# A replica so slow that liveness eventually marks it down (after 3 missed pings).
VERY_SLOW_LINK_S = 30.0
# A quorum answer needs a few fast round trips (dial, handshake, call): far below SLOW_LINK_S.
QUORUM_BOUND_S = 0.05


def virtual_wall_clock() -> float:
    return WALL_EPOCH_S + trio.current_time()


def memnet_cluster(nursery, tmp_path, count: int, seed: int = 0) -> Cluster:
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError("memnet cluster tests must take the autojump_clock fixture")
    network = MemoryNetwork(random.Random(seed), default_faults=LinkFaults(delay_s=FAST_LINK_S))
    return Cluster(
        nursery,
        tmp_path,
        count,
        network=network,
        storage_factory=memory_stores(virtual_wall_clock),
        wall_clock=virtual_wall_clock,
        serve_http=False,
    )


async def read_all(node, bucket: bytes, key: bytes, query=None) -> tuple[list[bytes], object]:
    result = await node.coordinator.get(bucket, key, query or {})
    assert result.object is not None
    values = []
    for content in result.object.siblings():
        parts = [p async for p in node.coordinator.read_value(bucket, key, content)]
        values.append(b"".join(parts))
    return sorted(values), result


def value_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def primaries(cluster: Cluster, key: bytes) -> list[str]:
    """The primaries of `key` in bucket b (n_val 3), as every node's ring places them."""
    ring = cluster.nodes[cluster.names[0]].ring
    return [t.node for t in ring.key_preflist(b"b", key, 3, frozenset(cluster.names)).targets]


async def inline_values(node, key: bytes) -> list[bytes | None] | None:
    stored = await node.replica.get(b"b", key)
    return None if stored is None else [c.inline for c in stored.siblings()]


@pytest.fixture
async def cluster3(nursery, tmp_path, autojump_clock):
    cluster = memnet_cluster(nursery, tmp_path, 3)
    await cluster.start()
    yield cluster
    cluster.stop_all()


@pytest.fixture
async def cluster5(nursery, tmp_path, autojump_clock):
    cluster = memnet_cluster(nursery, tmp_path, 5)
    await cluster.start()
    yield cluster
    cluster.stop_all()


# -- test_cluster.py's scenarios, in memory ----------------------------------------------------


@pytest.mark.parametrize("size", [0, 10, 1024, 1025, CHUNK * 3 + 7])
async def test_put_w2_then_get_r2_from_every_node(cluster3, autojump_clock, size):
    value = value_of(size, size)
    first = cluster3.nodes["n1"]
    await first.coordinator.put(b"b", b"k", TEXT, body_of(value, 1000), None, {"w": "2"})
    for node in cluster3.running():
        values, _ = await read_all(node, b"b", b"k", {"r": "2"})
        assert values == [value]


async def test_one_node_down_quorum_two_works_three_fails_then_read_repair(
    cluster3, autojump_clock
):
    n1, n3 = cluster3.nodes["n1"], cluster3.nodes["n3"]
    await cluster3.stop_node("n2")
    await cluster3.wait_down("n2")
    big = value_of(1, CHUNK * 2 + 5)
    await n1.coordinator.put(b"b", b"big", TEXT, body_of(big), None, {"w": "2"})
    await n1.coordinator.put(b"b", b"small", TEXT, body_of(b"hi"), None, {"w": "2"})
    assert (await read_all(n3, b"b", b"big", {"r": "2"}))[0] == [big]

    with pytest.raises(QuorumError) as failed:
        await n1.coordinator.put(b"b", b"x", TEXT, body_of(b"v"), None, {"pw": "3"})
    assert (failed.value.kind, failed.value.got, failed.value.needed) == ("pw", 2, 3)
    with pytest.raises(QuorumError) as failed:
        await n1.coordinator.get(b"b", b"small", {"pr": "3"})
    assert failed.value.needed == 3 and failed.value.got < 3

    n2 = await cluster3.restart_node("n2")
    assert await n2.replica.get(b"b", b"big") is None
    for key in (b"big", b"small"):
        await n1.coordinator.get(b"b", key, {"r": "3"})
    await cluster3.wait_until(lambda: n1.coordinator.stats.read_repairs >= 2)
    await cluster3.wait_until(lambda: n2.storage.statistics().objects == 2)
    repaired = await n2.replica.get(b"b", b"big")
    assert repaired is not None
    content = repaired.siblings()[0]
    data = b"".join([await n2.replica.read_chunk(h) for h in content.chunks])
    assert data == big


async def test_restarted_memory_node_keeps_its_durable_data(cluster3, autojump_clock):
    await cluster3.nodes["n1"].coordinator.put(b"b", b"k", TEXT, body_of(b"kept"), None, {"w": "3"})
    n2 = await cluster3.restart_node("n2")
    stored = await n2.replica.get(b"b", b"k")
    assert stored is not None and stored.siblings()[0].inline == b"kept"


async def test_concurrent_blind_writes_become_siblings_everywhere_and_context_resolves(
    cluster3, autojump_clock
):
    async with trio.open_nursery() as nursery:
        for i, node in enumerate(cluster3.running()):
            value = f"v{i}".encode()
            nursery.start_soon(
                node.coordinator.put, b"b", b"k", TEXT, body_of(value), None, {"w": "3"}
            )
    values, result = await read_all(cluster3.nodes["n2"], b"b", b"k", {"r": "3"})
    assert values == [b"v0", b"v1", b"v2"]
    for node in cluster3.running():
        assert len((await node.replica.get(b"b", b"k")).siblings()) == 3

    await cluster3.nodes["n3"].coordinator.put(
        b"b", b"k", TEXT, body_of(b"resolved"), result.context, {"w": "3"}
    )
    for node in cluster3.running():
        assert (await read_all(node, b"b", b"k", {"r": "3"}))[0] == [b"resolved"]
        assert len((await node.replica.get(b"b", b"k")).siblings()) == 1


async def test_corrupt_chunk_on_one_replica_is_served_from_another_and_repaired(
    cluster3, autojump_clock
):
    value = value_of(2, CHUNK * 2 + 100)
    n1 = cluster3.nodes["n1"]
    await n1.coordinator.put(b"b", b"k", TEXT, body_of(value), None, {"w": "3"})
    first_chunk = chunk_hash(value[:CHUNK])
    n1.storage.corrupt_chunk(first_chunk)

    assert (await read_all(n1, b"b", b"k"))[0] == [value]
    assert n1.storage.quarantined == [first_chunk]
    await cluster3.wait_until(lambda: n1.coordinator.stats.chunk_repairs >= 1)
    assert await n1.replica.read_chunk(first_chunk) == value[:CHUNK]


# -- five nodes, n_val 3 -------------------------------------------------------------------

KEYS = [f"k{i}".encode() for i in range(10)]


@pytest.mark.parametrize("size", [10, CHUNK * 2 + 1])
async def test_five_nodes_put_w2_from_every_node_then_get_r2_from_every_node(
    cluster5, autojump_clock, size
):
    # Ten keys over five coordinators: some coordinate as a replica, some as a non-replica.
    coordinators = [name for name in cluster5.names for _ in range(2)]
    assert any(c not in primaries(cluster5, k) for c, k in zip(coordinators, KEYS, strict=True))
    written = {}
    for i, (name, key) in enumerate(zip(coordinators, KEYS, strict=True)):
        written[key] = value_of(100 + i, size)
        node = cluster5.nodes[name]
        await node.coordinator.put(b"b", key, TEXT, body_of(written[key]), None, {"w": "2"})
    for node in cluster5.running():
        for key, value in written.items():
            assert (await read_all(node, b"b", key, {"r": "2"}))[0] == [value]
    # W=2 answers early, but the third replica gets each object too (after the reply).
    for key in KEYS:
        for name in primaries(cluster5, key):
            replica = cluster5.nodes[name].replica

            async def holds(replica=replica, key=key) -> bool:
                return await replica.get(b"b", key) is not None

            await cluster5.wait_for(holds)


async def test_five_nodes_two_down_quorums_of_two_work_and_primaries_are_counted(
    cluster5, autojump_clock
):
    down = ("n4", "n5")
    for name in down:
        await cluster5.stop_node(name)
        await cluster5.wait_down(name)
    n1 = cluster5.nodes["n1"]
    values = {key: value_of(200 + i, 100 if i % 2 else CHUNK + 1) for i, key in enumerate(KEYS)}
    for key, value in values.items():
        # Sloppy quorum: fallbacks among n1..n3 stand in for the down primaries.
        await n1.coordinator.put(b"b", key, TEXT, body_of(value), None, {"w": "2"})
        for node in cluster5.running():
            assert (await read_all(node, b"b", key, {"r": "2"}))[0] == [value]

    checked_failures = 0
    for key in KEYS:
        up_primaries = sum(1 for name in primaries(cluster5, key) if name not in down)
        if up_primaries == 3:
            context = (await n1.coordinator.get(b"b", key, {"pr": "3"})).context
            await n1.coordinator.put(b"b", key, TEXT, body_of(values[key]), context, {"pw": "3"})
            continue
        with pytest.raises(QuorumError) as failed:
            await n1.coordinator.put(b"b", key, TEXT, body_of(b"x"), None, {"pw": "3"})
        assert (failed.value.kind, failed.value.got, failed.value.needed) == (
            "pw",
            up_primaries,
            3,
        )
        with pytest.raises(QuorumError) as failed:
            await n1.coordinator.get(b"b", key, {"pr": "3"})
        assert failed.value.needed == 3 and failed.value.got < 3
        checked_failures += 1
    assert checked_failures >= 3  # the ring puts n4 or n5 among most keys' primaries

    for name in down:
        await cluster5.restart_node(name)
    # Every key kept at least one up primary, so a read of all three primaries finds it and
    # read repair brings the restarted primaries up to date.
    for key, value in values.items():
        assert (await read_all(cluster5.nodes["n4"], b"b", key, {"r": "3"}))[0] == [value]
    for key in KEYS:
        for name in primaries(cluster5, key):
            replica = cluster5.nodes[name].replica

            async def holds(replica=replica, key=key) -> bool:
                return await replica.get(b"b", key) is not None

            await cluster5.wait_for(holds)


def slow_down(cluster: Cluster, slow: str, delay_s: float) -> None:
    for other in cluster.names:
        if other != slow:
            cluster.network.set_faults(slow, other, LinkFaults(delay_s=delay_s))


@pytest.mark.parametrize("delay_s", [SLOW_LINK_S, VERY_SLOW_LINK_S])
async def test_slow_replica_does_not_delay_quorum_answers(cluster5, autojump_clock, delay_s):
    key = KEYS[0]
    slow, fast, other_fast = primaries(cluster5, key)
    coordinator = cluster5.nodes[fast].coordinator
    await coordinator.put(b"b", key, TEXT, body_of(b"v1"), None, {"w": "3"})
    slow_down(cluster5, slow, delay_s)

    started = trio.current_time()
    result = await coordinator.get(b"b", key, {"r": "2"})
    assert trio.current_time() - started < QUORUM_BOUND_S
    assert result.object.siblings()[0].inline == b"v1"

    started = trio.current_time()
    await coordinator.put(b"b", key, TEXT, body_of(b"v2"), result.context, {"w": "2"})
    assert trio.current_time() - started < QUORUM_BOUND_S
    # The slow replica was up and asked all along: the answers did not wait for it.
    assert slow in cluster5.nodes[fast].liveness.up_nodes()
    assert await inline_values(cluster5.nodes[other_fast], key) == [b"v2"]
    if delay_s == SLOW_LINK_S:
        # Slow, not lost: the late replica still gets the write, well after the answer.
        async def slow_has_v2() -> bool:
            return await inline_values(cluster5.nodes[slow], key) == [b"v2"]

        await cluster5.wait_for(slow_has_v2, timeout_s=5 * delay_s)
        assert trio.current_time() - started >= delay_s


async def test_slow_replica_does_not_delay_a_chunked_put(cluster5, autojump_clock):
    key = KEYS[0]
    slow, fast, _ = primaries(cluster5, key)
    slow_down(cluster5, slow, SLOW_LINK_S)
    value = value_of(3, CHUNK * 8)
    coordinator = cluster5.nodes[fast].coordinator
    started = trio.current_time()
    await coordinator.put(b"b", key, TEXT, body_of(value), None, {"w": "2"})
    assert trio.current_time() - started < QUORUM_BOUND_S


async def test_slow_first_primary_does_not_delay_a_put_from_a_non_replica(cluster5, autojump_clock):
    key = KEYS[0]
    slow = primaries(cluster5, key)[0]
    outsider = next(name for name in cluster5.names if name not in primaries(cluster5, key))
    slow_down(cluster5, slow, SLOW_LINK_S)
    # The coordinator learns who is near from its pings; it then asks a near replica to
    # coordinate (a replica that turned slow since the last ping can still cost one trip).
    liveness = cluster5.nodes[outsider].liveness

    async def slowness_measured() -> bool:
        return (liveness.health()[slow].last_rtt_s or 0) >= SLOW_LINK_S

    await cluster5.wait_for(slowness_measured)
    coordinator = cluster5.nodes[outsider].coordinator
    started = trio.current_time()
    await coordinator.put(b"b", key, TEXT, body_of(b"v"), None, {"w": "2"})
    assert trio.current_time() - started < QUORUM_BOUND_S


async def test_write_during_partition_reaches_everyone_after_heal_and_a_read(
    cluster5, autojump_clock
):
    key = KEYS[0]
    first, second, cut = primaries(cluster5, key)
    others = [name for name in cluster5.names if name != cut]
    await cluster5.nodes[first].coordinator.put(b"b", key, TEXT, body_of(b"v1"), None, {"w": "3"})

    cluster5.network.isolate(cut, others)
    await cluster5.wait_views(lambda node, up: up == {cut} if node.name == cut else cut not in up)
    # The majority side writes (a fallback stands in for the cut primary) ...
    majority = cluster5.nodes[second].coordinator
    result = await majority.get(b"b", key, {"r": "2"})
    await majority.put(b"b", key, TEXT, body_of(b"v2"), result.context, {"w": "2", "pw": "2"})
    # ... the cut-off node can reach no quorum, and still holds the old value.
    isolated = cluster5.nodes[cut]
    with pytest.raises(QuorumError):
        await isolated.coordinator.get(b"b", key, {"r": "2"})
    with pytest.raises(QuorumError):
        await isolated.coordinator.put(b"b", key, TEXT, body_of(b"lost"), None, {"w": "2"})
    assert await inline_values(isolated, key) == [b"v1"]

    cluster5.network.heal()
    await cluster5.wait_all_up()
    for node in cluster5.running():
        assert (await read_all(node, b"b", key, {"r": "2"}))[0] == [b"v2"]

    async def cut_replica_repaired() -> bool:
        return await inline_values(isolated, key) == [b"v2"]

    await cluster5.wait_for(cut_replica_repaired)
    assert sum(node.coordinator.stats.read_repairs for node in cluster5.running()) >= 1
    for name in (first, second, cut):
        assert await inline_values(cluster5.nodes[name], key) == [b"v2"]
