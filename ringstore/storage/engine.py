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

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import blake3

from ringstore.core.hashing import RING_TOP, is_chunk_hash, key_position
from ringstore.errors import BadRequest, ChunkTooLarge, KeyTooLong

# LMDB's default maximum key is 511 bytes; an object key is partition (2) + bucket length (1)
# + bucket + key, so these limits keep every key storable without hashing it.
MAX_BUCKET_BYTES = 100
MAX_KEY_BYTES = 400
AAE_SEGMENTS = 1024  # per partition: fine enough that one differing key costs a small exchange
SEGMENT_HASH_BYTES = 32  # BLAKE3-256, XOR-combined
MAX_RING_SIZE = 2**16  # partitions are stored as 2 bytes
MAX_META_NAME_BYTES = 256  # ours: node id, epoch, ring, "props:" + a bucket in hex (<= 206)

# Defaults shared by both engines (the node passes its configuration instead).
DEFAULT_RING_SIZE = 64
DEFAULT_INLINE_MAX_BYTES = 16 * 1024  # one LMDB read serves small values
DEFAULT_CHUNK_SIZE_BYTES = 1 << 20  # bounds the memory one transfer holds


def check_hashed_write(data: object, expected: bytes | None) -> None:
    """What `write_chunk(..., hashed=True)` requires: the whole chunk as immutable `bytes` (no
    one can change them after they were hashed) and the hash they were found to have."""
    if expected is None or type(data) is not bytes:
        raise ValueError("write_chunk(hashed=True) takes the chunk as bytes and its expected hash")


def check_update(
    bucket: bytes, key: bytes, fn: object, chunks: object, hashed: bool, chunk_size: int
) -> None:
    """What `update` checks before anything changes."""
    check_name(bucket, key)
    if not plain_callable(fn):
        raise TypeError("update needs a plain (not async) function of the current record")
    if chunks:
        check_chunks_to_store(chunks, hashed, chunk_size)


def check_chunks_to_store(chunks: object, hashed: bool, chunk_size: int) -> None:
    """What `update(..., chunks=, hashed=)` takes: hash -> that chunk's whole bytes, each within
    `chunk_size` (as bytes when `hashed`: see `check_hashed_write`). Checked before any write."""
    if not isinstance(chunks, Mapping):
        raise TypeError("chunks is a mapping of chunk hash to the chunk's bytes")
    for digest, data in chunks.items():
        check_chunk_hash(digest)
        if hashed:
            check_hashed_write(data, digest)
        elif not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"a chunk is bytes, not {type(data).__name__}")
        size = memoryview(data).nbytes
        if size > chunk_size:
            raise ChunkTooLarge(size, chunk_size)


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


def check_chunk_hash(value: object) -> None:
    """Raise `BadRequest` for anything that cannot name a chunk (32 bytes)."""
    if not is_chunk_hash(value):
        raise BadRequest(f"not a chunk hash (32 bytes): {value!r:.80}")


def check_partition(partition: int, ring_size: int) -> None:
    if not isinstance(partition, int) or not 0 <= partition < ring_size:
        raise BadRequest(f"partition {partition!r} is outside the ring of {ring_size}")


def check_segment(segment: int) -> None:
    if not isinstance(segment, int) or not 0 <= segment < AAE_SEGMENTS:
        raise BadRequest(f"segment {segment!r} is outside 0..{AAE_SEGMENTS - 1}")


def check_meta_name(name: str) -> bytes:
    """The stored form of a meta name; `BadRequest` for an empty or over-long one."""
    if not isinstance(name, str):
        raise TypeError("a meta name is a str")
    encoded = name.encode("utf-8")
    if not encoded or len(encoded) > MAX_META_NAME_BYTES:
        raise BadRequest(f"meta name must be 1..{MAX_META_NAME_BYTES} UTF-8 bytes: {name!r:.80}")
    return encoded


def check_engine_params(ring_size: int, inline_max: int, chunk_size: int) -> None:
    """Raise `ValueError` for engine parameters no engine can honour."""
    if not 1 <= ring_size <= MAX_RING_SIZE or ring_size & (ring_size - 1):
        raise ValueError(f"ring_size must be a power of two up to {MAX_RING_SIZE}: {ring_size}")
    if inline_max < 0:
        raise ValueError(f"inline_max must not be negative: {inline_max}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive: {chunk_size}")


# Every replica must compute the functions below identically: anti-entropy compares
# segment hashes across nodes, and scan order is part of the contract.


def object_key(bucket: bytes, key: bytes) -> bytes:
    """1-byte bucket length + bucket + key: `scan_partition` yields records in this byte order."""
    return len(bucket).to_bytes(1, "big") + bucket + key


def segment_of(bucket: bytes, key: bytes) -> int:
    """The anti-entropy segment (within its partition) that a key belongs to."""
    return key_position(bucket, key) % AAE_SEGMENTS


_ASYNC_CODE_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def plain_callable(fn: object) -> bool:
    """Whether `update` can run `fn` inside a commit: callable, and not async (it cannot await).

    A function's code flags answer at once; `inspect` is for anything else (partials, ...).
    """
    code = getattr(fn, "__code__", None)
    if code is not None:
        return not code.co_flags & _ASYNC_CODE_FLAGS
    return callable(fn) and not inspect.iscoroutinefunction(fn)


def placement(bucket: bytes, key: bytes, ring_size: int) -> tuple[int, int]:
    """(partition_of, segment_of) of a key, from one hash of its name."""
    position = key_position(bucket, key)
    return position * ring_size // RING_TOP, position % AAE_SEGMENTS


def record_digest(bucket: bytes, key: bytes, record: bytes) -> bytes:
    """One record's share of its segment hash (the segment hash XORs these).

    Both names are length-prefixed so that no two (bucket, key, record) triples collide by
    moving bytes across a boundary. XOR lets an engine replace a record's share in O(1).
    """
    hasher = blake3.blake3(len(bucket).to_bytes(1, "big"))
    hasher.update(bucket)
    hasher.update(len(key).to_bytes(2, "big"))
    hasher.update(key)
    hasher.update(record)
    return hasher.digest()


def xor_digests(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(
        SEGMENT_HASH_BYTES, "big"
    )


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
# pure and quick: it runs on the writer thread with the transaction open. `DELETE` is compared
# by identity, so an equal RecordWrite(b"", ()) of the caller's own stores an empty record.
DELETE = RecordWrite(b"", ())
UpdateFn = Callable[[StoredRecord | None], RecordWrite | None]


def check_record_write(wanted: object) -> RecordWrite:
    """Validate what an update function returned (or put_record was given), before any change."""
    if not isinstance(wanted, RecordWrite):
        raise TypeError(f"an update function returns a RecordWrite, DELETE or None: {wanted!r:.80}")
    if not isinstance(wanted.record, bytes):
        raise TypeError("a record is bytes")
    for chunk in wanted.chunks:
        check_chunk_hash(chunk)
    return wanted


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

    async def aclose(self) -> None:
        """Stop `run` (after the batch being committed) and wait until the engine is closed."""

    async def update(
        self,
        bucket: bytes,
        key: bytes,
        fn: UpdateFn,
        *,
        chunks: Mapping[bytes, bytes] | None = None,
        hashed: bool = False,
    ) -> StoredRecord | None:
        """Apply `fn` atomically and durably; return the record stored afterwards.

        Raises `MissingChunks` (naming them) and changes nothing if the new record names a
        chunk this engine does not hold.

        `chunks` (hash -> bytes, `check_chunks_to_store`) are stored first, those not held
        already, as `write_chunk(data, hash, hashed=hashed)` would; their rows commit with
        the update or before it, never after. One call where a replica sent a value's chunk
        with its version would make two commits. A chunk that fails (`ChunkCorrupt`) is not
        stored and the update is not applied; others may have been stored.
        """

    async def put_record(
        self, bucket: bytes, key: bytes, record: bytes, chunks: Sequence[bytes]
    ) -> None: ...

    async def delete_record(self, bucket: bytes, key: bytes) -> None: ...

    async def get_record(self, bucket: bytes, key: bytes) -> StoredRecord | None: ...

    def lookup_record(self, bucket: bytes, key: bytes) -> StoredRecord | None:
        """`get_record` as a plain call that never yields: a point read on the event loop,
        for answers given without a task (a peer's GET)."""

    async def write_chunk(
        self,
        data: bytes | AsyncIterator[bytes],
        expected: bytes | None = None,
        *,
        hashed: bool = False,
    ) -> bytes:
        """Store one chunk durably; return its hash. `ChunkCorrupt` if it is not `expected`.

        `hashed`: `expected` is the hash of these very `bytes`, computed or verified by the
        caller, so they are stored without being hashed again (see `check_hashed_write`)."""

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
