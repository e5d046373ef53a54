"""Crash-test child: writes objects into an LmdbStore until killed, reporting every step.

Run as `python tests/storage/crash_child.py DIRECTORY SEED`; tests/storage/test_crash.py
kills it with SIGKILL at a random moment. Each stdout line is one os.write (atomic on a pipe):

    begin <op> <bucket hex> <key hex> <state>     written before the operation starts
    ack <op> <bucket hex> <key hex> <state>       written once the engine acknowledged it

where op is `put` or `delete` and state is the BLAKE3 hex digest of the value (or `deleted`).
Every key belongs to one writer task, which runs one operation at a time, so per key the lines
come in operation order with at most one operation unacknowledged. Several writers run at once,
so group commit batches their operations.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import trio

from ringstore.core.hashing import chunk_hash
from ringstore.storage.lmdb_store import LmdbStore

# Small sizes: multi-chunk values cost a few KiB, so a round writes many of them.
RING_SIZE = 16
INLINE_MAX = 64
CHUNK_SIZE = 1024
WRITERS = 8  # concurrent writers: enough that batches hold several operations
KEYS_PER_WRITER = 4
BUCKETS = (b"crash", b"b\x00\xff")  # arbitrary bytes, NUL and non-UTF-8 included
DELETE_SHARE = 0.2
SHARED_SHARE = 0.25  # puts of a value from SHARED_VALUES: chunks named by several records
OFFER_SHARE = 0.5  # chunked puts that first ask which chunks are missing (and skip the rest)
STREAM_PIECE_BYTES = 100  # chunks sent as a stream arrive in pieces of this size
SHARED_SEED = 7  # fixed: every round (and process) shares the same pool of values

INLINE_TAG = b"I"  # a record is the tag then the value (inline) or the tag alone (chunked)
CHUNKED_TAG = b"C"
DELETED = "deleted"


def writer_keys(writer: int) -> list[tuple[bytes, bytes]]:
    """The (bucket, key) pairs that only writer `writer` touches."""
    return [
        (BUCKETS[n % len(BUCKETS)], b"w%d\x00k%d\xfe" % (writer, n)) for n in range(KEYS_PER_WRITER)
    ]


def all_keys() -> list[tuple[bytes, bytes]]:
    return [pair for writer in range(WRITERS) for pair in writer_keys(writer)]


def value_sizes() -> list[int]:
    """Sizes on each side of every boundary, and several chunks."""
    return [
        0,
        1,
        INLINE_MAX,
        INLINE_MAX + 1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 17,
        2 * CHUNK_SIZE,
    ]


def shared_values() -> list[bytes]:
    rng = random.Random(SHARED_SEED)
    return [rng.randbytes(size) for size in (INLINE_MAX, CHUNK_SIZE + 1, 4 * CHUNK_SIZE)]


def state_of(value: bytes | None) -> str:
    return DELETED if value is None else blake3.blake3(value).hexdigest()


async def load_value(store: LmdbStore, bucket: bytes, key: bytes) -> bytes | None:
    """The value a record holds (its chunks read and verified), or None if there is none."""
    stored = await store.get_record(bucket, key)
    if stored is None:
        return None
    if stored.record.startswith(INLINE_TAG):
        return stored.record[len(INLINE_TAG) :]
    assert stored.record == CHUNKED_TAG, stored.record
    return b"".join([await store.read_chunk(chunk) for chunk in stored.chunks])


def report(phase: str, op: str, bucket: bytes, key: bytes, state: str) -> None:
    line = f"{phase} {op} {bucket.hex()} {key.hex()} {state}\n".encode()
    written = os.write(sys.stdout.fileno(), line)
    assert written == len(line)  # one write of less than PIPE_BUF bytes is atomic


async def pieces_of(piece: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(piece), STREAM_PIECE_BYTES):
        yield piece[start : start + STREAM_PIECE_BYTES]
        await trio.lowlevel.checkpoint()


async def put_value(store: LmdbStore, rng: random.Random, bucket: bytes, key: bytes, value: bytes):
    if len(value) <= INLINE_MAX:
        await store.put_record(bucket, key, INLINE_TAG + value, [])
        return
    pieces = [value[start : start + CHUNK_SIZE] for start in range(0, len(value), CHUNK_SIZE)]
    hashes = [chunk_hash(piece) for piece in pieces]
    # Half the time as a replica receives an object: only the chunks it says it lacks.
    wanted = await store.missing_chunks(hashes) if rng.random() < OFFER_SHARE else set(hashes)
    for piece, digest in zip(pieces, hashes, strict=True):
        if digest in wanted:
            data = pieces_of(piece) if rng.random() < 0.5 else piece
            await store.write_chunk(data, expected=digest)
    await store.put_record(bucket, key, CHUNKED_TAG, hashes)


async def writer(store: LmdbStore, rng: random.Random, keys: list[tuple[bytes, bytes]]) -> None:
    sizes = value_sizes()
    shared = shared_values()
    while True:
        bucket, key = rng.choice(keys)
        if rng.random() < DELETE_SHARE:
            report("begin", "delete", bucket, key, DELETED)
            await store.delete_record(bucket, key)
            report("ack", "delete", bucket, key, DELETED)
            continue
        if rng.random() < SHARED_SHARE:
            value = rng.choice(shared)
        else:
            value = rng.randbytes(rng.choice(sizes))
        state = state_of(value)
        report("begin", "put", bucket, key, state)
        await put_value(store, rng, bucket, key, value)
        report("ack", "put", bucket, key, state)


async def main(directory: Path, seed: int) -> None:
    store = LmdbStore(directory, ring_size=RING_SIZE, inline_max=INLINE_MAX, chunk_size=CHUNK_SIZE)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for n in range(WRITERS):
            nursery.start_soon(writer, store, random.Random(f"{seed}/{n}"), writer_keys(n))


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
