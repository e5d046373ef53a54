"""What only the memory engine has: crashes that lose uncommitted writes, and recovery."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ringstore.core.hashing import chunk_hash
from ringstore.errors import ChunkMissing, StorageClosed
from ringstore.storage.memory import MemoryStore


async def test_crash_loses_exactly_the_uncommitted_writes(nursery, autojump_clock):
    engine = MemoryStore(ring_size=16, commit_delay_s=1.0)
    await nursery.start(engine.run)
    await engine.put_record(b"b", b"committed", b"r", [])
    chunk = await engine.write_chunk(b"committed chunk")
    outcomes: dict[bytes, object] = {}

    async def put(key: bytes) -> None:
        try:
            await engine.put_record(b"b", key, b"r", [])
            outcomes[key] = "ok"
        except StorageClosed:
            outcomes[key] = "lost"

    async with trio.open_nursery() as writers:
        writers.start_soon(put, b"in-commit")
        await trio.testing.wait_all_tasks_blocked()  # its commit is under way
        writers.start_soon(put, b"queued")
        await trio.testing.wait_all_tasks_blocked()
        engine.crash()
    assert outcomes == {b"in-commit": "lost", b"queued": "lost"}
    with pytest.raises(StorageClosed):
        await engine.get_record(b"b", b"committed")

    again = MemoryStore.recover(engine)
    await nursery.start(again.run)
    assert (await again.get_record(b"b", b"committed")).record == b"r"
    assert await again.read_chunk(chunk) == b"committed chunk"
    assert await again.get_record(b"b", b"in-commit") is None
    assert await again.get_record(b"b", b"queued") is None
    assert again.statistics().objects == 1


async def test_aclose_lets_the_commit_in_progress_finish(nursery, autojump_clock):
    engine = MemoryStore(ring_size=16, commit_delay_s=1.0)
    await nursery.start(engine.run)
    async with trio.open_nursery() as writers:
        writers.start_soon(engine.put_record, b"b", b"k", b"r", [])
        await trio.testing.wait_all_tasks_blocked()
        writers.start_soon(engine.aclose)
    again = MemoryStore.recover(engine)
    await nursery.start(again.run)
    assert (await again.get_record(b"b", b"k")).record == b"r"


async def test_commit_delay_forms_batches(nursery, autojump_clock):
    engine = MemoryStore(ring_size=16, commit_delay_s=0.01)
    await nursery.start(engine.run)
    start = trio.current_time()
    async with trio.open_nursery() as writers:
        for n in range(64):
            writers.start_soon(engine.put_record, b"b", b"k%d" % n, b"r", [])
    assert engine.statistics().commits <= 2
    assert trio.current_time() - start >= 0.01  # a commit takes its simulated time


async def test_recovered_engines_are_independent(nursery):
    engine = MemoryStore(ring_size=16)
    await nursery.start(engine.run)
    await engine.put_record(b"b", b"k", b"original", [])
    with pytest.raises(RuntimeError):
        MemoryStore.recover(engine)  # still running
    engine.crash()
    first, second = MemoryStore.recover(engine), MemoryStore.recover(engine)
    await nursery.start(first.run)
    await nursery.start(second.run)
    await first.put_record(b"b", b"k", b"changed", [])
    assert (await second.get_record(b"b", b"k")).record == b"original"


async def test_crashed_engine_refuses_everything(nursery):
    engine = MemoryStore(ring_size=16)
    await nursery.start(engine.run)
    chunk = await engine.write_chunk(b"data")
    engine.crash()
    for call in (
        engine.get_record(b"b", b"k"),
        engine.put_record(b"b", b"k", b"r", []),
        engine.write_chunk(b"more"),
        engine.read_chunk(chunk),
        engine.missing_chunks([chunk]),
        engine.sweep(0),
        engine.scrub(1e9),
        engine.get_meta("name"),
        engine.list_buckets(),
    ):
        with pytest.raises(StorageClosed):
            await call
    await engine.aclose()  # closing a crashed engine is allowed and immediate


def test_corrupting_a_missing_chunk_is_an_error():
    with pytest.raises(ChunkMissing):
        MemoryStore().corrupt_chunk(chunk_hash(b"absent"))


def test_constructor_refuses_bad_parameters():
    for params in [{"ring_size": 3}, {"chunk_size": 0}, {"commit_delay_s": -1}]:
        with pytest.raises(ValueError):
            MemoryStore(**params)
