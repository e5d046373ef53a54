"""The replica side of every request (Riak's vnode): what one node does with its own storage.

The coordinator reaches replicas through the `ReplicaClient` shape: `LocalReplica` calls this
node's storage directly, `RemoteReplica` (coord/remote.py) makes the same calls over the peer
protocol, served on the far side by `replica_handlers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from ringstore.core import versions
from ringstore.core.versions import Actor, Content, Object, VersionVector
from ringstore.storage.engine import RecordWrite, StorageEngine, StoredRecord

# How a replica's record read started without a task reports back: (record or None for no
# such key, None) or (None, the error).
OnRecord = Callable[[bytes | None, Exception | None], None]
# How a merge started without a task reports back: None once merged, else the error.
OnMerged = Callable[[Exception | None], None]
# A chunk sent along with a version, (hash, bytes), for a replica that may lack it: the hash
# computed (or checked) by the sender from these very bytes. A remote replica verifies it.
Chunk = tuple[bytes, bytes]
# One chunk (up to 16 MiB) to or from one replica, through its disk: a call's bound.
CHUNK_CALL_TIMEOUT_S = 30.0


class ReplicaClient(Protocol):
    node: str

    async def get(self, bucket: bytes, key: bytes) -> Object | None: ...

    async def get_record(self, bucket: bytes, key: bytes) -> bytes | None:
        """The replica's object record as stored (`Object.decode` makes it the object)."""

    def start_get_record(
        self, bucket: bytes, key: bytes, on_record: OnRecord, *, timeout_s: float
    ) -> bool:
        """`get_record` without a task waiting for it, if it can start at once: then, exactly
        once and possibly before this returns, `on_record(record, None)` or `on_record(None,
        error)`, from whichever task gets the answer (it must not block). False: nothing was
        started; use `get_record`."""

    async def coordinate_put(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        lww: bool,
        *,
        chunk: Chunk | None = None,
    ) -> Object:
        """Make the new version on this replica. `chunk`: the value's only chunk, stored with
        it (one commit) if missing: a value of one chunk travels with its version."""

    async def merge_put(self, bucket: bytes, key: bytes, obj: Object, lww: bool) -> Object: ...

    async def merge(
        self, bucket: bytes, key: bytes, obj: Object, lww: bool, *, chunk: Chunk | None = None
    ) -> None:
        """`merge_put` for a caller that does not need the merged object back; `chunk` as for
        `coordinate_put`."""

    def start_merge(
        self,
        bucket: bytes,
        key: bytes,
        obj: Object,
        lww: bool,
        on_merged: OnMerged,
        *,
        timeout_s: float,
        chunk: Chunk | None = None,
    ) -> bool:
        """`merge` without a task waiting for it, if it can start at once: then, exactly
        once, `on_merged(None)` or `on_merged(error)` (MissingChunks as `merge` raises it),
        from whichever task gets the answer (it must not block). False: nothing was
        started; use `merge`."""

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]: ...

    async def write_chunk(self, data: bytes, expected: bytes, *, hashed: bool = False) -> None:
        """Store a chunk on this replica. `hashed`: `expected` was computed from (or checked
        against) these very bytes by the caller, so a local replica does not hash them again;
        a remote one verifies what crossed the network whatever the caller says."""

    async def read_chunk(self, chunk_hash: bytes) -> bytes: ...

    async def list_keys(self, bucket: bytes, partitions: Sequence[int]) -> list[bytes]: ...

    async def list_buckets(self) -> list[bytes]: ...


KEY_EPOCH_LEASE = 1 << 20  # key epochs reserved per durable write of the high-water mark


class KeyEpochs:
    """A node-wide counter that never repeats a value, across restarts and crashes (KV679).

    Values are leased in blocks: the block's end is stored durably before any value of it
    is handed out, so a crash wastes at most the rest of a block and never reuses one.
    """

    def __init__(self, storage: StorageEngine) -> None:
        self._storage = storage
        self._next = 0
        self._leased_until = 0
        self._lock = trio.Lock()

    async def next(self) -> int:
        async with self._lock:
            if self._next >= self._leased_until:
                raw = await self._storage.get_meta("key_epoch_lease")
                start = int.from_bytes(raw, "big") if raw else 0
                end = start + KEY_EPOCH_LEASE
                await self._storage.put_meta("key_epoch_lease", end.to_bytes(8, "big"))
                self._next, self._leased_until = start, end
            value = self._next
            self._next += 1
            return value


def _decode(stored: StoredRecord | None) -> Object | None:
    return None if stored is None else Object.decode(stored.record)


def _write(obj: Object | None) -> RecordWrite | None:
    if obj is None:
        return None
    return RecordWrite(obj.encode(), tuple(sorted(obj.chunk_hashes())))


class LocalReplica:
    """This node's replica operations over its storage engine."""

    def __init__(self, node: str, actor: Actor, storage: StorageEngine) -> None:
        self.node = node
        self.actor = actor
        self.storage = storage
        self._key_epochs = KeyEpochs(storage)

    async def get(self, bucket: bytes, key: bytes) -> Object | None:
        return _decode(await self.storage.get_record(bucket, key))

    async def get_record(self, bucket: bytes, key: bytes) -> bytes | None:
        """The stored object record as it is (what a peer asking for the object is sent)."""
        stored = await self.storage.get_record(bucket, key)
        return None if stored is None else stored.record

    def lookup_record(self, bucket: bytes, key: bytes) -> bytes | None:
        """`get_record` as a plain call that never yields (see `StorageEngine.lookup_record`)."""
        stored = self.storage.lookup_record(bucket, key)
        return None if stored is None else stored.record

    def start_get_record(
        self, bucket: bytes, key: bytes, on_record: OnRecord, *, timeout_s: float
    ) -> bool:
        """A local read needs no task: answered before this returns."""
        try:
            record = self.lookup_record(bucket, key)
        except Exception as exc:  # the replica's failure, told like a remote one's
            on_record(None, exc)
        else:
            on_record(record, None)
        return True

    async def coordinate_put(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        lww: bool,
        *,
        chunk: Chunk | None = None,
    ) -> Object:
        """Make the new version here (a new dot of this node's actor) and store it."""
        obj, _ = await self.coordinate_put_record(
            bucket, key, content, context, lww, chunk=chunk, hashed=True
        )
        return obj

    async def coordinate_put_record(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        lww: bool,
        *,
        chunk: Chunk | None = None,
        hashed: bool = False,
    ) -> tuple[Object, bytes]:
        """`coordinate_put`, with the stored record's bytes too (what a peer is sent).

        `hashed`: as for `StorageEngine.update` (False for a chunk that came from a peer)."""
        key_epoch = await self._key_epochs.next()
        made: list[Object | None] = [None]

        def apply(stored: StoredRecord | None) -> RecordWrite | None:
            made[0] = versions.coordinate(
                _decode(stored), content, context, self.actor, lww=lww, key_epoch=key_epoch
            )
            return _write(made[0])

        stored = await self.storage.update(
            bucket, key, apply, chunks=None if chunk is None else dict([chunk]), hashed=hashed
        )
        # The object just made is what was stored: no need to decode the record again.
        assert stored is not None and made[0] is not None
        return made[0], stored.record

    async def merge_put(self, bucket: bytes, key: bytes, obj: Object, lww: bool) -> Object:
        """Merge another replica's version into ours (replication, read repair, handoff)."""
        merged, _ = await self.merge_put_record(bucket, key, obj, lww)
        return merged

    async def merge(
        self, bucket: bytes, key: bytes, obj: Object, lww: bool, *, chunk: Chunk | None = None
    ) -> None:
        await self.merge_put_record(bucket, key, obj, lww, chunk=chunk, hashed=True)

    def start_merge(
        self,
        bucket: bytes,
        key: bytes,
        obj: Object,
        lww: bool,
        on_merged: OnMerged,
        *,
        timeout_s: float,
        chunk: Chunk | None = None,
    ) -> bool:
        """A local merge waits for its commit: it needs a task (`merge`)."""
        return False

    async def merge_put_record(
        self,
        bucket: bytes,
        key: bytes,
        obj: Object,
        lww: bool,
        *,
        chunk: Chunk | None = None,
        hashed: bool = False,
    ) -> tuple[Object, bytes]:
        """`merge_put`, with the stored record's bytes too (what a peer is sent); `chunk` and
        `hashed` as for `coordinate_put_record`."""
        result: list[Object | None] = [None]

        def apply(stored: StoredRecord | None) -> RecordWrite | None:
            local = _decode(stored)
            merged = versions.merge(local, obj, lww=lww)
            if merged is None or (local is not None and merged == local):
                result[0] = local
                return None
            result[0] = merged
            return _write(merged)

        stored = await self.storage.update(
            bucket, key, apply, chunks=None if chunk is None else dict([chunk]), hashed=hashed
        )
        # What apply kept or made is what is stored: no need to decode the record again.
        assert stored is not None and result[0] is not None
        return result[0], stored.record

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]:
        return await self.storage.missing_chunks(hashes)

    async def write_chunk(self, data: bytes, expected: bytes, *, hashed: bool = False) -> None:
        await self.storage.write_chunk(data, expected, hashed=hashed)

    async def read_chunk(self, chunk_hash: bytes) -> bytes:
        return await self.storage.read_chunk(chunk_hash)

    async def list_keys(self, bucket: bytes, partitions: Sequence[int]) -> list[bytes]:
        keys: list[bytes] = []
        for partition in partitions:
            async for batch in self.storage.scan_partition(partition):
                keys.extend(
                    record.key
                    for record in batch
                    if record.bucket == bucket and not Object.decode(record.record).is_tombstone()
                )
        return keys

    async def list_buckets(self) -> list[bytes]:
        return await self.storage.list_buckets()
