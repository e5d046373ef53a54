"""The LMDB engine's metadata: its databases, their keys and values, and the transaction
functions that read and change them (no Trio: `lmdb_store` decides where each one runs).

Layout
======
One LMDB environment at `<path>/meta.lmdb` (sync=True: a commit returns once durable).
Integers are big-endian. `okey` = engine.object_key(bucket, key) = len(bucket) (1) + bucket
+ key; `part` = core.hashing.partition_of(bucket, key, ring_size) (2); `seg` =
engine.segment_of(bucket, key) (2).

  objects   part + okey                 -> CBOR [record: bytes, chunks: [hash (32), ...]]
  chunks    hash (32, BLAKE3-256)       -> CBOR [size: int, refcount: int,
                                                 last_change: float (wall-clock s), present: bool]
            refcount counts the records naming the chunk; last_change is when it last changed
            or the chunk was last written (the sweeper's grace runs from it); present is false
            once the file was quarantined (the row stays while records still name it).
  aae       part + seg                  -> 32 bytes: XOR of engine.record_digest over the
                                           segment's records (no row for an empty segment)
  aae_keys  part + seg + okey           -> b"" (which keys a segment holds, for
                                           segment_records without a partition scan)
  meta      UTF-8 name                  -> value bytes (get_meta / put_meta)
            b"\xffformat"               -> CBOR {"version": 1, "ring_size": int}; 0xff never
                                           starts UTF-8, so no meta name collides with it
            b"\xffclean"                -> b"": present only while the engine is closed and
                                           every chunk file has its row (lmdb_store's Recovery)

Writes go through a `Writer`: one operation's savepoint inside its batch's transaction
(`commit_batch`), which also counts what the operation changed for the engine's statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
import lmdb

from ringstore.core.hashing import partition_of
from ringstore.errors import LocalError, MissingChunks, StorageFull
from ringstore.storage.engine import (
    DELETE,
    SEGMENT_HASH_BYTES,
    RecordWrite,
    StoredRecord,
    UpdateFn,
    check_record_write,
    object_key,
    placement,
    record_digest,
    xor_digests,
)
from ringstore.storage.group_commit import WriteOp

MAX_DBS = 8  # five named databases in use, room for more
DB_NAMES = (b"objects", b"chunks", b"aae", b"aae_keys", b"meta")
FORMAT_VERSION = 1
FORMAT_KEY = b"\xffformat"
CLEAN_KEY = b"\xffclean"
ADOPT_BATCH_ROWS = 4096  # rows per transaction when adopting files: bounds its dirty pages
ZERO_SEGMENT = bytes(SEGMENT_HASH_BYTES)


@dataclass(frozen=True, slots=True)
class ChunkRow:
    size: int
    refcount: int
    last_change: float
    present: bool

    def encode(self) -> bytes:
        return cbor2.dumps([self.size, self.refcount, self.last_change, self.present])

    @classmethod
    def decode(cls, raw: bytes) -> ChunkRow:
        size, refcount, last_change, present = cbor2.loads(raw)
        return cls(size, refcount, last_change, present)


def _prefix(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


def _segment_key(partition: int, segment: int) -> bytes:
    return _prefix(partition) + segment.to_bytes(2, "big")


def _encode_record(write: RecordWrite) -> bytes:
    return cbor2.dumps([write.record, list(write.chunks)])


def _decode_record(okey: bytes, raw: bytes) -> StoredRecord:
    bucket_end = 1 + okey[0]
    record, chunks = cbor2.loads(raw)
    return StoredRecord(okey[1:bucket_end], okey[bucket_end:], record, tuple(chunks))


def _prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _prefixed(txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for item_key, value in cursor:
        if not item_key.startswith(prefix):
            return
        yield item_key, value


def commit_error(exc: BaseException) -> LocalError:
    """A fresh error per waiting operation (one exception object must not be raised twice)."""
    if isinstance(exc, lmdb.MapFullError):
        error: LocalError = StorageFull(f"the metadata store is full (map_size): {exc}")
    else:
        error = LocalError(f"metadata commit failed: {exc!r}")
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class Tables:
    """The open databases of one environment, and the reads of the Layout above."""

    objects: Any
    chunks: Any
    aae: Any
    aae_keys: Any
    meta: Any
    ring_size: int

    @classmethod
    def open(cls, env: lmdb.Environment, ring_size: int) -> Tables:
        return cls(*(env.open_db(name) for name in DB_NAMES), ring_size=ring_size)

    def check_format(self, txn: lmdb.Transaction, path: Path) -> None:
        """Stamp a new environment with the format and ring size; refuse a different one."""
        raw = txn.get(FORMAT_KEY, db=self.meta)
        if raw is None:
            fmt = {"version": FORMAT_VERSION, "ring_size": self.ring_size}
            txn.put(FORMAT_KEY, cbor2.dumps(fmt), db=self.meta)
            return
        fmt = cbor2.loads(raw)
        if fmt.get("version") != FORMAT_VERSION:
            raise LocalError(f"{path}: storage format {fmt.get('version')!r} is unknown")
        if fmt.get("ring_size") != self.ring_size:
            raise LocalError(
                f"{path} holds a ring of {fmt.get('ring_size')} partitions; "
                f"this engine was given ring_size={self.ring_size}"
            )

    def adopt_files(
        self, env: lmdb.Environment, files: Iterable[tuple[bytes, int]], now: float
    ) -> int:
        """Give every chunk file (hash, size) without a present row one; return how many."""
        adopted = 0
        txn = env.begin(write=True)
        try:
            for chunk, size in files:
                raw = txn.get(chunk, db=self.chunks)
                row = ChunkRow(size, 0, now, False) if raw is None else ChunkRow.decode(raw)
                if row.present:
                    continue
                txn.put(
                    chunk,
                    replace(row, size=size, last_change=now, present=True).encode(),
                    db=self.chunks,
                )
                adopted += 1
                if adopted % ADOPT_BATCH_ROWS == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        return adopted

    def chunk_totals(self, txn: lmdb.Transaction) -> tuple[int, int, int]:
        """Objects, present chunks and their bytes: the statistics an engine opens with."""
        chunks = chunk_bytes = 0
        for _, raw in txn.cursor(db=self.chunks):
            row = ChunkRow.decode(raw)
            if row.present:
                chunks += 1
                chunk_bytes += row.size
        return txn.stat(self.objects)["entries"], chunks, chunk_bytes

    def record(self, txn: lmdb.Transaction, bucket: bytes, key: bytes) -> StoredRecord | None:
        okey = object_key(bucket, key)
        full_key = _prefix(partition_of(bucket, key, self.ring_size)) + okey
        raw = txn.get(full_key, db=self.objects)
        return None if raw is None else _decode_record(okey, raw)

    def scan_page(
        self, txn: lmdb.Transaction, partition: int, after: bytes | None, limit: int
    ) -> tuple[list[StoredRecord], bytes | None]:
        """Up to `limit` records of `partition` in key order, from just past the key `after`
        (None: from the first); with the key to pass as `after` for the next page."""
        prefix = _prefix(partition)
        cursor = txn.cursor(db=self.objects)
        page: list[StoredRecord] = []
        last = None
        found = cursor.set_range(prefix if after is None else after + b"\0")
        while found and len(page) < limit:
            full_key = cursor.key()
            if not full_key.startswith(prefix):
                break
            page.append(_decode_record(full_key[2:], cursor.value()))
            last = full_key
            found = cursor.next()
        return page, last

    def segment_hashes(self, txn: lmdb.Transaction, partition: int) -> dict[int, bytes]:
        hashes: dict[int, bytes] = {}
        for segment_key, digest in _prefixed(txn, self.aae, _prefix(partition)):
            hashes[int.from_bytes(segment_key[2:4], "big")] = digest
        return hashes

    def segment_records(
        self, txn: lmdb.Transaction, partition: int, segment: int
    ) -> list[StoredRecord]:
        prefix = _prefix(partition)
        records: list[StoredRecord] = []
        for index_key, _ in _prefixed(txn, self.aae_keys, _segment_key(partition, segment)):
            okey = index_key[4:]
            records.append(_decode_record(okey, txn.get(prefix + okey, db=self.objects)))
        return records

    def list_buckets(self, txn: lmdb.Transaction) -> list[bytes]:
        """Every bucket, visiting one key per (partition, bucket) by skipping past the rest."""
        buckets: set[bytes] = set()
        cursor = txn.cursor(db=self.objects)
        found = cursor.first()
        while found:
            full_key = cursor.key()
            bucket_end = 3 + full_key[2]
            buckets.add(full_key[3:bucket_end])
            successor = _prefix_successor(full_key[:bucket_end])
            found = successor is not None and cursor.set_range(successor)
        return sorted(buckets)

    def chunk_row(self, txn: lmdb.Transaction, chunk: bytes) -> ChunkRow | None:
        raw = txn.get(chunk, db=self.chunks)
        return None if raw is None else ChunkRow.decode(raw)

    def missing(self, txn: lmdb.Transaction, hashes: list[bytes]) -> frozenset[bytes]:
        missing = set()
        for chunk in hashes:
            row = self.chunk_row(txn, chunk)
            if row is None or not row.present:
                missing.add(chunk)
        return frozenset(missing)

    def chunk_page(
        self, txn: lmdb.Transaction, start: bytes, limit: int
    ) -> list[tuple[bytes, ChunkRow]]:
        """Up to `limit` chunk rows from the hash `start` on, in hash order."""
        cursor = txn.cursor(db=self.chunks)
        page: list[tuple[bytes, ChunkRow]] = []
        found = cursor.set_range(start)
        while found and len(page) < limit:
            page.append((cursor.key(), ChunkRow.decode(cursor.value())))
            found = cursor.next()
        return page

    def meta_value(self, txn: lmdb.Transaction, stored_name: bytes) -> bytes | None:
        return txn.get(stored_name, db=self.meta)


class Writer:
    """One operation's access to its batch's transaction, through its own savepoint.

    It also counts what the operation changed, which the engine's statistics add in once the
    batch is committed.
    """

    __slots__ = ("txn", "tables", "now", "objects", "chunks", "chunk_bytes")

    def __init__(self, txn: lmdb.Transaction, tables: Tables, now: float) -> None:
        self.txn = txn
        self.tables = tables
        self.now = now
        self.objects = 0
        self.chunks = 0
        self.chunk_bytes = 0

    def chunk_row(self, chunk: bytes) -> ChunkRow | None:
        return self.tables.chunk_row(self.txn, chunk)

    def put_chunk_row(self, chunk: bytes, row: ChunkRow) -> None:
        self.txn.put(chunk, row.encode(), db=self.tables.chunks)

    def toggle_segment(self, segment_key: bytes, digest: bytes) -> None:
        """XOR one record's digest into (or, the same call again, out of) its segment hash."""
        aae = self.tables.aae
        old = self.txn.get(segment_key, db=aae) or ZERO_SEGMENT
        new = xor_digests(old, digest)
        if new == ZERO_SEGMENT:
            self.txn.delete(segment_key, db=aae)
        else:
            self.txn.put(segment_key, new, db=aae)

    def update(self, bucket: bytes, key: bytes, fn: UpdateFn) -> StoredRecord | None:
        """Apply `fn` to the current record (the engine protocol's `update`)."""
        tables, txn = self.tables, self.txn
        partition, segment = placement(bucket, key, tables.ring_size)
        okey = object_key(bucket, key)
        full_key = _prefix(partition) + okey
        raw = txn.get(full_key, db=tables.objects)
        current = None if raw is None else _decode_record(okey, raw)
        wanted = fn(current)
        if wanted is None:
            return current
        segment_key = _segment_key(partition, segment)
        if wanted is DELETE:
            if current is not None:
                self.release(set(current.chunks))
                txn.delete(full_key, db=tables.objects)
                txn.delete(segment_key + okey, db=tables.aae_keys)
                self.toggle_segment(segment_key, record_digest(bucket, key, current.record))
                self.objects -= 1
            return None
        wanted = check_record_write(wanted)
        old_refs = set(current.chunks) if current is not None else set()
        new_refs = set(wanted.chunks)
        rows = {chunk: self.chunk_row(chunk) for chunk in new_refs}
        missing = {chunk for chunk, row in rows.items() if row is None or not row.present}
        if missing:
            raise MissingChunks(missing)
        for chunk in new_refs - old_refs:
            row = rows[chunk]
            assert row is not None
            self.put_chunk_row(chunk, replace(row, refcount=row.refcount + 1, last_change=self.now))
        self.release(old_refs - new_refs)
        txn.put(full_key, _encode_record(wanted), db=tables.objects)
        if current is None:
            txn.put(segment_key + okey, b"", db=tables.aae_keys)
            self.objects += 1
        else:
            self.toggle_segment(segment_key, record_digest(bucket, key, current.record))
        self.toggle_segment(segment_key, record_digest(bucket, key, wanted.record))
        return StoredRecord(bucket, key, wanted.record, tuple(wanted.chunks))

    def release(self, chunks: set[bytes]) -> None:
        for chunk in chunks:
            row = self.chunk_row(chunk)
            # A referenced chunk always has a row (rows are deleted only at refcount 0).
            if row is not None:
                self.put_chunk_row(
                    chunk, replace(row, refcount=row.refcount - 1, last_change=self.now)
                )

    def register(self, chunk: bytes, size: int) -> None:
        """The chunk's file is in place: its row says present."""
        row = self.chunk_row(chunk)
        if row is None:
            row = ChunkRow(size, 0, self.now, False)
        if not row.present:
            self.chunks += 1
            self.chunk_bytes += size
        # Writing a chunk again restarts its grace: an upload may be about to name it.
        self.put_chunk_row(chunk, replace(row, size=size, last_change=self.now, present=True))

    def mark_missing(self, chunk: bytes) -> None:
        row = self.chunk_row(chunk)
        if row is not None and row.present:
            self.chunks -= 1
            self.chunk_bytes -= row.size
            self.put_chunk_row(chunk, replace(row, present=False))

    def sweep(self, chunks: list[bytes], cutoff: float) -> list[bytes]:
        """Delete the rows of those `chunks` still unreferenced since `cutoff`; return them."""
        gone = []
        for chunk in chunks:
            row = self.chunk_row(chunk)
            # Checked again: a record may have named it, or an upload rewritten it, meanwhile.
            if row is None or row.refcount or row.last_change > cutoff:
                continue
            self.txn.delete(chunk, db=self.tables.chunks)
            if row.present:
                self.chunks -= 1
                self.chunk_bytes -= row.size
            gone.append(chunk)
        return gone

    def put_meta(self, stored_name: bytes, value: bytes) -> None:
        self.txn.put(stored_name, value, db=self.tables.meta)


def commit_batch(env: lmdb.Environment, tables: Tables, batch: list[WriteOp], now: float) -> None:
    """Apply every operation (`op.apply(writer)`) under its own savepoint, then commit them
    all at once: an operation that raises is rolled back alone, with its error in its op."""
    txn = env.begin(write=True)
    try:
        for op in batch:
            savepoint = env.begin(write=True, parent=txn)
            writer = Writer(savepoint, tables, now)
            try:
                op.result = op.apply(writer)
                savepoint.commit()
            except Exception as exc:
                savepoint.abort()
                op.result = None
                op.error = commit_error(exc) if isinstance(exc, lmdb.MapFullError) else exc
            else:
                op.changes = writer
        txn.commit()
    except BaseException:
        txn.abort()
        raise
