"""The storage contract every engine (LMDB, memory) fulfils, and what the rest of the node sees.

An engine keeps, per node:
- object records: opaque bytes (an encoded `core.versions` object) per (bucket, key), each
  with the list of chunk hashes it references;
- chunks: content-addressed byte strings (at most `chunk_size` each), verified on every read;
- per-partition anti-entropy segment hashes, changed in the same transaction as the records;
- chunk reference counts, changed in the same transaction as the records;
- a small `meta` map (node id, epoch, ring, bucket properties).

Engines are Trio services: `await nursery.start(engine.run)` before use; cancelling the
nursery (or `aclose`) stops them. Every write is acknowledged only once it is durable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ringstore.errors import KeyTooLong

# LMDB's default maximum key is 511 bytes; an object key is partition (2) + bucket length (1)
# + bucket + key, so these limits keep every key storable without hashing it.
MAX_BUCKET_BYTES = 100
MAX_KEY_BYTES = 400
AAE_SEGMENTS = 1024  # per partition: fine enough that one differing key costs a small exchange


def check_name(bucket: bytes, key: bytes) -> None:
    """Raise `KeyTooLong` (a clear 400) for a bucket or key we cannot store."""
    if not isinstance(bucket, bytes) or not isinstance(key, bytes):
        raise TypeError("bucket and key must be bytes")
    if not bucket:
        raise KeyTooLong("bucket name must not be empty")
    if len(bucket) > MAX_BUCKET_BYTES:
        raise KeyTooLong(f"bucket name is {len(bucket)} bytes; the limit is {MAX_BUCKET_BYTES}")
    if not key:
        raise KeyTooLong("key must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise KeyTooLong(f"key is {len(key)} bytes; the limit is {MAX_KEY_BYTES}")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One object record as an engine holds it."""

    bucket: bytes
    key: bytes
    record: bytes
    chunks: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """What an `update` function asks to store: the new record and the chunks it names."""

    record: bytes
    chunks: tuple[bytes, ...]


# An update function runs inside the engine's write transaction, atomically with respect to
# every other write of the same engine: it gets the current record (or None) and returns the
# record to store, `DELETE` to remove the record, or None to leave it as it is. It must be
# pure and quick: it runs on the writer thread with the transaction open.
DELETE = RecordWrite(b"", ())
UpdateFn = Callable[[StoredRecord | None], RecordWrite | None]


@dataclass(frozen=True, slots=True)
class EngineStats:
    objects: int
    chunks: int
    chunk_bytes: int
    metadata_bytes: int
    commits: int
    operations_committed: int
    corrupt_chunks_found: int


class StorageEngine(Protocol):
    ring_size: int
    inline_max: int
    chunk_size: int

    async def run(self, *, task_status=...) -> None:
        """Serve (group commit, background state) until cancelled."""

    async def update(self, bucket: bytes, key: bytes, fn: UpdateFn) -> StoredRecord | None:
        """Apply `fn` atomically and durably; return the record stored afterwards.

        Raises `MissingChunks` (naming them) and changes nothing if the new record names a
        chunk this engine does not hold.
        """

    async def put_record(
        self, bucket: bytes, key: bytes, record: bytes, chunks: Sequence[bytes]
    ) -> None: ...

    async def delete_record(self, bucket: bytes, key: bytes) -> None: ...

    async def get_record(self, bucket: bytes, key: bytes) -> StoredRecord | None: ...

    async def write_chunk(self, data: bytes | AsyncIterator[bytes], expected: bytes | None = None
                          ) -> bytes:
        """Store one chunk durably; return its hash. `ChunkCorrupt` if it is not `expected`."""

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]: ...

    async def read_chunk(self, chunk_hash: bytes) -> bytes:
        """The verified bytes. `ChunkCorrupt` (file quarantined) or `ChunkMissing`."""

    def scan_partition(
        self, partition: int, *, batch: int = 256
    ) -> AsyncIterator[list[StoredRecord]]:
        """A partition's records in key order, in batches (no transaction held between them)."""

    async def segment_hashes(self, partition: int) -> dict[int, bytes]: ...

    async def segment_records(self, partition: int, segment: int) -> list[StoredRecord]: ...

    async def list_buckets(self) -> list[bytes]: ...

    async def sweep(self, grace_s: float) -> int:
        """Delete chunks whose reference count stayed 0 for `grace_s`; return how many."""

    async def scrub(self, bytes_per_s: float) -> list[bytes]:
        """Re-verify every chunk at a bounded rate; return (and quarantine) the corrupt ones."""

    async def get_meta(self, name: str) -> bytes | None: ...

    async def put_meta(self, name: str, value: bytes) -> None: ...

    def statistics(self) -> EngineStats: ...
