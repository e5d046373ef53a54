"""Large uploads over real TCP and LMDB: aborted uploads, chunk refusal, bounded memory.

A client that vanishes mid-upload must leave no object and only unreferenced chunks for the
sweeper; a replica must refuse an object naming chunks it lacks and say which; and a put or
read streams chunk by chunk, so its memory is bounded by the pipeline, not the object size.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import blake3
import pytest
import trio
import trio.testing

from ringstore.config import StorageConfig
from ringstore.coord.api import BodyCheck
from ringstore.coord.kv import UPLOAD_PIPELINE_CHUNKS
from ringstore.coord.remote import RemoteReplica
from ringstore.core import versions
from ringstore.core.hashing import chunk_hash
from ringstore.core.versions import Content, Object
from ringstore.errors import BadRequest, MissingChunks, RemoteCallError
from tests.integration.cluster import TEXT, Cluster, body_of

pytestmark = pytest.mark.integration

CHUNK = 4096  # the Cluster's default chunk size (values above 1024 bytes are chunked)
MIB = 1024 * 1024
BIG_CHUNK = MIB
BIG_OBJECT = 48 * MIB
BODY_PIECE = 64 * 1024  # what an HTTP body iterator typically yields at a time

# The bounds below count the chunk-sized buffers that can be alive at once. The coordinator
# here holds no replica, so every chunk crosses the network: the worst case.
# - The coordinator's upload pipeline: the chunker's partial chunk, UPLOAD_PIPELINE_CHUNKS
#   chunks queued for replication, the chunk being replicated and the one waiting to be queued.
PIPELINE_CHUNKS = UPLOAD_PIPELINE_CHUNKS + 3
# - One chunk crossing one peer connection: the sender's encoded frame, and on the receiver
#   the frame buffer, the frame's payload and the value decoded from it.
COPIES_PER_TRANSFER = 4
REPLICAS = 3  # n_val: a put streams each chunk to every replica at once
# - Allocator over-allocation (a growing bytearray keeps up to 1/8 spare) and the small objects
#   of everything else the nodes do meanwhile: tracemalloc sees the whole process.
SLACK_CHUNKS = 1
PUT_BOUND_CHUNKS = PIPELINE_CHUNKS + REPLICAS * COPIES_PER_TRANSFER + SLACK_CHUNKS  # 18
# A read fetches one chunk at a time: the chunk the consumer still holds while the next is
# fetched, the replica's copy read from its file, and that chunk's transfer.
READ_BOUND_CHUNKS = 2 + COPIES_PER_TRANSFER + SLACK_CHUNKS  # 7


class ClientGone(Exception):
    """What the HTTP layer's body iterator raises when the client disconnects."""


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


async def lazy_body(seed: int, size: int) -> AsyncIterator[bytes]:
    """`size` seeded random bytes made piece by piece: the body never exists whole."""
    rng = random.Random(seed)
    for start in range(0, size, BODY_PIECE):
        yield rng.randbytes(min(BODY_PIECE, size - start))


async def digest_of(pieces: AsyncIterator[bytes]) -> str:
    hasher = blake3.blake3()
    async for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


async def peak_memory_during(operation: Callable[[], Awaitable[object]]) -> int:
    """Peak bytes allocated (by any thread) while `operation` runs, above the level before."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await operation()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def chunked_object(parts: list[bytes]) -> Object:
    """A version of a chunked value made by some other replica (its own actor)."""
    content = Content(
        content_type="application/octet-stream",
        charset=None,
        content_encoding=None,
        user_meta=(),
        links=(),
        size=sum(len(p) for p in parts),
        etag=blake3.blake3(b"".join(parts)).hexdigest(),
        last_modified_us=1_700_000_000_000_000,
        inline=None,
        chunks=tuple(chunk_hash(p) for p in parts),
    )
    actor = versions.make_actor("elsewhere", versions.new_epoch(random.Random(7)))
    return versions.coordinate(None, content, None, actor, key_epoch=0)


@pytest.fixture
async def cluster3(nursery, tmp_path):
    cluster = Cluster(nursery, tmp_path, 3)
    await cluster.start()
    yield cluster
    cluster.stop_all()


async def test_client_gone_mid_upload_leaves_no_object_and_only_sweepable_chunks(cluster3):
    nodes = cluster3.running()
    before = {node.name: node.storage.statistics() for node in nodes}
    value = os.urandom(4 * CHUNK + 1)
    sent = [chunk_hash(value[i : i + CHUNK]) for i in range(0, 4 * CHUNK, CHUNK)]

    async def every_replica_has_the_sent_chunks() -> bool:
        for node in nodes:
            if await node.storage.missing_chunks(sent):
                return False
            # An engine counts a commit once the committing task resumes, which can be just
            # after readers already see it: wait for the count too.
            if node.storage.statistics().chunks != before[node.name].chunks + len(sent):
                return False
        return True

    async def disconnecting_body() -> AsyncIterator[bytes]:
        async for piece in body_of(value, 1000):
            yield piece
        # Only once the four whole chunks are on every replica: the test is about chunks
        # that were really sent, not about a race with their replication.
        await cluster3.wait_for(every_replica_has_the_sent_chunks)
        raise ClientGone("connection reset by client")

    with pytest.raises(BaseException) as failed:  # noqa: B017 (checked just below)
        await nodes[0].coordinator.put(b"b", b"k", TEXT, disconnecting_body(), None, {"w": "3"})
    assert [type(leaf) for leaf in leaves(failed.value)] == [ClientGone]

    for node in nodes:
        assert await node.replica.get(b"b", b"k") is None
        assert (await node.coordinator.get(b"b", b"k", {"r": "3"})).object is None
        stats = node.storage.statistics()
        assert stats.objects == before[node.name].objects
        assert stats.chunks == before[node.name].chunks + len(sent)
        assert not await node.storage.missing_chunks(sent)
    # Within the grace period the chunks stay (an upload in flight may still commit them).
    for node in nodes:
        assert await node.storage.sweep(grace_s=3600) == 0
    for node in nodes:
        assert await node.storage.sweep(grace_s=0) == len(sent)
        assert node.storage.statistics().chunks == before[node.name].chunks
        assert await node.storage.missing_chunks(sent) == frozenset(sent)


@pytest.mark.parametrize("size", [2000, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
async def test_etag_is_the_hash_of_the_whole_value_however_many_chunks(cluster3, size):
    # One chunk's etag is that chunk's hash (computed once for both); from two on, the whole
    # value is hashed as well. Pieces of 1000 bytes straddle every chunk boundary.
    value = os.urandom(size)
    node = cluster3.nodes["n1"]
    await node.coordinator.put(b"b", b"k", TEXT, body_of(value, 1000), None, {"w": "3"})
    content = (await node.coordinator.get(b"b", b"k", {"r": "3"})).object.siblings()[0]
    assert len(content.chunks) == -(-size // CHUNK)
    assert content.etag == blake3.blake3(value).hexdigest()


async def test_replica_refuses_an_object_whose_chunks_it_lacks_and_names_them(cluster3):
    n1, n2 = cluster3.nodes["n1"], cluster3.nodes["n2"]
    held = os.urandom(CHUNK)
    lacking = [os.urandom(CHUNK), os.urandom(100)]
    await n1.replica.write_chunk(held, chunk_hash(held))
    obj = chunked_object([held, *lacking])
    content = obj.siblings()[0]
    wanted = {chunk_hash(part) for part in lacking}
    objects_before = n1.storage.statistics().objects

    with pytest.raises(MissingChunks) as refused:
        await n1.replica.merge_put(b"b", b"k", obj, False)
    assert refused.value.missing == wanted
    with pytest.raises(MissingChunks) as refused:
        await n1.replica.coordinate_put(b"b", b"k", content, None, False)
    assert refused.value.missing == wanted

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        return await n2.peers.call(peer, method, body, timeout_s=timeout_s)

    # The refusal and its list of hashes survive the trip over the peer protocol.
    over_the_wire = RemoteReplica("n1", call)
    with pytest.raises(MissingChunks) as refused:
        await over_the_wire.merge_put(b"b", b"k", obj, False)
    assert refused.value.missing == wanted
    assert await n1.replica.get(b"b", b"k") is None
    assert n1.storage.statistics().objects == objects_before

    # Sent exactly what it named, the replica commits, and the record now holds the chunks.
    for part in lacking:
        await over_the_wire.write_chunk(part, chunk_hash(part))
    assert await over_the_wire.merge_put(b"b", b"k", obj, False) == obj
    assert await n1.replica.get(b"b", b"k") == obj
    assert await n1.storage.sweep(grace_s=0) == 0


async def test_a_one_chunk_value_travels_with_its_version_in_one_call_per_replica(cluster3):
    n1 = cluster3.nodes["n1"]
    chunk_calls = 0
    for node in cluster3.running():
        store_chunk = node.peers.handlers["replica.write_chunk"]

        async def counted(peer: str, body: dict, store_chunk=store_chunk) -> dict:
            nonlocal chunk_calls
            chunk_calls += 1
            return await store_chunk(peer, body)

        node.peers.register("replica.write_chunk", counted)
    for size in (1025, CHUNK):  # just past inline, and exactly one chunk
        value = os.urandom(size)
        await n1.coordinator.put(b"b", b"k%d" % size, TEXT, body_of(value, 700), None, {"w": "3"})
        for node in cluster3.running():
            (content,) = (await node.replica.get(b"b", b"k%d" % size)).siblings()
            assert content.chunks == (chunk_hash(value),)
            assert content.etag == blake3.blake3(value).hexdigest()
            assert await node.replica.read_chunk(chunk_hash(value)) == value
    assert chunk_calls == 0


async def test_a_one_chunk_value_put_while_a_replica_is_down_reaches_it_by_read_repair(cluster3):
    n1 = cluster3.nodes["n1"]
    await cluster3.stop_node("n2")
    await cluster3.wait_down("n2")
    value = os.urandom(3000)
    await n1.coordinator.put(b"b", b"k", TEXT, body_of(value, 700), None, {"w": "2"})
    # The down replica's failed call still counts as an answer: the upload turn comes back.
    turns = n1.config.storage.uploads_in_flight
    await cluster3.wait_until(lambda: n1.coordinator._upload_turns.value == turns)

    n2 = await cluster3.restart_node("n2")
    assert await n2.replica.get(b"b", b"k") is None
    await n1.coordinator.get(b"b", b"k", {"r": "3"})
    await cluster3.wait_until(lambda: n1.coordinator.stats.read_repairs >= 1)

    async def repaired() -> bool:
        return await n2.replica.get(b"b", b"k") is not None

    await cluster3.wait_for(repaired)
    assert await n2.replica.read_chunk(chunk_hash(value)) == value


async def test_a_replica_sent_a_version_with_bad_chunk_bytes_stores_nothing(cluster3):
    n1, n2 = cluster3.nodes["n1"], cluster3.nodes["n2"]
    value = os.urandom(2000)
    obj = chunked_object([value])

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        return await n2.peers.call(peer, method, body, timeout_s=timeout_s)

    over_the_wire = RemoteReplica("n1", call)
    damaged = bytes([value[0] ^ 1]) + value[1:]
    with pytest.raises(RemoteCallError) as refused:
        await over_the_wire.merge(b"b", b"k", obj, False, chunk=(chunk_hash(value), damaged))
    assert refused.value.kind == "ChunkCorrupt"
    for malformed in ({"ch": b"not a hash", "cd": value}, {"cd": value}, {"ch": chunk_hash(value)}):
        with pytest.raises(RemoteCallError) as refused:
            body = {"b": b"b", "k": b"k", "o": obj.encode(), **malformed}
            await call("n1", "replica.merge_put", body, 10.0)
        assert refused.value.kind == "ProtocolError"
    assert await n1.replica.get(b"b", b"k") is None
    assert await n1.replica.missing_chunks([chunk_hash(value)]) == {chunk_hash(value)}

    await over_the_wire.merge(b"b", b"k", obj, False, chunk=(chunk_hash(value), value))
    assert await n1.replica.get(b"b", b"k") == obj
    assert await n1.replica.read_chunk(chunk_hash(value)) == value


async def test_one_chunk_puts_give_their_upload_turn_back_whether_they_succeed_or_fail(
    nursery, tmp_path
):
    storage = StorageConfig(inline_max=1024, chunk_size=CHUNK, uploads_in_flight=1)
    cluster = Cluster(nursery, tmp_path, 3, storage=storage)
    await cluster.start()
    coordinator = cluster.nodes["n1"].coordinator

    def refuse() -> None:
        raise BadRequest("digest mismatch")

    with trio.fail_after(30):  # a turn not given back would leave the next put waiting
        for i in range(4):
            value = os.urandom(2000)
            check = BodyCheck(refuse) if i % 2 else None
            put = coordinator.put(b"b", b"k%d" % i, TEXT, body_of(value), None, {}, check)
            if check is None:
                await put
            else:
                with pytest.raises(BadRequest):
                    await put
        await cluster.wait_until(lambda: coordinator._upload_turns.value == 1)
    assert [await cluster.nodes["n3"].replica.get(b"b", b"k%d" % i) is None for i in range(4)] == [
        False,
        True,
        False,
        True,
    ]
    cluster.stop_all()


@pytest.fixture
async def big_chunk_cluster(nursery, tmp_path):
    """Four nodes with 1 MiB chunks: a key's three replicas leave one node outside."""
    storage = StorageConfig(inline_max=16 * 1024, chunk_size=BIG_CHUNK)
    cluster = Cluster(nursery, tmp_path, 4, storage=storage)
    await cluster.start()
    yield cluster
    cluster.stop_all()


def outsider(cluster: Cluster, key: bytes):
    """The node that holds no replica of `key`: everything it moves crosses the network."""
    ring = cluster.nodes["n1"].ring
    replicas = {t.node for t in ring.key_preflist(b"b", key, 3, frozenset(cluster.names)).targets}
    (name,) = set(cluster.names) - replicas
    return cluster.nodes[name]


async def test_put_and_read_memory_is_bounded_by_chunks_in_flight_not_object_size(
    big_chunk_cluster,
):
    node = outsider(big_chunk_cluster, b"big")

    async def upload() -> None:
        await node.coordinator.put(b"b", b"big", TEXT, lazy_body(1, BIG_OBJECT), None, {"w": "3"})

    peak = await peak_memory_during(upload)
    assert peak < PUT_BOUND_CHUNKS * BIG_CHUNK < BIG_OBJECT / 2, f"put peak {peak / MIB:.1f} MiB"
    content = (await node.coordinator.get(b"b", b"big", {"r": "3"})).object.siblings()[0]
    assert (content.size, len(content.chunks)) == (BIG_OBJECT, BIG_OBJECT // BIG_CHUNK)
    assert content.etag == await digest_of(lazy_body(1, BIG_OBJECT))

    digest = ""

    async def download() -> None:
        nonlocal digest
        digest = await digest_of(node.coordinator.read_value(b"b", b"big", content))

    peak = await peak_memory_during(download)
    assert peak < READ_BOUND_CHUNKS * BIG_CHUNK < BIG_OBJECT / 2, f"read peak {peak / MIB:.1f} MiB"
    assert digest == content.etag


async def test_uploads_beyond_the_limit_wait_for_a_turn_before_reading_their_body(
    nursery, tmp_path
):
    """storage.uploads_in_flight bounds a node's upload memory: a large value beyond the
    limit has its head read (to know it is large) and waits there until a turn frees up."""
    storage = StorageConfig(inline_max=1024, chunk_size=CHUNK, uploads_in_flight=1)
    cluster = Cluster(nursery, tmp_path, 3, storage=storage)
    await cluster.start()
    node = cluster.nodes["n1"]
    first_value = random.Random(1).randbytes(10 * CHUNK)
    second_value = random.Random(2).randbytes(10 * CHUNK)
    first_started = trio.Event()
    release_first = trio.Event()
    second_pieces = 0

    async def first_body() -> AsyncIterator[bytes]:
        yield first_value[: 4 * CHUNK]
        first_started.set()
        await release_first.wait()
        yield first_value[4 * CHUNK :]

    async def second_body() -> AsyncIterator[bytes]:
        nonlocal second_pieces
        for start in range(0, len(second_value), 2 * CHUNK):
            second_pieces += 1
            yield second_value[start : start + 2 * CHUNK]

    async def put(key: bytes, body: AsyncIterator[bytes]) -> None:
        await node.coordinator.put(b"b", key, TEXT, body, None, {"w": "3"})

    with trio.fail_after(30):
        async with trio.open_nursery() as uploads:
            uploads.start_soon(put, b"first", first_body())
            await first_started.wait()
            uploads.start_soon(put, b"second", second_body())
            await cluster.wait_until(lambda: node.coordinator.stats.uploads_waited == 1)
            await trio.testing.wait_all_tasks_blocked()
            assert second_pieces == 1  # the head only: the body waits in the socket
            release_first.set()
    for key, value in ((b"first", first_value), (b"second", second_value)):
        content = (await node.coordinator.get(b"b", key, {"r": "3"})).object.siblings()[0]
        assert content.etag == blake3.blake3(value).hexdigest()
    assert node.coordinator.info().stats["ringstore_uploads_waited_total"] == 1
    cluster.stop_all()
