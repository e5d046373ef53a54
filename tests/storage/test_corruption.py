"""Corrupt chunks: detected on every read and by scrub, quarantined, never returned."""

from __future__ import annotations

import pytest
import trio

from ringstore.core.hashing import chunk_hash
from ringstore.errors import ChunkCorrupt, ChunkMissing, MissingChunks
from ringstore.storage.lmdb_store import LmdbStore


async def test_corrupt_chunk_is_refused_and_quarantined(engines):
    engine = await engines.start()
    data = bytes(range(200))
    chunk = await engine.write_chunk(data)
    await engine.put_record(b"b", b"k", b"r", [chunk])
    engines.corrupt(engine, chunk)

    with pytest.raises(ChunkCorrupt) as caught:
        await engine.read_chunk(chunk)
    assert caught.value.chunk_hash == chunk
    assert chunk.hex() in str(caught.value)
    if isinstance(engine, LmdbStore):
        assert not engines.chunk_file(engine, chunk).exists()
        assert [name.split(".")[0] for name in engines.quarantined_files(engine)] == [chunk.hex()]
    else:
        assert engine.quarantined == [chunk]
    stats = engine.statistics()
    assert (stats.corrupt_chunks_found, stats.chunks, stats.chunk_bytes) == (1, 0, 0)

    # From now on the chunk is missing here: never the bad bytes.
    with pytest.raises(ChunkMissing):
        await engine.read_chunk(chunk)
    assert await engine.missing_chunks([chunk]) == {chunk}
    with pytest.raises(MissingChunks) as refused:
        await engine.put_record(b"b", b"other", b"r", [chunk])
    assert refused.value.missing == {chunk}
    assert (await engine.get_record(b"b", b"k")).chunks == (chunk,)  # the record stays

    # A good copy from another replica repairs it.
    assert await engine.write_chunk(data, expected=chunk) == chunk
    assert await engine.read_chunk(chunk) == data
    assert await engine.missing_chunks([chunk]) == frozenset()
    await engine.put_record(b"b", b"other", b"r", [chunk])
    stats = engine.statistics()
    assert (stats.corrupt_chunks_found, stats.chunks, stats.chunk_bytes) == (1, 1, 200)


async def test_concurrent_reads_of_a_corrupt_chunk(engines):
    engine = await engines.start()
    chunk = await engine.write_chunk(b"bit rot ahead")
    engines.corrupt(engine, chunk)
    outcomes: list[type] = []

    async def read() -> None:
        try:
            await engine.read_chunk(chunk)
            outcomes.append(bytes)
        except (ChunkCorrupt, ChunkMissing) as exc:
            outcomes.append(type(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(read)
    assert bytes not in outcomes
    assert outcomes.count(ChunkCorrupt) >= 1
    assert engine.statistics().corrupt_chunks_found == 1


async def test_scrub_finds_corrupt_chunks(engines, autojump_clock):
    engine = await engines.start()
    chunks = [await engine.write_chunk(bytes([n]) * 100) for n in range(5)]
    engines.corrupt(engine, chunks[1])
    engines.corrupt(engine, chunks[3])
    start = trio.current_time()
    bad = await engine.scrub(bytes_per_s=100)
    assert sorted(bad) == sorted([chunks[1], chunks[3]])
    # Rate bound: 500 bytes at 100 bytes/s take at least 5 (virtual) seconds.
    assert trio.current_time() - start >= 5
    assert engine.statistics().corrupt_chunks_found == 2
    assert await engine.missing_chunks(chunks) == {chunks[1], chunks[3]}
    for n in (0, 2, 4):
        assert await engine.read_chunk(chunks[n]) == bytes([n]) * 100
    assert await engine.scrub(bytes_per_s=1e9) == []  # quarantined ones are not re-reported


@pytest.mark.parametrize("kind", ["lmdb"])  # damages files on disk
async def test_truncated_or_replaced_chunk_files_are_corrupt(engines):
    engine = await engines.start()
    truncated = await engine.write_chunk(b"a" * 200)
    replaced = await engine.write_chunk(b"b" * 200)
    engines.chunk_file(engine, truncated).write_bytes(b"a" * 199)
    engines.chunk_file(engine, replaced).write_bytes(b"c" * 200)  # valid bytes, wrong chunk
    for chunk in (truncated, replaced):
        with pytest.raises(ChunkCorrupt):
            await engine.read_chunk(chunk)
    assert chunk_hash(b"c" * 200) != replaced


@pytest.mark.parametrize("kind", ["lmdb"])  # removes a file on disk
async def test_vanished_chunk_file_is_reported_missing(engines):
    engine = await engines.start()
    gone = await engine.write_chunk(b"deleted by an operator")
    kept = await engine.write_chunk(b"still here")
    engines.chunk_file(engine, gone).unlink()
    assert await engine.scrub(bytes_per_s=1e9) == [gone]
    with pytest.raises(ChunkMissing):
        await engine.read_chunk(gone)
    assert await engine.missing_chunks([gone, kept]) == {gone}
    assert engine.statistics().corrupt_chunks_found == 1
