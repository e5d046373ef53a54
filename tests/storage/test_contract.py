"""The storage contract (storage/engine.py), run unchanged against the LMDB and memory engines."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from ringstore.core.hashing import chunk_hash, partition_of
from ringstore.errors import (
    BadRequest,
    ChunkCorrupt,
    ChunkMissing,
    ChunkTooLarge,
    KeyTooLong,
    MissingChunks,
    StorageClosed,
)
from ringstore.storage import chunk_files, memory
from ringstore.storage.engine import (
    AAE_SEGMENTS,
    DELETE,
    MAX_BUCKET_BYTES,
    MAX_KEY_BYTES,
    MAX_META_NAME_BYTES,
    RecordWrite,
    StorageEngine,
    StoredRecord,
    object_key,
    placement,
    record_digest,
    segment_of,
)
from ringstore.storage.lmdb_store import LmdbStore
from ringstore.storage.memory import MemoryStore

GRACE_S = 60.0


def fake_hash(n: int) -> bytes:
    return chunk_hash(b"never stored %d" % n)


async def all_records(engine: StorageEngine, partition: int, batch: int = 256) -> list:
    records = []
    async for page in engine.scan_partition(partition, batch=batch):
        assert 0 < len(page) <= batch
        records.extend(page)
    return records


async def everything(engine: StorageEngine) -> dict[int, list[StoredRecord]]:
    return {p: await all_records(engine, p) for p in range(engine.ring_size)}


async def all_segment_hashes(engine: StorageEngine) -> dict[int, dict[int, bytes]]:
    return {p: await engine.segment_hashes(p) for p in range(engine.ring_size)}


async def put_all(engine: StorageEngine, records: dict[tuple[bytes, bytes], bytes]) -> None:
    """Store many records concurrently: group commit makes that a few transactions."""
    async with trio.open_nursery() as nursery:
        for (bucket, key), record in records.items():
            nursery.start_soon(engine.put_record, bucket, key, record, [])


# -- records ---------------------------------------------------------------------------------


async def test_put_get_overwrite_delete(engine):
    assert await engine.get_record(b"b", b"k") is None
    await engine.put_record(b"b", b"k", b"one", [])
    assert await engine.get_record(b"b", b"k") == StoredRecord(b"b", b"k", b"one", ())
    await engine.put_record(b"b", b"k", b"two", [])
    assert await engine.get_record(b"b", b"k") == StoredRecord(b"b", b"k", b"two", ())
    assert engine.lookup_record(b"b", b"k") == StoredRecord(b"b", b"k", b"two", ())
    assert engine.statistics().objects == 1
    await engine.delete_record(b"b", b"k")
    assert await engine.get_record(b"b", b"k") is None
    assert engine.lookup_record(b"b", b"k") is None
    assert engine.statistics().objects == 0
    await engine.delete_record(b"b", b"k")  # deleting what is not there is a no-op
    await engine.delete_record(b"b", b"never")
    assert engine.statistics().objects == 0


async def test_update_sees_current_and_returns_stored(engine):
    seen = []

    def first(current):
        seen.append(current)
        return RecordWrite(b"v1", ())

    assert await engine.update(b"b", b"k", first) == StoredRecord(b"b", b"k", b"v1", ())
    assert seen == [None]

    def keep(current):
        seen.append(current)
        return None

    assert await engine.update(b"b", b"k", keep) == StoredRecord(b"b", b"k", b"v1", ())
    assert seen[-1] == StoredRecord(b"b", b"k", b"v1", ())
    # An empty record equal to DELETE, but not DELETE itself, is stored.
    empty = await engine.update(b"b", b"k", lambda current: RecordWrite(b"", ()))
    assert empty == StoredRecord(b"b", b"k", b"", ())
    assert await engine.get_record(b"b", b"k") == empty
    assert await engine.update(b"b", b"k", lambda current: DELETE) is None
    assert await engine.get_record(b"b", b"k") is None
    assert await engine.update(b"b", b"absent", lambda current: DELETE) is None
    assert await engine.update(b"b", b"absent", lambda current: None) is None
    assert engine.statistics().objects == 0


async def test_update_function_errors_change_nothing(engine):
    await engine.put_record(b"b", b"k", b"before", [])

    def boom(current):
        raise RuntimeError("the update function failed")

    with pytest.raises(RuntimeError, match="update function failed"):
        await engine.update(b"b", b"k", boom)
    with pytest.raises(TypeError):
        await engine.update(b"b", b"k", lambda current: b"not a RecordWrite")
    with pytest.raises(TypeError):
        await engine.update(b"b", b"k", lambda current: RecordWrite("text", ()))
    with pytest.raises(BadRequest):
        await engine.update(b"b", b"k", lambda current: RecordWrite(b"x", (b"short",)))

    async def asynchronous(current):
        return None

    with pytest.raises(TypeError):
        await engine.update(b"b", b"k", asynchronous)
    with pytest.raises(TypeError):
        await engine.update(b"b", b"k", "not callable")
    assert await engine.get_record(b"b", b"k") == StoredRecord(b"b", b"k", b"before", ())


async def test_concurrent_updates_all_count(engine):
    def increment(current):
        count = 0 if current is None else int(current.record)
        return RecordWrite(str(count + 1).encode(), ())

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(engine.update, b"counters", b"c", increment)
    assert (await engine.get_record(b"counters", b"c")).record == b"200"


async def test_group_commit_batches(engine):
    before = engine.statistics()
    async with trio.open_nursery() as nursery:
        for n in range(64):
            nursery.start_soon(engine.put_record, b"b", b"key%d" % n, b"v", [])
    after = engine.statistics()
    assert after.operations_committed - before.operations_committed == 64
    assert after.commits - before.commits <= 8
    assert after.objects == 64


async def test_one_failing_write_does_not_fail_its_batch(engine):
    before = engine.statistics()
    outcomes: dict[int, object] = {}

    async def put(n: int) -> None:
        chunks = [fake_hash(n)] if n % 5 == 0 else []
        try:
            await engine.put_record(b"b", b"key%d" % n, b"v%d" % n, chunks)
            outcomes[n] = "ok"
        except MissingChunks as exc:
            outcomes[n] = exc.missing

    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(put, n)
    assert engine.statistics().commits - before.commits < 40  # the failures shared batches
    for n in range(40):
        stored = await engine.get_record(b"b", b"key%d" % n)
        if n % 5 == 0:
            assert outcomes[n] == {fake_hash(n)}
            assert stored is None
        else:
            assert outcomes[n] == "ok"
            assert stored.record == b"v%d" % n


async def test_missing_chunks_named_and_nothing_changed(engine, wall_clock):
    held = await engine.write_chunk(b"held chunk")
    missing = {fake_hash(1), fake_hash(2)}
    with pytest.raises(MissingChunks) as caught:
        await engine.put_record(b"b", b"k", b"r", [held, *sorted(missing)])
    assert caught.value.missing == missing
    assert fake_hash(1).hex() in str(caught.value)
    assert await engine.get_record(b"b", b"k") is None

    await engine.put_record(b"b", b"k", b"old", [])
    with pytest.raises(MissingChunks) as caught:
        await engine.update(b"b", b"k", lambda current: RecordWrite(b"new", (held, fake_hash(3))))
    assert caught.value.missing == {fake_hash(3)}
    assert await engine.get_record(b"b", b"k") == StoredRecord(b"b", b"k", b"old", ())
    assert await engine.missing_chunks([held, *missing]) == missing
    # The refused records took no reference: `held` is swept once its grace is over.
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.missing_chunks([held]) == {held}


# -- chunks and reference counts --------------------------------------------------------------


async def test_refcounts_overwrite_delete_and_sharing(engine, wall_clock):
    c1, c2, c3 = [await engine.write_chunk(b"chunk %d" % n) for n in (1, 2, 3)]
    await engine.put_record(b"b", b"a", b"A", [c1, c2])
    await engine.put_record(b"b", b"b", b"B", [c2, c3])
    wall_clock.advance(GRACE_S * 10)
    assert await engine.sweep(GRACE_S) == 0  # every chunk is referenced

    await engine.put_record(b"b", b"a", b"A2", [c3])  # overwrite releases c1 only
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.missing_chunks([c1, c2, c3]) == {c1}

    await engine.delete_record(b"b", b"b")  # releases c2; c3 is still named by a
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.missing_chunks([c1, c2, c3]) == {c1, c2}
    assert await engine.read_chunk(c3) == b"chunk 3"

    await engine.update(b"b", b"a", lambda current: DELETE)
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.missing_chunks([c1, c2, c3]) == {c1, c2, c3}
    with pytest.raises(ChunkMissing):
        await engine.read_chunk(c3)
    stats = engine.statistics()
    assert (stats.objects, stats.chunks, stats.chunk_bytes) == (0, 0, 0)


async def test_a_record_naming_a_chunk_twice_holds_one_reference(engine, wall_clock):
    chunk = await engine.write_chunk(b"zeros")
    await engine.put_record(b"b", b"k", b"r", [chunk, chunk])
    assert (await engine.get_record(b"b", b"k")).chunks == (chunk, chunk)
    await engine.put_record(b"b", b"k", b"r2", [chunk])
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 0
    await engine.delete_record(b"b", b"k")
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1


async def test_sweep_respects_the_grace_period(engine, wall_clock):
    fresh = await engine.write_chunk(b"upload in flight")
    wall_clock.advance(GRACE_S - 1)
    assert await engine.sweep(GRACE_S) == 0
    wall_clock.advance(1)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.missing_chunks([fresh]) == {fresh}

    # Writing a chunk again restarts its grace.
    again = await engine.write_chunk(b"written twice")
    wall_clock.advance(GRACE_S - 1)
    assert await engine.write_chunk(b"written twice") == again
    wall_clock.advance(GRACE_S - 1)
    assert await engine.sweep(GRACE_S) == 0
    wall_clock.advance(1)
    assert await engine.sweep(GRACE_S) == 1

    # A released chunk's grace runs from its release, not from its write.
    named = await engine.write_chunk(b"named for a long time")
    await engine.put_record(b"b", b"k", b"r", [named])
    wall_clock.advance(GRACE_S * 100)
    await engine.delete_record(b"b", b"k")
    assert await engine.sweep(GRACE_S) == 0
    assert await engine.read_chunk(named) == b"named for a long time"
    wall_clock.advance(GRACE_S)
    assert await engine.sweep(GRACE_S) == 1
    assert await engine.sweep(0) == 0


async def test_write_and_read_chunks(engine):
    data = bytes(range(200))
    digest = await engine.write_chunk(data)
    assert digest == chunk_hash(data)
    assert await engine.read_chunk(digest) == data
    assert await engine.write_chunk(bytearray(data), expected=digest) == digest
    assert await engine.write_chunk(memoryview(data)) == digest
    empty = await engine.write_chunk(b"")
    assert await engine.read_chunk(empty) == b""
    stats = engine.statistics()
    assert (stats.chunks, stats.chunk_bytes) == (2, 200)
    assert await engine.missing_chunks([digest, empty, fake_hash(0)]) == {fake_hash(0)}
    assert await engine.missing_chunks([]) == frozenset()
    with pytest.raises(ChunkMissing) as caught:
        await engine.read_chunk(fake_hash(0))
    assert caught.value.chunk_hash == fake_hash(0)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


async def test_write_chunk_from_pieces(engine):
    data = bytes(random.Random(1).randbytes(engine.chunk_size))
    parts = [data[:1], data[1:100], b"", data[100:255], data[255:]]
    digest = await engine.write_chunk(pieces(*parts), expected=chunk_hash(data))
    assert digest == chunk_hash(data)
    assert await engine.read_chunk(digest) == data
    assert await engine.write_chunk(pieces()) == chunk_hash(b"")


async def test_chunk_larger_than_chunk_size_refused(engine):
    size = engine.chunk_size
    too_big = b"x" * (size + 1)
    with pytest.raises(ChunkTooLarge) as caught:
        await engine.write_chunk(too_big)
    assert (caught.value.size, caught.value.limit) == (size + 1, size)
    with pytest.raises(ChunkTooLarge):
        await engine.write_chunk(pieces(b"x" * size, b"y"))
    assert engine.statistics().chunks == 0
    assert await engine.missing_chunks([chunk_hash(too_big), chunk_hash(b"x" * size)]) == {
        chunk_hash(too_big),
        chunk_hash(b"x" * size),
    }
    assert await engine.write_chunk(b"x" * size) == chunk_hash(b"x" * size)


async def test_expected_hash_mismatch_refused(engine):
    wrong = fake_hash(7)
    with pytest.raises(ChunkCorrupt) as caught:
        await engine.write_chunk(b"some bytes", expected=wrong)
    assert caught.value.chunk_hash == wrong
    with pytest.raises(ChunkCorrupt):
        await engine.write_chunk(pieces(b"some ", b"bytes"), expected=wrong)
    assert await engine.missing_chunks([wrong, chunk_hash(b"some bytes")]) == {
        wrong,
        chunk_hash(b"some bytes"),
    }
    assert engine.statistics().chunks == 0


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make either engine fail if it hashes chunk bytes (until `monkeypatch.undo()`)."""

    def no_hashing(*args: object) -> None:
        raise AssertionError("hashed again")

    monkeypatch.setattr(chunk_files, "chunk_hasher", no_hashing)
    monkeypatch.setattr(memory, "chunk_hash", no_hashing)


async def test_hashed_write_stores_the_bytes_without_hashing_them_again(engine, monkeypatch):
    data = random.Random(3).randbytes(engine.chunk_size)
    digest = chunk_hash(data)
    forbid_hashing(monkeypatch)
    assert await engine.write_chunk(data, digest, hashed=True) == digest
    monkeypatch.undo()
    assert await engine.read_chunk(digest) == data
    assert engine.statistics().chunks == 1


def naming(*chunks: bytes):
    """An update function storing a record that names `chunks`."""
    return lambda _current: RecordWrite(b"names chunks", chunks)


async def test_update_with_chunks_stores_them_and_the_record_that_names_them(engines):
    engine = await engines.start()
    held, new = b"held already" * 10, random.Random(5).randbytes(engine.chunk_size)
    await engine.write_chunk(held)
    chunks = {chunk_hash(held): held, chunk_hash(new): new}
    stored = await engine.update(b"b", b"k", naming(*chunks), chunks=chunks)
    assert stored == StoredRecord(b"b", b"k", b"names chunks", tuple(chunks))
    stats = engine.statistics()
    assert (stats.chunks, stats.chunk_bytes) == (2, len(held) + len(new))
    engine = await engines.reopen(engine)
    assert await engine.get_record(b"b", b"k") == stored
    assert [await engine.read_chunk(c) for c in chunks] == [held, new]


async def test_update_with_hashed_chunks_does_not_hash_them_again(engine, monkeypatch):
    data = random.Random(6).randbytes(engine.chunk_size)
    digest = chunk_hash(data)
    forbid_hashing(monkeypatch)
    await engine.update(b"b", b"k", naming(digest), chunks={digest: data}, hashed=True)
    monkeypatch.undo()
    assert await engine.read_chunk(digest) == data


async def test_update_with_a_corrupt_chunk_changes_nothing(engine):
    await engine.put_record(b"b", b"k", b"before", [])
    good, bad = b"good bytes", b"bad bytes"
    chunks = {chunk_hash(good): good, fake_hash(1): bad}
    with pytest.raises(ChunkCorrupt) as caught:
        await engine.update(b"b", b"k", naming(*chunks), chunks=chunks)
    assert caught.value.chunk_hash == fake_hash(1)
    assert (await engine.get_record(b"b", b"k")).record == b"before"
    assert fake_hash(1) in await engine.missing_chunks([fake_hash(1)])
    assert engine.statistics().objects == 1


@pytest.mark.parametrize(
    ("chunks", "hashed", "error"),
    [
        ([(fake_hash(1), b"x")], False, TypeError),
        ({b"short": b"x"}, False, BadRequest),
        ({fake_hash(1): "text"}, False, TypeError),
        ({chunk_hash(b"x"): bytearray(b"x")}, True, ValueError),
        ({chunk_hash(b"ok"): b"ok", chunk_hash(b"x" * 65): b"x" * 65}, False, ChunkTooLarge),
    ],
)
async def test_update_refuses_bad_chunks_before_writing_anything(engines, chunks, hashed, error):
    engine = await engines.start(chunk_size=64)
    with pytest.raises(error):
        await engine.update(b"b", b"k", naming(fake_hash(1)), chunks=chunks, hashed=hashed)
    assert await engine.get_record(b"b", b"k") is None
    assert engine.statistics().chunks == 0


async def test_concurrent_updates_bringing_the_same_chunk_store_it_once(engine):
    data = b"shared" * 40
    digest = chunk_hash(data)
    async with trio.open_nursery() as nursery:
        for i in range(8):
            key = b"k%d" % i
            nursery.start_soon(
                functools.partial(engine.update, b"b", key, naming(digest), chunks={digest: data})
            )
    assert [(await engine.get_record(b"b", b"k%d" % i)).chunks for i in range(8)] == [(digest,)] * 8
    stats = engine.statistics()
    assert (stats.objects, stats.chunks, stats.chunk_bytes) == (8, 1, len(data))


@pytest.mark.parametrize("given", ["bytearray", "memoryview", "pieces"])
async def test_hashed_write_takes_only_bytes_with_their_hash(engine, given):
    # Bytes that could change after they were hashed, or arrive later, are always verified.
    data = {
        "bytearray": lambda: bytearray(b"mutable"),
        "memoryview": lambda: memoryview(b"a view"),
        "pieces": lambda: pieces(b"some ", b"bytes"),
    }[given]()
    with pytest.raises(ValueError, match="hashed=True"):
        await engine.write_chunk(data, fake_hash(1), hashed=True)
    with pytest.raises(ValueError, match="hashed=True"):
        await engine.write_chunk(b"bytes", None, hashed=True)
    assert engine.statistics().chunks == 0
    assert await engine.missing_chunks([fake_hash(1), chunk_hash(b"bytes")]) == {
        fake_hash(1),
        chunk_hash(b"bytes"),
    }


@pytest.mark.parametrize(
    "size_name",
    ["empty", "inline_max", "inline_max+1", "chunk-1", "chunk", "chunk+1", "several"],
)
async def test_value_sizes_round_trip(engines, size_name):
    engine = await engines.start()
    inline, chunk = engine.inline_max, engine.chunk_size
    size, chunk_count = {
        "empty": (0, 0),
        "inline_max": (inline, 0),
        "inline_max+1": (inline + 1, 1),
        "chunk-1": (chunk - 1, 1),
        "chunk": (chunk, 1),
        "chunk+1": (chunk + 1, 2),
        "several": (3 * chunk + 5, 4),
    }[size_name]
    value = random.Random(size).randbytes(size)
    hashes = await engines.store_value(engine, b"b", b"k", value)
    assert len(hashes) == chunk_count
    assert await engines.load_value(engine, b"b", b"k") == value
    assert engine.statistics().chunk_bytes == (size if chunk_count else 0)


# -- names and bad input ------------------------------------------------------------------------


async def test_arbitrary_byte_names(engine):
    names = [
        (b"\x00", b"\x00"),
        (b"b\x00ucket", b"k\x00ey\x00"),
        (b"\xff\xfe", b"\x80\x81not utf-8\xc3"),
        (b"\xff" * MAX_BUCKET_BYTES, b"\xff" * MAX_KEY_BYTES),
        (b"b", b"k"),
        (b"b\x00", b"k"),  # must not collide with (b"b", b"\x00k")
        (b"b", b"\x00k"),
    ]
    for n, (bucket, key) in enumerate(names):
        await engine.put_record(bucket, key, b"record %d" % n, [])
    for n, (bucket, key) in enumerate(names):
        expected = StoredRecord(bucket, key, b"record %d" % n, ())
        assert await engine.get_record(bucket, key) == expected
    assert await engine.list_buckets() == sorted({bucket for bucket, _ in names})
    stored = [record for records in (await everything(engine)).values() for record in records]
    assert sorted((r.bucket, r.key) for r in stored) == sorted(names)
    for bucket, key in names:
        partition = partition_of(bucket, key, engine.ring_size)
        segment = await engine.segment_records(partition, segment_of(bucket, key))
        assert (bucket, key) in [(r.bucket, r.key) for r in segment]


async def test_name_limits(engine):
    longest = (b"B" * MAX_BUCKET_BYTES, b"K" * MAX_KEY_BYTES)
    await engine.put_record(*longest, b"ok", [])
    assert (await engine.get_record(*longest)).record == b"ok"
    bad_names = [
        (b"B" * (MAX_BUCKET_BYTES + 1), b"k"),
        (b"b", b"K" * (MAX_KEY_BYTES + 1)),
        (b"", b"k"),
        (b"b", b""),
    ]
    for bucket, key in bad_names:
        with pytest.raises(KeyTooLong):
            await engine.put_record(bucket, key, b"r", [])
        with pytest.raises(KeyTooLong):
            await engine.get_record(bucket, key)
        with pytest.raises(KeyTooLong):
            engine.lookup_record(bucket, key)
        with pytest.raises(KeyTooLong):
            await engine.update(bucket, key, lambda current: RecordWrite(b"r", ()))
        with pytest.raises(KeyTooLong):
            await engine.delete_record(bucket, key)
    for bucket, key in [("text", b"k"), (b"b", "text"), (None, b"k")]:
        with pytest.raises(TypeError):
            await engine.put_record(bucket, key, b"r", [])
    assert engine.statistics().objects == 1
    assert await engine.list_buckets() == [longest[0]]


async def test_update_refuses_functions_it_cannot_run_in_a_commit(engine):
    async def coroutine_function(current):
        return RecordWrite(b"r", ())

    async def async_generator_function(current):
        yield RecordWrite(b"r", ())

    for bad in [
        coroutine_function,
        async_generator_function,
        functools.partial(coroutine_function),
        "not callable",
        None,
    ]:
        with pytest.raises(TypeError, match="plain"):
            await engine.update(b"b", b"k", bad)
    assert await engine.get_record(b"b", b"k") is None

    class Writer:
        def write(self, current):
            return RecordWrite(b"method", ())

        def __call__(self, current):
            return RecordWrite(b"instance", ())

    written = functools.partial(lambda record, current: RecordWrite(record, ()), b"partial")
    for fn, record in [(written, b"partial"), (Writer().write, b"method"), (Writer(), b"instance")]:
        stored = await engine.update(b"b", b"k", fn)
        assert stored is not None and stored.record == record


def test_placement_is_partition_and_segment_from_one_hash():
    for i in range(200):
        bucket, key = f"bucket{i % 7}".encode(), f"key{i}".encode()
        for ring_size in (8, 64, 1024):
            assert placement(bucket, key, ring_size) == (
                partition_of(bucket, key, ring_size),
                segment_of(bucket, key),
            )


async def test_bad_arguments_are_refused(engine):
    with pytest.raises(TypeError):
        await engine.put_record(b"b", b"k", "text", [])
    with pytest.raises(BadRequest):
        await engine.put_record(b"b", b"k", b"r", [b"not 32 bytes"])
    for bad_hash in [b"short", "x" * 32, None, b"x" * 33]:
        with pytest.raises(BadRequest):
            await engine.read_chunk(bad_hash)
        with pytest.raises(BadRequest):
            await engine.missing_chunks([bad_hash])
        if bad_hash is not None:  # None: no expected hash
            with pytest.raises(BadRequest):
                await engine.write_chunk(b"data", expected=bad_hash)
    with pytest.raises(TypeError):
        await engine.write_chunk("text")
    with pytest.raises(TypeError):
        await engine.write_chunk(pieces(b"ok", "text"))
    for partition in [-1, engine.ring_size, "0"]:
        with pytest.raises(BadRequest):
            await engine.segment_hashes(partition)
        with pytest.raises(BadRequest):
            await all_records(engine, partition)
    for segment in [-1, AAE_SEGMENTS]:
        with pytest.raises(BadRequest):
            await engine.segment_records(0, segment)
    with pytest.raises(ValueError):
        await all_records(engine, 0, batch=0)
    with pytest.raises(ValueError):
        await engine.sweep(-1)
    with pytest.raises(ValueError):
        await engine.scrub(0)
    for name in ["", "n" * (MAX_META_NAME_BYTES + 1)]:
        with pytest.raises(BadRequest):
            await engine.put_meta(name, b"v")
        with pytest.raises(BadRequest):
            await engine.get_meta(name)
    with pytest.raises(TypeError):
        await engine.put_meta("name", "text")
    stats = engine.statistics()
    assert (stats.objects, stats.chunks) == (0, 0)


# -- partitions, segments, buckets --------------------------------------------------------------


def keys_by_partition(ring_size: int, count: int) -> dict[int, list[tuple[bytes, bytes]]]:
    found: dict[int, list[tuple[bytes, bytes]]] = {}
    for n in range(count):
        bucket = b"bucket%d" % (n % 3)
        key = b"key-%d" % n
        found.setdefault(partition_of(bucket, key, ring_size), []).append((bucket, key))
    return found


async def test_scan_partition_order_and_completeness(engine):
    by_partition = keys_by_partition(engine.ring_size, 150)
    names = [name for names in by_partition.values() for name in names]
    random.Random(3).shuffle(names)
    await put_all(engine, {(bucket, key): bucket + b"/" + key for bucket, key in names})
    for partition in range(engine.ring_size):
        expected = sorted(by_partition.get(partition, []), key=lambda name: object_key(*name))
        for batch in (1, 3, 256):
            records = await all_records(engine, partition, batch=batch)
            assert [(r.bucket, r.key) for r in records] == expected
            assert all(r.record == r.bucket + b"/" + r.key for r in records)
    assert await engine.list_buckets() == [b"bucket0", b"bucket1", b"bucket2"]


async def test_scan_sees_writes_between_batches(engine):
    by_partition = keys_by_partition(engine.ring_size, 200)
    partition, names = max(by_partition.items(), key=lambda item: len(item[1]))
    names.sort(key=lambda name: object_key(*name))
    await put_all(engine, {name: b"r" for name in names[:-1]})
    seen = []
    async for page in engine.scan_partition(partition, batch=2):
        seen.extend((r.bucket, r.key) for r in page)
        if len(seen) == 2:
            await engine.put_record(*names[-1], b"r", [])  # after the cursor: seen
            await engine.delete_record(*names[0])  # before the cursor: already yielded
    assert seen == names


def test_record_digest_keeps_names_and_record_apart():
    digests = {
        record_digest(b"b", b"ka", b"x"),
        record_digest(b"b", b"k", b"ax"),
        record_digest(b"bk", b"a", b"x"),
        record_digest(b"b", b"kax", b""),
    }
    assert len(digests) == 4


async def test_segment_hashes_independent_of_write_order(engines):
    first = await engines.start("first")
    second = await engines.start("second")
    names = [name for names in keys_by_partition(first.ring_size, 120).values() for name in names]
    await put_all(first, {(bucket, key): b"v:" + key for bucket, key in names})
    shuffled = names[:]
    random.Random(5).shuffle(shuffled)

    async def history(bucket: bytes, key: bytes) -> None:
        # A different history (overwrites, deletes and re-puts) reaching the same state.
        await second.put_record(bucket, key, b"older", [])
        await second.delete_record(bucket, key)
        await second.put_record(bucket, key, b"other", [])
        await second.put_record(bucket, key, b"v:" + key, [])

    async with trio.open_nursery() as nursery:
        for bucket, key in shuffled:
            nursery.start_soon(history, bucket, key)
    hashes = await all_segment_hashes(first)
    assert hashes == await all_segment_hashes(second)
    assert sum(len(segments) for segments in hashes.values()) > 50
    for partition, segments in hashes.items():
        for segment in segments:
            assert await first.segment_records(partition, segment) == await second.segment_records(
                partition, segment
            )

    bucket, key = names[0]
    partition = partition_of(bucket, key, first.ring_size)
    segment = segment_of(bucket, key)
    await second.put_record(bucket, key, b"changed", [])
    changed = await all_segment_hashes(second)
    assert changed[partition][segment] != hashes[partition][segment]
    changed[partition][segment] = hashes[partition][segment]
    assert changed == hashes  # only that one segment moved

    async with trio.open_nursery() as nursery:
        for bucket, key in names:
            nursery.start_soon(second.delete_record, bucket, key)
    assert all(not segments for segments in (await all_segment_hashes(second)).values())


async def test_segment_records_lists_exactly_the_segment(engine):
    names = [name for names in keys_by_partition(engine.ring_size, 300).values() for name in names]
    await put_all(engine, {(bucket, key): key for bucket, key in names})
    expected: dict[tuple[int, int], list] = {}
    for bucket, key in names:
        where = (partition_of(bucket, key, engine.ring_size), segment_of(bucket, key))
        expected.setdefault(where, []).append((bucket, key))
    for (partition, segment), members in expected.items():
        records = await engine.segment_records(partition, segment)
        assert sorted((r.bucket, r.key) for r in records) == sorted(members)
    empty = next((0, s) for s in range(AAE_SEGMENTS) if (0, s) not in expected)
    assert await engine.segment_records(*empty) == []


# -- meta, statistics, lifecycle -------------------------------------------------------------


async def test_meta(engine):
    assert await engine.get_meta("node_id") is None
    await engine.put_meta("node_id", b"node-1")
    await engine.put_meta("épоch", b"\x00\x01")
    assert await engine.get_meta("node_id") == b"node-1"
    assert await engine.get_meta("épоch") == b"\x00\x01"
    await engine.put_meta("node_id", b"")
    assert await engine.get_meta("node_id") == b""


async def test_restart_keeps_every_committed_write(engines, wall_clock):
    engine = await engines.start()
    values = {b"k%d" % n: random.Random(n).randbytes(n * 37) for n in range(12)}
    named = {key: await engines.store_value(engine, b"b", key, v) for key, v in values.items()}
    await engine.delete_record(b"b", b"k3")
    del values[b"k3"]
    unreferenced = await engine.write_chunk(b"not named by any record")
    await engine.put_meta("ring", b"ring bytes")
    records, hashes, stats = (
        await everything(engine),
        await all_segment_hashes(engine),
        engine.statistics(),
    )

    engine = await engines.reopen(engine)
    for key, value in values.items():
        assert await engines.load_value(engine, b"b", key) == value
    assert await engine.get_record(b"b", b"k3") is None
    assert await engine.get_meta("ring") == b"ring bytes"
    assert await everything(engine) == records
    assert await all_segment_hashes(engine) == hashes
    after = engine.statistics()
    assert (after.objects, after.chunks, after.chunk_bytes) == (
        stats.objects,
        stats.chunks,
        stats.chunk_bytes,
    )
    # Reference counts survived too: only the unreferenced chunk and the deleted value's go.
    wall_clock.advance(GRACE_S)
    swept = await engine.sweep(GRACE_S)
    assert await engine.missing_chunks([unreferenced]) == {unreferenced}
    assert named[b"k3"]
    assert swept == 1 + len(named[b"k3"])
    for key, value in values.items():
        assert await engines.load_value(engine, b"b", key) == value


async def test_closed_engine_refuses_calls(engines):
    engine = await engines.start()
    await engine.put_record(b"b", b"k", b"r", [])
    await engine.aclose()
    await engine.aclose()  # idempotent
    with pytest.raises(StorageClosed):
        await engine.get_record(b"b", b"k")
    with pytest.raises(StorageClosed):
        await engine.put_record(b"b", b"k", b"r", [])
    with pytest.raises(StorageClosed):
        await engine.write_chunk(b"data")
    with pytest.raises(StorageClosed):
        await engine.list_buckets()
    with pytest.raises(RuntimeError):
        await engines.nursery.start(engine.run)
    never_run = engines.make("never")
    with pytest.raises(StorageClosed):
        await never_run.get_record(b"b", b"k")
    await never_run.aclose()


async def test_writers_waiting_when_the_engine_closes_are_told(engines):
    engine = await engines.start()
    results: dict[int, str] = {}

    async def put(n: int) -> None:
        try:
            await engine.put_record(b"b", b"k%d" % n, b"r", [])
            results[n] = "ok"
        except StorageClosed:
            results[n] = "closed"

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(put, n)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(engine.aclose)
    assert len(results) == 50
    engine = await engines.reopen(engine)
    for n, result in results.items():
        stored = await engine.get_record(b"b", b"k%d" % n)
        assert (stored is not None) == (result == "ok")


# -- the two engines agree ----------------------------------------------------------------------


async def test_engines_agree_on_a_random_history(tmp_path, nursery, wall_clock):
    """The same seeded sequence of operations leaves both engines in the same observable state."""
    params = {"ring_size": 16, "inline_max": 64, "chunk_size": 256, "wall_clock": wall_clock}
    engines = [LmdbStore(tmp_path / "lmdb", **params), MemoryStore(**params)]
    for engine in engines:
        await nursery.start(engine.run)
    rng = random.Random(11)
    blobs = [b"blob %d" % n for n in range(12)]
    names = [(b"b%d" % rng.randrange(3), b"k%d" % rng.randrange(40)) for _ in range(60)]

    def append(current):
        return None if current is None else RecordWrite(current.record + b"+", current.chunks)

    seen = {"missing": 0, "swept": 0}
    for step in range(150):
        roll = rng.random()
        bucket, key = rng.choice(names)
        blob = rng.choice(blobs)
        chunks = [chunk_hash(blob) for blob in rng.sample(blobs, rng.randrange(3))]
        if roll >= 0.9:
            wall_clock.advance(GRACE_S / 2)
        outcomes = []
        for engine in engines:
            try:
                if roll < 0.2:
                    result = await engine.write_chunk(blob)
                elif roll < 0.6:
                    result = await engine.put_record(bucket, key, b"%d" % step, chunks)
                elif roll < 0.75:
                    result = await engine.delete_record(bucket, key)
                elif roll < 0.9:
                    result = await engine.update(bucket, key, append)
                else:
                    result = await engine.sweep(GRACE_S)
            except MissingChunks as exc:
                result = ("missing", exc.missing)
            outcomes.append(result)
        assert outcomes[0] == outcomes[1], step
        if isinstance(result, tuple):
            seen["missing"] += 1
        elif roll >= 0.9:
            seen["swept"] += result
    assert seen["missing"] and seen["swept"]  # the history exercised refusals and sweeps
    lmdb_store, memory_store = engines
    assert await everything(lmdb_store) == await everything(memory_store)
    assert await all_segment_hashes(lmdb_store) == await all_segment_hashes(memory_store)
    assert await lmdb_store.list_buckets() == await memory_store.list_buckets()
    all_chunks = [chunk_hash(blob) for blob in blobs]
    assert await lmdb_store.missing_chunks(all_chunks) == await memory_store.missing_chunks(
        all_chunks
    )
    lmdb_stats, memory_stats = lmdb_store.statistics(), memory_store.statistics()
    assert lmdb_stats.objects and lmdb_stats.chunks
    assert (lmdb_stats.objects, lmdb_stats.chunks, lmdb_stats.chunk_bytes) == (
        memory_stats.objects,
        memory_stats.chunks,
        memory_stats.chunk_bytes,
    )
