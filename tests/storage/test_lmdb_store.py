"""What only the LMDB engine has: files on disk, their write order, and its limits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from ringstore.core.hashing import chunk_hash
from ringstore.errors import ChunkCorrupt, ChunkTooLarge, LocalError, StorageFull
from ringstore.storage.lmdb_store import UPLOAD_BUFFER_BYTES, LmdbStore

lmdb_only = pytest.mark.parametrize("kind", ["lmdb"])  # the `engines` fixture's kind


def files_under(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
    )


def file_sizes(directory) -> list[int]:
    return [os.path.getsize(directory / name) for name in os.listdir(directory)]


@lmdb_only
async def test_chunk_files_layout_and_sweep(engines, wall_clock):
    engine = await engines.start()
    data = b"content-addressed"
    chunk = await engine.write_chunk(data)
    name = chunk.hex()
    assert files_under(engine.path / "chunks") == [f"{name[:2]}/{name[2:4]}/{name}"]
    assert engines.chunk_file(engine, chunk).read_bytes() == data
    assert await engine.write_chunk(data) == chunk  # stored once
    assert len(files_under(engine.path / "chunks")) == 1
    assert engine.statistics().chunks == 1
    assert files_under(engine.path / "tmp") == []
    wall_clock.advance(10)
    assert await engine.sweep(10) == 1
    assert files_under(engine.path / "chunks") == []


@lmdb_only
async def test_refused_and_cancelled_uploads_leave_no_files(engines):
    engine = await engines.start()
    with pytest.raises(ChunkCorrupt):
        await engine.write_chunk(b"data", expected=chunk_hash(b"other"))
    with pytest.raises(ChunkTooLarge):
        await engine.write_chunk(b"x" * (engine.chunk_size + 1))

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 10
            await trio.sleep(0.01)

    with pytest.raises(ChunkTooLarge):
        await engine.write_chunk(endless())
    with trio.move_on_after(0.05):
        await engine.write_chunk(endless())
    assert files_under(engine.path / "tmp") == []
    assert files_under(engine.path / "chunks") == []
    assert engine.statistics().chunks == 0


@lmdb_only
async def test_pieces_are_written_as_they_arrive(engines):
    engine = await engines.start(chunk_size=1 << 20)
    piece = b"z" * UPLOAD_BUFFER_BYTES
    written_while_streaming = []

    async def stream() -> AsyncIterator[bytes]:
        for n in range(8):
            if n == 6:
                await trio.testing.wait_all_tasks_blocked()
                written_while_streaming.extend(file_sizes(engine.path / "tmp"))
            yield piece

    chunk = await engine.write_chunk(stream())
    assert chunk == chunk_hash(piece * 8)
    assert written_while_streaming and written_while_streaming[0] >= 5 * len(piece)


@lmdb_only
async def test_leftover_uploads_are_removed_at_start(engines):
    (engines.root / "node" / "tmp").mkdir(parents=True)
    (engines.root / "node" / "tmp" / "cut-off.tmp").write_bytes(b"partial upload")
    engine = await engines.start()
    assert files_under(engine.path / "tmp") == []


@lmdb_only
async def test_ring_size_is_fixed_at_creation(engines):
    engine = await engines.start()
    await engine.put_record(b"b", b"k", b"r", [])
    await engine.aclose()
    with pytest.raises(LocalError, match="ring of 16 partitions"):
        await engines.start(ring_size=32)
    again = await engines.start()
    assert (await again.get_record(b"b", b"k")).record == b"r"


@lmdb_only
async def test_full_metadata_store_is_a_clear_error(engines):
    engine = await engines.start(map_size=1 << 20)
    stored = []
    with pytest.raises(StorageFull):
        for n in range(64):
            await engine.put_record(b"b", b"k%d" % n, b"v" * 50_000, [])
            stored.append(b"k%d" % n)
    assert stored
    for key in stored:
        assert (await engine.get_record(b"b", key)).record == b"v" * 50_000
    assert engine.statistics().objects == len(stored)


@lmdb_only
async def test_a_cancelled_writer_leaves_the_engine_working(engines):
    engine = await engines.start()
    with trio.CancelScope() as scope:
        scope.cancel()
        await engine.put_record(b"b", b"cancelled", b"r", [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.put_record, b"b", b"k", b"r", [])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await engine.put_record(b"b", b"after", b"r", [])
    assert (await engine.get_record(b"b", b"after")).record == b"r"
    assert await engine.get_record(b"b", b"cancelled") is None


@lmdb_only
async def test_two_engines_cannot_share_a_directory(engines):
    await engines.start()
    with pytest.raises(LocalError, match="in use by another engine"):
        await engines.start()


def test_constructor_refuses_bad_parameters(tmp_path):
    for params in [
        {"ring_size": 0},
        {"ring_size": 12},
        {"chunk_size": 0},
        {"inline_max": -1},
        {"max_batch_ops": 0},
    ]:
        with pytest.raises(ValueError):
            LmdbStore(tmp_path, **params)


@lmdb_only
@pytest.mark.parametrize(("max_batch_ops", "commits"), [(1, {10}), (1024, {1, 2})])
async def test_group_commit_batches_queued_writes(engines, max_batch_ops, commits):
    engine = await engines.start(max_batch_ops=max_batch_ops)
    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(engine.put_record, b"b", b"k%d" % n, b"r", [])
    stats = engine.statistics()
    assert stats.operations_committed == 10
    assert stats.commits in commits  # 10 writers queued at once: one batch, or two


@lmdb_only
async def test_a_chunk_file_longer_than_its_chunk_is_corrupt(engines):
    engine = await engines.start()
    chunk = await engine.write_chunk(b"exactly these bytes")
    with engines.chunk_file(engine, chunk).open("ab") as file:
        file.write(b"!")
    with pytest.raises(ChunkCorrupt):
        await engine.read_chunk(chunk)
