"""The LMDB engine's hot paths: point lookups without a thread hop, one-hop chunk writes."""

from __future__ import annotations

import threading

import lmdb
import pytest
import trio

from ringstore.core.hashing import chunk_hash
from ringstore.errors import ChunkCorrupt, StorageClosed
from ringstore.storage import lmdb_store
from ringstore.storage.engine import RecordWrite
from ringstore.storage.lmdb_layout import CLEAN_KEY
from ringstore.storage.lmdb_store import INLINE_LOOKUP_MAX_KEYS, LmdbStore

lmdb_only = pytest.mark.parametrize("kind", ["lmdb"])  # the `engines` fixture's kind


class ThreadCalls:
    """Counts the engine's worker-thread calls (every one goes through _on_worker_thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = lmdb_store._on_worker_thread

        async def counted(fn, *args):
            self.count += 1
            return await real(fn, *args)

        monkeypatch.setattr(lmdb_store, "_on_worker_thread", counted)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def stopped_cleanly(engine: LmdbStore) -> bool:
    """Whether the closed engine recorded a clean stop (no chunk file left without its row)."""
    env = lmdb.open(str(engine.path / "meta.lmdb"), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.get(CLEAN_KEY, db=env.open_db(b"meta", txn=txn)) is not None
    finally:
        env.close()


@lmdb_only
async def test_point_lookups_take_no_thread_hop(engines, monkeypatch):
    engine = await engines.start()
    chunk = await engine.write_chunk(b"a chunk")
    await engine.put_record(b"b", b"k", b"record", [chunk])
    await engine.put_meta("name", b"value")
    calls = ThreadCalls(monkeypatch)

    stored = await engine.get_record(b"b", b"k")
    assert stored is not None and (stored.record, stored.chunks) == (b"record", (chunk,))
    assert await engine.get_record(b"b", b"absent") is None
    assert await engine.get_meta("name") == b"value"
    assert await engine.get_meta("absent") is None
    assert await engine.missing_chunks([chunk, chunk_hash(b"other")]) == {chunk_hash(b"other")}
    assert calls.take() == 0

    # A long list of hashes is a scan in all but name: it goes to a worker thread.
    many = [chunk_hash(bytes([i % 256, i // 256])) for i in range(INLINE_LOOKUP_MAX_KEYS + 1)]
    assert await engine.missing_chunks([chunk, *many]) == set(many)
    assert calls.take() == 1


@lmdb_only
async def test_point_lookups_are_checkpoints(engines):
    engine = await engines.start()
    await engine.put_record(b"b", b"k", b"record", [])
    with trio.CancelScope() as scope:
        scope.cancel()
        await engine.get_record(b"b", b"k")
    assert scope.cancelled_caught


@lmdb_only
async def test_point_lookups_after_close_are_refused(engines):
    engine = await engines.start()
    await engine.aclose()
    with pytest.raises(StorageClosed):
        await engine.get_record(b"b", b"k")
    with pytest.raises(StorageClosed):
        await engine.get_meta("name")
    with pytest.raises(StorageClosed):
        await engine.missing_chunks([chunk_hash(b"x")])


@lmdb_only
async def test_a_chunk_with_a_known_hash_is_stored_in_one_file_hop(engines, monkeypatch):
    engine = await engines.start()
    calls = ThreadCalls(monkeypatch)
    data = b"x" * 200
    assert await engine.write_chunk(data, expected=chunk_hash(data)) == chunk_hash(data)
    assert calls.take() == 2  # write + fsync + rename in one call, then the row's commit
    assert await engine.read_chunk(chunk_hash(data)) == data
    assert calls.take() == 1
    assert engine.statistics().chunks == 1
    # Without the hash the engine hashes first, then publishes under the hash's lock.
    other = b"y" * 200
    assert await engine.write_chunk(other) == chunk_hash(other)
    assert calls.take() == 4  # start, write + fsync, rename, commit
    assert await engine.read_chunk(chunk_hash(other)) == other


@lmdb_only
async def test_known_hash_writes_leave_a_clean_stop(engines):
    engine = await engines.start()
    data = b"z" * 100
    with pytest.raises(ChunkCorrupt):
        await engine.write_chunk(data, expected=chunk_hash(b"something else"))
    assert await engine.write_chunk(data, expected=chunk_hash(data)) == chunk_hash(data)
    assert await engine.write_chunk(data, expected=chunk_hash(data)) == chunk_hash(data)
    assert engine.statistics().chunks == 1
    assert sorted(p.name for p in (engine.path / "tmp").iterdir()) == []
    await engine.aclose()
    assert stopped_cleanly(engine)
    again = await engines.reopen(engine)
    assert await again.read_chunk(chunk_hash(data)) == data


@lmdb_only
async def test_an_update_bringing_its_chunk_takes_one_commit_and_stops_cleanly(
    engines, monkeypatch
):
    engine = await engines.start()
    data = b"c" * 200
    chunks = {chunk_hash(data): data}
    commits = engine.statistics().commits
    calls = ThreadCalls(monkeypatch)
    await engine.update(b"b", b"k", lambda _: RecordWrite(b"r", (chunk_hash(data),)), chunks=chunks)
    # The file in one hop; its row and the record in one commit (queued together).
    assert (calls.take(), engine.statistics().commits - commits) == (2, 1)
    # A chunk that fails after another was stored: the stored one's row still commits.
    # (chunks are stored in hash order: `good` is picked to come first)
    good = next(g for g in (b"g%d" % i for i in range(64)) if chunk_hash(g) < chunk_hash(b"x"))
    bad = b"not x"
    with pytest.raises(ChunkCorrupt):
        await engine.update(
            b"b", b"k2", lambda _: None, chunks={chunk_hash(good): good, chunk_hash(b"x"): bad}
        )
    await engine.aclose()
    assert stopped_cleanly(engine)
    again = await engines.reopen(engine)
    assert await again.missing_chunks([chunk_hash(good), chunk_hash(b"x")]) == {chunk_hash(b"x")}


async def test_worker_thread_calls_run_off_the_event_loop_and_return_or_raise():
    loop_thread = threading.get_ident()
    assert await lmdb_store._on_worker_thread(threading.get_ident) != loop_thread
    assert await lmdb_store._on_worker_thread(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        await lmdb_store._on_worker_thread(divmod, 1, 0)


async def test_a_cancelled_caller_still_waits_for_its_worker_thread_call():
    # A commit or a chunk file's rename must not go on behind the engine's back.
    release = threading.Event()
    finished: list[str] = []

    def slow() -> str:
        release.wait(10)
        finished.append("done")
        return "result"

    with trio.CancelScope() as scope:
        scope.cancel()
        trio.lowlevel.current_trio_token().run_sync_soon(release.set)
        assert await lmdb_store._on_worker_thread(slow) == "result"
        assert finished == ["done"]
        await trio.lowlevel.checkpoint()  # the cancellation arrives at the next checkpoint
    assert scope.cancelled_caught
