"""The production storage engine: LMDB metadata and content-addressed chunk files, verified on read.

The metadata's databases, keys and values are `lmdb_layout`'s Layout; the chunk files are
chunk_files.py's. Files under `<path>`:
  meta.lmdb                    the LMDB environment (lmdb_layout)
  chunks/, tmp/, quarantine/   the chunk files, uploads and bad files (chunk_files.py's Layout)
  lock                         flock()ed while an engine has the directory open

Write order (why a crash never leaves a record naming a chunk that is not on disk): a chunk
file is written under tmp/, fsynced, renamed into place and its directory fsynced before its
`chunks` row commits, and a record can name only chunks whose row is present. The sweeper
deletes a row before its file.

Recovery: a crash between a chunk file's rename and its row's commit (or between the sweeper's
row deletion and its unlink) leaves a file without a row, which no record can name and the
sweeper, walking rows, would never see. So the engine removes `clean` when it opens and puts it
back when it closes with no such gap open; opening without `clean` walks chunks/ and gives each
file without a present row one (refcount unchanged, or 0 for a new row), restarting its grace,
so the sweeper deletes it unless a record names it. Only a start after a crash pays for the walk.

Concurrency: one committer task applies every queued write in one write transaction (group
commit, `group_commit`), each operation under its own savepoint (a nested transaction), in one
worker-thread call. Scans, chunk files and commits (every fsync) run on worker threads under
capacity limiters. Point lookups (`get_record`, `get_meta`, `missing_chunks`) run on the
calling thread, the event loop: one is a few B-tree pages of a memory map, microseconds from
the page cache, where a worker-thread hop costs tens of microseconds of CPU and, on a busy
loop, can wait up to the GIL's 5 ms switch interval to get back (bench/RESULTS.md, issue 6's
profile: hops were a fifth of a node's CPU). The price is a page fault on a cold page, one disk
read, while the loop waits. Per-chunk locks order the file operations on one hash (publish,
quarantine, delete) against each other.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import trio

from ringstore.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ChunkTooLarge,
    LocalError,
    StorageClosed,
)
from ringstore.storage.chunk_files import CORRUPT, OK, VANISHED, ChunkFiles, Upload
from ringstore.storage.engine import (
    DEFAULT_CHUNK_SIZE_BYTES,
    DEFAULT_INLINE_MAX_BYTES,
    DEFAULT_RING_SIZE,
    DELETE,
    EngineStats,
    RecordWrite,
    StoredRecord,
    UpdateFn,
    check_chunk_hash,
    check_engine_params,
    check_hashed_write,
    check_meta_name,
    check_name,
    check_partition,
    check_record_write,
    check_segment,
    check_update,
)
from ringstore.storage.group_commit import GroupCommit, WriteOp
from ringstore.storage.lmdb_layout import (
    CLEAN_KEY,
    MAX_DBS,
    ChunkRow,
    Tables,
    Writer,
    commit_batch,
    commit_error,
)

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE_BYTES = 64 * 1024**3  # address space, not disk: the file grows as written
WRITE_QUEUE_OPS = 1024  # writers beyond this wait to enqueue: bounds memory under overload
READ_THREADS = 4  # LMDB lookups are short; more threads would only contend for the cores
FILE_THREADS = 8  # chunk file reads and writes mostly wait on the disk, so allow more
UPLOAD_BUFFER_BYTES = 64 * 1024  # small streamed pieces are gathered: one thread hop per write
# A lookup of more keys than this (a large object's chunk list) goes to a worker thread: the
# event loop holds still for at most this many B-tree descents.
INLINE_LOOKUP_MAX_KEYS = 64
ROW_PAGE = 1024  # chunk rows read per read transaction by sweep and scrub

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"
# What a look at one chunk found (`_look_at_chunk`): a chunk_files status, or no present row.
_ABSENT = "absent"


def _write_and_finish(upload: Upload, data: bytes | bytearray | memoryview) -> bytes | None:
    """Write the whole chunk and make it durable; its hash, if the upload hashes (one
    worker-thread call)."""
    upload.write(data)
    return upload.finish()


async def _on_worker_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on one of Trio's cached worker threads, waited for without cancellation.

    `trio.to_thread.run_sync` without its per-call extras: a capacity limiter, a context copy
    and a thread name set and reset through ctypes, which made each hop twice as costly
    (about 120 against 60 microseconds of CPU here, once per group commit and chunk file).
    Like `run_sync` by default, a cancelled caller still waits for `fn`: a commit or a file
    operation is never left running behind the engine's back.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Any) -> None:  # an outcome.Outcome
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
    return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


class LmdbStore:
    """The storage engine of a real node: `<path>/meta.lmdb` plus chunk files under `<path>`.

    Usage (the engine opens its files in `run`, and closes them when `run` is cancelled)::

        store = LmdbStore(Path("data/node1"), ring_size=64)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.put_record(b"bucket", b"key", b"record", [])
            ...
            await store.aclose()   # or cancel the nursery

    `ring_size` is fixed when the directory is created (a different one later is refused);
    `inline_max` is advisory (the coordinator decides what to inline); `chunk_size` bounds
    `write_chunk`; `map_size` is LMDB's maximum size of the metadata file; `wall_clock`
    stamps chunk rows for the sweeper; `max_batch_ops` bounds the writes one transaction
    commits (1 turns group commit off: bench/storage.py measures what group commit buys
    against it). An engine runs once: to reopen the same directory,
    make a new `LmdbStore`.
    """

    def __init__(
        self,
        path: Path,
        *,
        ring_size: int = DEFAULT_RING_SIZE,
        inline_max: int = DEFAULT_INLINE_MAX_BYTES,
        chunk_size: int = DEFAULT_CHUNK_SIZE_BYTES,
        map_size: int = DEFAULT_MAP_SIZE_BYTES,
        wall_clock: Callable[[], float] = time.time,
        max_batch_ops: int = WRITE_QUEUE_OPS,
    ) -> None:
        check_engine_params(ring_size, inline_max, chunk_size)
        if not isinstance(max_batch_ops, int) or max_batch_ops < 1:
            raise ValueError(f"max_batch_ops must be a positive int: {max_batch_ops!r}")
        self.path = Path(path)
        self.ring_size = ring_size
        self.inline_max = inline_max
        self.chunk_size = chunk_size
        self.map_size = map_size
        self._wall_clock = wall_clock
        self._files = ChunkFiles(self.path)
        self._state = _NEW
        self._run_scope = trio.CancelScope()
        self._closed = trio.Event()
        self._lock_fd = -1
        self._env: lmdb.Environment | None = None
        self._tables: Tables | None = None
        self._page_size = 0
        self._group = GroupCommit(
            str(self.path),
            self._commit,
            committed=self._committed,
            failed=commit_error,
            max_batch_ops=max_batch_ops,
            queue_ops=WRITE_QUEUE_OPS,
        )
        self._read_limiter: trio.CapacityLimiter | None = None
        self._file_limiter: trio.CapacityLimiter | None = None
        self._threads_busy = 0
        self._threads_idle: trio.Event | None = None
        self._hash_locks: dict[bytes, trio.Lock] = {}
        # Chunk files whose row may disagree with them (published, or their row deleted, with
        # the other half not done yet or failed): while nonzero, a stop is not clean.
        self._unsettled_files = 0
        self._objects = 0
        self._chunks = 0
        self._chunk_bytes = 0
        self._metadata_bytes = 0
        self._commits = 0
        self._operations_committed = 0
        self._corrupt_chunks_found = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the files, then commit queued writes until cancelled (or `aclose`)."""
        if self._state != _NEW:
            raise RuntimeError("an LmdbStore runs once; make a new one to reopen the directory")
        self._state = _CLOSED  # until open succeeds, every call is refused
        self._read_limiter = trio.CapacityLimiter(READ_THREADS)
        self._file_limiter = trio.CapacityLimiter(FILE_THREADS)
        try:
            with self._run_scope:
                await trio.to_thread.run_sync(self._open)
                self._state = _RUNNING
                log.info(
                    "storage %s open: %d objects, %d chunks (%d bytes)",
                    self.path,
                    self._objects,
                    self._chunks,
                    self._chunk_bytes,
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._group.run)
                    task_status.started()
        finally:
            self._state = _CLOSED
            with trio.CancelScope(shield=True):
                await self._shut_down()
            self._closed.set()
            log.info("storage %s closed", self.path)

    async def aclose(self) -> None:
        if self._state == _NEW:
            self._state = _CLOSED
            self._closed.set()
            return
        self._run_scope.cancel()
        await self._closed.wait()

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LocalError(f"storage {self.path} is in use by another engine") from None
        self._files.prepare()  # under the lock, as it must be
        try:
            env = lmdb.open(
                str(self.path / "meta.lmdb"),
                map_size=self.map_size,
                max_dbs=MAX_DBS,
                sync=True,
                metasync=True,
                readahead=False,  # random access to a file that may outgrow RAM
            )
        except lmdb.Error as exc:
            raise LocalError(f"storage {self.path} cannot be opened: {exc}") from exc
        try:
            tables = Tables.open(env, self.ring_size)
            with env.begin(write=True) as txn:
                tables.check_format(txn, self.path)
                clean = txn.pop(CLEAN_KEY, db=tables.meta) is not None
            if not clean:
                adopted = tables.adopt_files(env, self._files.walk(), float(self._wall_clock()))
                if adopted:
                    log.warning(
                        "storage %s: %d chunk files without a row after an unclean stop; "
                        "the sweeper will delete those no record names",
                        self.path,
                        adopted,
                    )
            with env.begin() as txn:
                self._objects, self._chunks, self._chunk_bytes = tables.chunk_totals(txn)
        except BaseException:
            env.close()
            raise
        self._env, self._tables = env, tables
        self._page_size = env.stat()["psize"]
        self._metadata_bytes = self._metadata_size()

    def _metadata_size(self) -> int:
        assert self._env is not None
        return (self._env.info()["last_pgno"] + 1) * self._page_size

    async def _shut_down(self) -> None:
        self._group.close()
        while self._threads_busy:
            self._threads_idle = trio.Event()
            await self._threads_idle.wait()
        if self._env is not None:
            await trio.to_thread.run_sync(self._close_env, not self._unsettled_files)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the directory lock
            self._lock_fd = -1

    def _close_env(self, clean: bool) -> None:
        assert self._env is not None and self._tables is not None
        try:
            if clean:
                with self._env.begin(write=True) as txn:
                    txn.put(CLEAN_KEY, b"", db=self._tables.meta)
        except lmdb.Error:
            log.exception("storage %s: cannot record a clean stop", self.path)
        finally:
            self._env.close()

    def _check_running(self) -> None:
        if self._state != _RUNNING:
            raise StorageClosed(f"storage {self.path} is not running")

    async def _thread(
        self,
        limiter: trio.CapacityLimiter | None,
        fn: Callable[..., Any],
        *args: Any,
        check: bool = True,
    ) -> Any:
        """Run `fn` on a worker thread; the engine closes only after every such call returns."""
        if check:
            self._check_running()
        self._threads_busy += 1
        try:
            assert limiter is not None  # set by run(), before any call can be made
            async with limiter:
                return await _on_worker_thread(fn, *args)
        finally:
            self._threads_busy -= 1
            if not self._threads_busy and self._threads_idle is not None:
                self._threads_idle.set()

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(tables, txn, *args)` (a `Tables` read) in a read transaction on a worker
        thread."""
        return await self._thread(self._read_limiter, self._in_read_txn, fn, *args)

    def _lookup(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(tables, txn, *args)`, a point lookup, in a read transaction on this thread.

        Only for reads of a few pages (see Concurrency at the top); never for scans.
        """
        self._check_running()
        return self._in_read_txn(fn, *args)

    def _in_read_txn(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._env is not None
        with self._env.begin() as txn:
            return fn(self._tables, txn, *args)

    async def _file(self, fn: Callable[..., Any], *args: Any, check: bool = True) -> Any:
        return await self._thread(self._file_limiter, fn, *args, check=check)

    # -- group commit ----------------------------------------------------------------------

    async def _submit(self, apply: Callable[[Writer], Any]) -> Any:
        """Queue a write; its result once its batch is durable (see GroupCommit.submit)."""
        self._check_running()
        return await self._group.submit(apply)

    async def _enqueue(self, *applies: Callable[[Writer], Any]) -> list[WriteOp]:
        self._check_running()
        return await self._group.enqueue(*applies)

    async def _commit(self, batch: list[WriteOp]) -> None:
        try:
            # The committer is the only writer: no limiter needed to keep commits one at a time.
            await _on_worker_thread(self._commit_batch, batch)
        except Exception:
            log.exception("storage %s: a commit of %d writes failed", self.path, len(batch))
            raise

    def _commit_batch(self, batch: list[WriteOp]) -> None:
        assert self._env is not None and self._tables is not None
        commit_batch(self._env, self._tables, batch, float(self._wall_clock()))

    def _committed(self, batch: list[WriteOp]) -> None:
        self._commits += 1
        self._metadata_bytes = self._metadata_size()
        for op in batch:
            writer = op.changes
            if writer is not None:
                self._operations_committed += 1
                self._objects += writer.objects
                self._chunks += writer.chunks
                self._chunk_bytes += writer.chunk_bytes

    # -- records ---------------------------------------------------------------------------

    async def update(
        self,
        bucket: bytes,
        key: bytes,
        fn: UpdateFn,
        *,
        chunks: Mapping[bytes, bytes] | None = None,
        hashed: bool = False,
    ) -> StoredRecord | None:
        check_update(bucket, key, fn, chunks, hashed, self.chunk_size)
        apply = partial(Writer.update, bucket=bucket, key=key, fn=fn)
        if not chunks:
            return await self._submit(apply)
        new = sorted(await self.missing_chunks(list(chunks)))
        async with AsyncExitStack() as locks:
            for chunk in new:  # in hash order, as no other holder takes two
                await locks.enter_async_context(self._hash_lock(chunk))
            # Shielded for the reason given in write_chunk.
            with trio.CancelScope(shield=True):
                registers: list[Callable[[Writer], Any]] = []
                try:
                    for chunk in new:
                        registers.append(await self._place_file(chunks[chunk], chunk, hashed))
                except BaseException:
                    # The files already in place still get their rows.
                    await self._rows_committed(await self._enqueue(*registers))
                    raise
                # Queued right behind the rows: applied in their commit (or a later one), it
                # sees them and is durable only with them.
                *rows, update = await self._enqueue(*registers, apply)
                await self._rows_committed(rows)
        return await GroupCommit.outcome(update)

    async def put_record(
        self, bucket: bytes, key: bytes, record: bytes, chunks: Sequence[bytes]
    ) -> None:
        check_name(bucket, key)
        write = check_record_write(RecordWrite(record, tuple(chunks)))
        await self._submit(
            partial(Writer.update, bucket=bucket, key=key, fn=lambda _current: write)
        )

    async def delete_record(self, bucket: bytes, key: bytes) -> None:
        check_name(bucket, key)
        await self._submit(
            partial(Writer.update, bucket=bucket, key=key, fn=lambda _current: DELETE)
        )

    async def get_record(self, bucket: bytes, key: bytes) -> StoredRecord | None:
        stored = self.lookup_record(bucket, key)
        await trio.lowlevel.checkpoint()
        return stored

    def lookup_record(self, bucket: bytes, key: bytes) -> StoredRecord | None:
        check_name(bucket, key)
        return self._lookup(Tables.record, bucket, key)

    async def scan_partition(
        self, partition: int, *, batch: int = 256
    ) -> AsyncIterator[list[StoredRecord]]:
        check_partition(partition, self.ring_size)
        if batch < 1:
            raise ValueError(f"batch must be positive: {batch}")
        after = None
        while True:
            page, after = await self._read(Tables.scan_page, partition, after, batch)
            if not page:
                return
            yield page
            if len(page) < batch:
                return

    async def segment_hashes(self, partition: int) -> dict[int, bytes]:
        check_partition(partition, self.ring_size)
        return await self._read(Tables.segment_hashes, partition)

    async def segment_records(self, partition: int, segment: int) -> list[StoredRecord]:
        check_partition(partition, self.ring_size)
        check_segment(segment)
        return await self._read(Tables.segment_records, partition, segment)

    async def list_buckets(self) -> list[bytes]:
        return await self._read(Tables.list_buckets)

    # -- chunks ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _hash_lock(self, chunk: bytes) -> AsyncIterator[None]:
        lock = self._hash_locks.setdefault(chunk, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            self._forget_lock(chunk, lock)

    def _forget_lock(self, chunk: bytes, lock: trio.Lock) -> None:
        if (
            not lock.locked()
            and not lock.statistics().tasks_waiting
            and self._hash_locks.get(chunk) is lock
        ):
            del self._hash_locks[chunk]

    async def write_chunk(
        self,
        data: bytes | bytearray | memoryview | AsyncIterator[bytes],
        expected: bytes | None = None,
        *,
        hashed: bool = False,
    ) -> bytes:
        """Store one chunk durably and return its hash.

        `data` is the whole chunk or an async iterator of its pieces (written as they come,
        never joined). `ChunkTooLarge` past `chunk_size`; `ChunkCorrupt` if the bytes do not
        hash to `expected`. Either way nothing is stored. `hashed`: as in the engine protocol
        (`storage.engine`), the bytes are written without hashing them again.
        """
        self._check_running()
        if hashed:
            check_hashed_write(data, expected)
        if expected is not None:
            check_chunk_hash(expected)
        whole = isinstance(data, bytes | bytearray | memoryview)
        if whole:
            size = memoryview(data).nbytes
            if size > self.chunk_size:
                raise ChunkTooLarge(size, self.chunk_size)
        elif not hasattr(data, "__aiter__"):
            raise TypeError("write_chunk takes bytes or an async iterator of bytes")
        if whole and expected is not None:
            return await self._write_known(data, expected, hashed)
        upload: Upload = await self._file(self._files.start_upload)
        try:
            if whole:
                digest = await self._file(_write_and_finish, upload, data)
            else:
                await self._receive_pieces(upload, data)
                digest = await self._file(upload.finish)
            if expected is not None and digest != expected:
                raise ChunkCorrupt(expected, f"the bytes received hash to {digest.hex()}")
            async with self._hash_lock(digest):
                # Shielded: a cancelled caller must not leave the file published without its
                # row (a failure still can: counted, so that the next start adopts the file).
                with trio.CancelScope(shield=True):
                    self._unsettled_files += 1
                    await self._file(self._files.publish, upload, digest)
                    await self._submit(partial(Writer.register, chunk=digest, size=upload.size))
                    self._unsettled_files -= 1
            return digest
        finally:
            if not upload.published:
                with trio.CancelScope(shield=True):
                    await self._file(upload.discard, check=False)

    async def _write_known(
        self, data: bytes | bytearray | memoryview, expected: bytes, hashed: bool
    ) -> bytes:
        """`write_chunk` of whole bytes whose hash the caller names (every replication does).

        The hash being known, its lock is taken first and the file is written, verified
        (unless `hashed`) and published in one worker-thread call instead of four.
        """
        async with self._hash_lock(expected):
            # Shielded for the reason given in write_chunk.
            with trio.CancelScope(shield=True):
                register = await self._place_file(data, expected, hashed)
                await self._rows_committed(await self._enqueue(register))
        return expected

    async def _place_file(
        self, data: bytes | bytearray | memoryview, expected: bytes, hashed: bool
    ) -> Callable[[Writer], None]:
        """Put the chunk's file in place durably; return the write that registers its row.

        For a caller holding the chunk's lock, shielded, that then queues the row and waits
        for it (`_rows_committed`): until then the file counts as unsettled. `ChunkCorrupt`,
        and nothing stored, if the bytes are not `expected`.
        """
        self._unsettled_files += 1
        uploads: list[Upload] = []
        try:
            digest = await self._file(self._store_whole, data, expected, hashed, uploads)
        except BaseException:
            if not (uploads and uploads[0].published):
                self._unsettled_files -= 1
            raise
        if digest != expected:
            self._unsettled_files -= 1
            raise ChunkCorrupt(expected, f"the bytes received hash to {digest.hex()}")
        return partial(Writer.register, chunk=expected, size=uploads[0].size)

    async def _rows_committed(self, rows: list[WriteOp]) -> None:
        """Wait for every row; raise the first failure. A row that failed to commit leaves
        its file unsettled: the next start adopts it."""
        failure: Exception | None = None
        for row in rows:
            try:
                await GroupCommit.outcome(row)
            except Exception as exc:
                failure = failure or exc
            else:
                self._unsettled_files -= 1
        if failure is not None:
            raise failure

    def _store_whole(
        self,
        data: bytes | bytearray | memoryview,
        expected: bytes,
        hashed: bool,
        uploads: list[Upload],
    ) -> bytes:
        """Write an upload (appended to `uploads`); publish it if it hashes to `expected` (or
        the caller vouches that it does: `hashed`), else discard it. Returns the hash."""
        upload = self._files.start_upload(hashing=not hashed)
        uploads.append(upload)
        try:
            digest = _write_and_finish(upload, data) or expected
            if digest == expected:
                self._files.publish(upload, digest)
        finally:
            if not upload.published:
                upload.discard()
        return digest

    async def _receive_pieces(self, upload: Upload, pieces: AsyncIterator[bytes]) -> None:
        buffer = bytearray()
        size = 0
        async for piece in pieces:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise TypeError(f"chunk pieces are bytes, not {type(piece).__name__}")
            size += memoryview(piece).nbytes
            if size > self.chunk_size:
                raise ChunkTooLarge(size, self.chunk_size)
            buffer += piece
            if len(buffer) >= UPLOAD_BUFFER_BYTES:
                await self._file(upload.write, buffer)
                buffer = bytearray()
        if buffer:
            await self._file(upload.write, buffer)

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]:
        wanted = list(hashes)
        for chunk in wanted:
            check_chunk_hash(chunk)
        if len(wanted) > INLINE_LOOKUP_MAX_KEYS:
            return await self._read(Tables.missing, wanted)
        missing = self._lookup(Tables.missing, wanted)
        await trio.lowlevel.checkpoint()
        return missing

    async def read_chunk(self, chunk_hash: bytes) -> bytes:
        """The chunk's bytes, verified against its hash on every read.

        `ChunkMissing` if this engine does not hold it; `ChunkCorrupt` if the file does not
        match (the file is then quarantined and the chunk counts as missing from now on).
        """
        check_chunk_hash(chunk_hash)
        status, data = await self._file(self._look_at_chunk, chunk_hash)
        if status in (VANISHED, CORRUPT):
            status, data = await self._confirm_bad(chunk_hash)
        if status == OK:
            return data
        if status == CORRUPT:
            raise ChunkCorrupt(chunk_hash, "the file was quarantined")
        raise ChunkMissing(chunk_hash)

    def _look_at_chunk(self, chunk: bytes) -> tuple[str, bytes | None]:
        assert self._env is not None and self._tables is not None
        with self._env.begin() as txn:
            row = self._tables.chunk_row(txn, chunk)
        if row is None or not row.present:
            return _ABSENT, None
        return self._files.read_verified(chunk, row.size)

    async def _confirm_bad(self, chunk: bytes) -> tuple[str, bytes | None]:
        """Look again under the chunk's lock; quarantine and mark it missing if still bad.

        Returns what the second look found: OK (repaired meanwhile) with the bytes, absent
        (quarantined or swept meanwhile), or CORRUPT / VANISHED, now dealt with.
        """
        async with self._hash_lock(chunk):
            status, data = await self._file(self._look_at_chunk, chunk)
            if status in (OK, _ABSENT):
                return status, data
            if status == CORRUPT:
                await self._file(self._files.quarantine, chunk)
            await self._submit(partial(Writer.mark_missing, chunk=chunk))
            self._corrupt_chunks_found += 1
            log.warning("storage %s: chunk %s is %s", self.path, chunk.hex(), status)
            return status, None

    async def _chunk_rows(self) -> AsyncIterator[list[tuple[bytes, ChunkRow]]]:
        """Every chunk row, a page per read transaction."""
        start = b""
        while True:
            page = await self._read(Tables.chunk_page, start, ROW_PAGE)
            if not page:
                return
            yield page
            start = page[-1][0] + b"\0"

    async def sweep(self, grace_s: float) -> int:
        """Delete chunks unreferenced for at least `grace_s` seconds; return how many.

        A chunk being written, read or quarantined right now is left for the next sweep.
        """
        if grace_s < 0:
            raise ValueError(f"grace_s must not be negative: {grace_s}")
        self._check_running()
        cutoff = float(self._wall_clock()) - grace_s
        deleted = 0
        async for page in self._chunk_rows():
            candidates = [
                chunk for chunk, row in page if row.refcount == 0 and row.last_change <= cutoff
            ]
            locks: dict[bytes, trio.Lock] = {}
            try:
                for chunk in candidates:
                    lock = self._hash_locks.setdefault(chunk, trio.Lock())
                    try:
                        lock.acquire_nowait()
                    except trio.WouldBlock:
                        continue
                    locks[chunk] = lock
                if locks:
                    # Shielded: rows deleted without their files would leave orphan files.
                    with trio.CancelScope(shield=True):
                        self._unsettled_files += 1
                        try:
                            gone = await self._submit(
                                partial(Writer.sweep, chunks=list(locks), cutoff=cutoff)
                            )
                        except BaseException:
                            self._unsettled_files -= 1  # no row was deleted
                            raise
                        await self._file(self._files.unlink, gone, check=False)
                        self._unsettled_files -= 1
                    deleted += len(gone)
            finally:
                for chunk, lock in locks.items():
                    lock.release()
                    self._forget_lock(chunk, lock)
        return deleted

    async def scrub(self, bytes_per_s: float) -> list[bytes]:
        """Re-verify every chunk, reading at most `bytes_per_s` on average.

        Returns the chunks found corrupt (quarantined) or whose file vanished; each is then
        missing here until written again.
        """
        if not bytes_per_s > 0:
            raise ValueError(f"bytes_per_s must be positive: {bytes_per_s}")
        self._check_running()
        bad: list[bytes] = []
        async for page in self._chunk_rows():
            for chunk, row in page:
                if not row.present:
                    continue
                status, _ = await self._file(self._look_at_chunk, chunk)
                if status in (VANISHED, CORRUPT):
                    status, _ = await self._confirm_bad(chunk)
                    if status in (VANISHED, CORRUPT):
                        bad.append(chunk)
                await trio.sleep(row.size / bytes_per_s)
        return bad

    # -- meta and statistics ---------------------------------------------------------------

    async def get_meta(self, name: str) -> bytes | None:
        stored_name = check_meta_name(name)
        value = self._lookup(Tables.meta_value, stored_name)
        await trio.lowlevel.checkpoint()
        return value

    async def put_meta(self, name: str, value: bytes) -> None:
        stored_name = check_meta_name(name)
        if not isinstance(value, bytes):
            raise TypeError("a meta value is bytes")
        await self._submit(partial(Writer.put_meta, stored_name=stored_name, value=value))

    def statistics(self) -> EngineStats:
        return EngineStats(
            objects=self._objects,
            chunks=self._chunks,
            chunk_bytes=self._chunk_bytes,
            metadata_bytes=self._metadata_bytes,
            commits=self._commits,
            operations_committed=self._operations_committed,
            corrupt_chunks_found=self._corrupt_chunks_found,
        )
