"""The simulator's disk: the storage contract in memory, without threads, and able to crash.

Durability model: a write becomes durable when its group commit completes; until then it is
invisible to readers. `crash()` loses every write queued or in a commit not yet completed,
and `MemoryStore.recover(crashed)` starts a new engine on what survived. With
`commit_delay_s` > 0 every group commit takes that long (a simulated fsync, in Trio time),
which lets batches form and gives crashes a window to land in. Quarantining a corrupt chunk
takes effect at once, as the LMDB engine's file rename does.
"""

from __future__ import annotations

import bisect
import copy
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ringstore.core.hashing import chunk_hash, chunk_hasher, partition_of
from ringstore.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ChunkTooLarge,
    MissingChunks,
    StorageClosed,
)
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
    object_key,
    record_digest,
    segment_of,
    xor_digests,
)
from ringstore.storage.group_commit import GroupCommit, WriteOp

WRITE_QUEUE_OPS = 1024  # as the LMDB engine: writers beyond this wait to enqueue
CHUNK_ROW_BYTES = 48  # what `metadata_bytes` counts per chunk row (an LMDB row's rough size)

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


@dataclass(frozen=True, slots=True)
class _ChunkRow:
    size: int
    refcount: int
    last_change: float
    present: bool


@dataclass(slots=True)
class _Disk:
    """Everything a crash keeps: the state as of the last completed group commit."""

    records: dict[int, dict[bytes, StoredRecord]] = field(default_factory=dict)
    order: dict[int, list[bytes]] = field(default_factory=dict)  # sorted object keys
    chunks: dict[bytes, _ChunkRow] = field(default_factory=dict)
    chunk_data: dict[bytes, bytes] = field(default_factory=dict)
    segments: dict[int, dict[int, bytes]] = field(default_factory=dict)
    segment_keys: dict[tuple[int, int], set[bytes]] = field(default_factory=dict)
    buckets: dict[bytes, int] = field(default_factory=dict)  # bucket -> number of records
    meta: dict[bytes, bytes] = field(default_factory=dict)
    quarantine: list[tuple[bytes, bytes]] = field(default_factory=list)
    objects: int = 0
    chunk_count: int = 0
    chunk_bytes: int = 0
    metadata_bytes: int = 0


def _record_size(okey: bytes, record: StoredRecord) -> int:
    return 2 + len(okey) + len(record.record) + 32 * len(record.chunks)


class MemoryStore:
    """An in-memory engine with the LMDB engine's behaviour and checks, for the simulator.

    Same parameters as `LmdbStore` except the path and map size; `commit_delay_s` is the
    simulated duration of one group commit. Use as any engine (`await nursery.start(
    store.run)`); `crash()` simulates power loss and `MemoryStore.recover(store)` restarts.
    """

    def __init__(
        self,
        *,
        ring_size: int = DEFAULT_RING_SIZE,
        inline_max: int = DEFAULT_INLINE_MAX_BYTES,
        chunk_size: int = DEFAULT_CHUNK_SIZE_BYTES,
        wall_clock: Callable[[], float] = time.time,
        commit_delay_s: float = 0.0,
    ) -> None:
        check_engine_params(ring_size, inline_max, chunk_size)
        if commit_delay_s < 0:
            raise ValueError(f"commit_delay_s must not be negative: {commit_delay_s}")
        self.ring_size = ring_size
        self.inline_max = inline_max
        self.chunk_size = chunk_size
        self.commit_delay_s = commit_delay_s
        self._wall_clock = wall_clock
        self._disk = _Disk()
        self._state = _NEW
        self.crashed = False
        self._run_scope = trio.CancelScope()
        self._commit_scope: trio.CancelScope | None = None
        self._closed = trio.Event()
        self._group = GroupCommit(
            "in memory",
            self._commit,
            committed=self._committed,
            failed=lambda _exc: StorageClosed("crashed before this write committed"),
            max_batch_ops=WRITE_QUEUE_OPS,
            queue_ops=WRITE_QUEUE_OPS,
        )
        self._commits = 0
        self._operations_committed = 0
        self._corrupt_chunks_found = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._state != _NEW:
            raise RuntimeError("a MemoryStore runs once; use MemoryStore.recover to restart")
        self._state = _RUNNING
        try:
            with self._run_scope:
                task_status.started()
                await self._group.run()
        finally:
            self._state = _CLOSED
            self._group.close()
            self._closed.set()

    async def aclose(self) -> None:
        """Stop after the commit in progress, keeping every completed write."""
        if self._state == _NEW:
            self._state = _CLOSED
            self._closed.set()
            return
        self._run_scope.cancel()
        await self._closed.wait()

    def crash(self) -> None:
        """Power loss: writes not yet committed are lost, and every later call is refused."""
        self.crashed = True
        self._state = _CLOSED
        self._closed.set()
        if self._commit_scope is not None:
            self._commit_scope.cancel()
        self._run_scope.cancel()

    @classmethod
    def recover(cls, old: MemoryStore) -> MemoryStore:
        """A new, not yet running engine holding what `old` (crashed or closed) made durable."""
        if old._state == _RUNNING:
            raise RuntimeError("recover an engine after crash() or aclose(), not while it runs")
        new = cls(
            ring_size=old.ring_size,
            inline_max=old.inline_max,
            chunk_size=old.chunk_size,
            wall_clock=old._wall_clock,
            commit_delay_s=old.commit_delay_s,
        )
        new._disk = copy.deepcopy(old._disk)
        return new

    def _check_running(self) -> None:
        if self._state != _RUNNING:
            raise StorageClosed("the memory storage engine is not running")

    # -- group commit ----------------------------------------------------------------------

    async def _submit(self, apply: Callable[[float], Any]) -> Any:
        self._check_running()
        return await self._group.submit(apply)

    async def _commit(self, batch: list[WriteOp]) -> None:
        """Apply the batch at once (each operation checks before it changes anything), after
        the simulated fsync; a crash during it loses the batch."""
        if self.commit_delay_s:
            # Shielded so that aclose lets the commit finish; crash() cancels it.
            with trio.CancelScope(shield=True) as self._commit_scope:
                await trio.sleep(self.commit_delay_s)
            self._commit_scope = None
        if self.crashed:
            raise StorageClosed("crashed before this batch committed")
        now = float(self._wall_clock())
        for op in batch:
            try:
                op.result = op.apply(now)
            except Exception as exc:
                op.error = exc
            else:
                op.changes = True

    def _committed(self, batch: list[WriteOp]) -> None:
        self._commits += 1
        self._operations_committed += sum(op.changes is not None for op in batch)

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
        if chunks:
            # Each chunk durable before the update is queued: the order the contract asks for.
            for chunk in sorted(await self.missing_chunks(list(chunks))):
                await self.write_chunk(chunks[chunk], chunk, hashed=hashed)
        return await self._submit(lambda now: self._apply_update(now, bucket, key, fn))

    async def put_record(
        self, bucket: bytes, key: bytes, record: bytes, chunks: Sequence[bytes]
    ) -> None:
        check_name(bucket, key)
        write = check_record_write(RecordWrite(record, tuple(chunks)))
        await self._submit(lambda now: self._apply_update(now, bucket, key, lambda _: write))

    async def delete_record(self, bucket: bytes, key: bytes) -> None:
        check_name(bucket, key)
        await self._submit(lambda now: self._apply_update(now, bucket, key, lambda _: DELETE))

    def _apply_update(
        self, now: float, bucket: bytes, key: bytes, fn: UpdateFn
    ) -> StoredRecord | None:
        disk = self._disk
        partition = partition_of(bucket, key, self.ring_size)
        okey = object_key(bucket, key)
        current = disk.records.get(partition, {}).get(okey)
        wanted = fn(current)
        if wanted is None:
            return current
        if wanted is DELETE:
            if current is not None:
                self._change_refs(now, set(current.chunks), -1)
                self._remove(partition, okey, current)
            return None
        wanted = check_record_write(wanted)
        old_refs = set(current.chunks) if current is not None else set()
        new_refs = set(wanted.chunks)
        missing = {
            chunk
            for chunk in new_refs
            if chunk not in disk.chunks or not disk.chunks[chunk].present
        }
        if missing:
            raise MissingChunks(missing)
        self._change_refs(now, new_refs - old_refs, +1)
        self._change_refs(now, old_refs - new_refs, -1)
        stored = StoredRecord(bucket, key, wanted.record, tuple(wanted.chunks))
        if current is not None:
            self._remove(partition, okey, current)
        self._insert(partition, okey, stored)
        return stored

    def _change_refs(self, now: float, chunks: set[bytes], delta: int) -> None:
        for chunk in chunks:
            row = self._disk.chunks[chunk]
            self._disk.chunks[chunk] = replace(row, refcount=row.refcount + delta, last_change=now)

    def _insert(self, partition: int, okey: bytes, stored: StoredRecord) -> None:
        disk = self._disk
        disk.records.setdefault(partition, {})[okey] = stored
        bisect.insort(disk.order.setdefault(partition, []), okey)
        segment = segment_of(stored.bucket, stored.key)
        disk.segment_keys.setdefault((partition, segment), set()).add(okey)
        self._toggle_segment(partition, segment, stored)
        disk.buckets[stored.bucket] = disk.buckets.get(stored.bucket, 0) + 1
        disk.objects += 1
        disk.metadata_bytes += _record_size(okey, stored)

    def _remove(self, partition: int, okey: bytes, stored: StoredRecord) -> None:
        disk = self._disk
        del disk.records[partition][okey]
        order = disk.order[partition]
        del order[bisect.bisect_left(order, okey)]
        segment = segment_of(stored.bucket, stored.key)
        disk.segment_keys[(partition, segment)].discard(okey)
        self._toggle_segment(partition, segment, stored)
        disk.buckets[stored.bucket] -= 1
        if not disk.buckets[stored.bucket]:
            del disk.buckets[stored.bucket]
        disk.objects -= 1
        disk.metadata_bytes -= _record_size(okey, stored)

    def _toggle_segment(self, partition: int, segment: int, stored: StoredRecord) -> None:
        hashes = self._disk.segments.setdefault(partition, {})
        digest = record_digest(stored.bucket, stored.key, stored.record)
        combined = xor_digests(hashes.get(segment, bytes(len(digest))), digest)
        if any(combined):
            hashes[segment] = combined
        else:
            hashes.pop(segment, None)

    async def get_record(self, bucket: bytes, key: bytes) -> StoredRecord | None:
        check_name(bucket, key)
        await self._checkpoint()
        return self.lookup_record(bucket, key)

    def lookup_record(self, bucket: bytes, key: bytes) -> StoredRecord | None:
        check_name(bucket, key)
        self._check_running()
        partition = partition_of(bucket, key, self.ring_size)
        return self._disk.records.get(partition, {}).get(object_key(bucket, key))

    async def scan_partition(
        self, partition: int, *, batch: int = 256
    ) -> AsyncIterator[list[StoredRecord]]:
        check_partition(partition, self.ring_size)
        if batch < 1:
            raise ValueError(f"batch must be positive: {batch}")
        after: bytes | None = None
        while True:
            await self._checkpoint()
            order = self._disk.order.get(partition, [])
            start = 0 if after is None else bisect.bisect_right(order, after)
            page = order[start : start + batch]
            if not page:
                return
            records = self._disk.records[partition]
            yield [records[okey] for okey in page]
            if len(page) < batch:
                return
            after = page[-1]

    async def segment_hashes(self, partition: int) -> dict[int, bytes]:
        check_partition(partition, self.ring_size)
        await self._checkpoint()
        return dict(self._disk.segments.get(partition, {}))

    async def segment_records(self, partition: int, segment: int) -> list[StoredRecord]:
        check_partition(partition, self.ring_size)
        check_segment(segment)
        await self._checkpoint()
        records = self._disk.records.get(partition, {})
        okeys = sorted(self._disk.segment_keys.get((partition, segment), ()))
        return [records[okey] for okey in okeys]

    async def list_buckets(self) -> list[bytes]:
        await self._checkpoint()
        return sorted(self._disk.buckets)

    async def _checkpoint(self) -> None:
        """Every call yields to the scheduler, as the LMDB engine's thread hop does."""
        self._check_running()
        await trio.lowlevel.checkpoint()
        self._check_running()

    # -- chunks ----------------------------------------------------------------------------

    async def write_chunk(
        self,
        data: bytes | bytearray | memoryview | AsyncIterator[bytes],
        expected: bytes | None = None,
        *,
        hashed: bool = False,
    ) -> bytes:
        self._check_running()
        if hashed:
            check_hashed_write(data, expected)
        if expected is not None:
            check_chunk_hash(expected)
        if isinstance(data, bytes | bytearray | memoryview):
            content = bytes(data)
            if len(content) > self.chunk_size:
                raise ChunkTooLarge(len(content), self.chunk_size)
            digest = expected if hashed and expected is not None else chunk_hash(content)
            await self._checkpoint()
        elif hasattr(data, "__aiter__"):
            received = bytearray()
            hasher = chunk_hasher()
            async for piece in data:
                if not isinstance(piece, bytes | bytearray | memoryview):
                    raise TypeError(f"chunk pieces are bytes, not {type(piece).__name__}")
                received += piece
                if len(received) > self.chunk_size:
                    raise ChunkTooLarge(len(received), self.chunk_size)
                hasher.update(piece)
                await self._checkpoint()
            content = bytes(received)
            digest = hasher.digest()
        else:
            raise TypeError("write_chunk takes bytes or an async iterator of bytes")
        if expected is not None and digest != expected:
            raise ChunkCorrupt(expected, f"the bytes received hash to {digest.hex()}")
        await self._submit(lambda now: self._apply_register(now, digest, content))
        return digest

    def _apply_register(self, now: float, chunk: bytes, content: bytes) -> None:
        disk = self._disk
        row = disk.chunks.get(chunk) or _ChunkRow(len(content), 0, now, False)
        if not row.present:
            disk.chunk_count += 1
            disk.chunk_bytes += len(content)
            if chunk not in disk.chunks:
                disk.metadata_bytes += CHUNK_ROW_BYTES
        disk.chunks[chunk] = replace(row, last_change=now, present=True)
        disk.chunk_data[chunk] = content

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]:
        wanted = list(hashes)
        for chunk in wanted:
            check_chunk_hash(chunk)
        await self._checkpoint()
        chunks = self._disk.chunks
        return frozenset(
            chunk for chunk in wanted if chunk not in chunks or not chunks[chunk].present
        )

    async def read_chunk(self, chunk_hash: bytes) -> bytes:
        check_chunk_hash(chunk_hash)
        await self._checkpoint()
        return self._verified(chunk_hash)

    def _verified(self, chunk: bytes) -> bytes:
        disk = self._disk
        row = disk.chunks.get(chunk)
        if row is None or not row.present:
            raise ChunkMissing(chunk)
        data = disk.chunk_data[chunk]
        if chunk_hash(data) == chunk:
            return data
        del disk.chunk_data[chunk]
        disk.quarantine.append((chunk, data))
        disk.chunks[chunk] = replace(row, present=False)
        disk.chunk_count -= 1
        disk.chunk_bytes -= row.size
        self._corrupt_chunks_found += 1
        raise ChunkCorrupt(chunk, "quarantined")

    def corrupt_chunk(self, chunk: bytes) -> None:
        """Damage a stored chunk's bytes, as bit rot would (for tests and the nemesis)."""
        data = self._disk.chunk_data.get(chunk)
        if data is None:
            raise ChunkMissing(chunk)
        self._disk.chunk_data[chunk] = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\0"

    @property
    def quarantined(self) -> list[bytes]:
        """The hashes of the chunks quarantined so far, oldest first."""
        return [chunk for chunk, _ in self._disk.quarantine]

    async def sweep(self, grace_s: float) -> int:
        if grace_s < 0:
            raise ValueError(f"grace_s must not be negative: {grace_s}")
        await self._checkpoint()
        cutoff = float(self._wall_clock()) - grace_s
        return await self._submit(lambda now: self._apply_sweep(cutoff))

    def _apply_sweep(self, cutoff: float) -> int:
        disk = self._disk
        gone = [
            chunk
            for chunk, row in disk.chunks.items()
            if row.refcount == 0 and row.last_change <= cutoff
        ]
        for chunk in gone:
            row = disk.chunks.pop(chunk)
            disk.chunk_data.pop(chunk, None)
            disk.metadata_bytes -= CHUNK_ROW_BYTES
            if row.present:
                disk.chunk_count -= 1
                disk.chunk_bytes -= row.size
        return len(gone)

    async def scrub(self, bytes_per_s: float) -> list[bytes]:
        if not bytes_per_s > 0:
            raise ValueError(f"bytes_per_s must be positive: {bytes_per_s}")
        await self._checkpoint()
        bad: list[bytes] = []
        for chunk in sorted(self._disk.chunks):
            self._check_running()
            row = self._disk.chunks.get(chunk)
            if row is None or not row.present:
                continue
            try:
                self._verified(chunk)
            except ChunkCorrupt:
                bad.append(chunk)
            await trio.sleep(row.size / bytes_per_s)
        return bad

    # -- meta and statistics ---------------------------------------------------------------

    async def get_meta(self, name: str) -> bytes | None:
        stored_name = check_meta_name(name)
        await self._checkpoint()
        return self._disk.meta.get(stored_name)

    async def put_meta(self, name: str, value: bytes) -> None:
        stored_name = check_meta_name(name)
        if not isinstance(value, bytes):
            raise TypeError("a meta value is bytes")

        def apply(now: float) -> None:
            old = self._disk.meta.get(stored_name)
            if old is not None:
                self._disk.metadata_bytes -= len(stored_name) + len(old)
            self._disk.meta[stored_name] = value
            self._disk.metadata_bytes += len(stored_name) + len(value)

        await self._submit(apply)

    def statistics(self) -> EngineStats:
        disk = self._disk
        return EngineStats(
            objects=disk.objects,
            chunks=disk.chunk_count,
            chunk_bytes=disk.chunk_bytes,
            metadata_bytes=disk.metadata_bytes,
            commits=self._commits,
            operations_committed=self._operations_committed,
            corrupt_chunks_found=self._corrupt_chunks_found,
        )
