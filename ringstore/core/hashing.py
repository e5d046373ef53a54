"""Key placement on the ring and chunk digests."""

from __future__ import annotations

import hashlib

import blake3

RING_TOP = 2**160  # SHA-1 positions are 160-bit integers
CHUNK_HASH_BYTES = 32  # BLAKE3-256


def key_position(bucket: bytes, key: bytes) -> int:
    """The ring position of an object: SHA-1 of bucket + NUL + key (Riak's chash)."""
    return int.from_bytes(hashlib.sha1(bucket + b"\0" + key).digest(), "big")


def partition_of(bucket: bytes, key: bytes, ring_size: int) -> int:
    """Index of the partition that holds a key, for a ring of `ring_size` equal partitions."""
    return key_position(bucket, key) * ring_size // RING_TOP


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The content address of a chunk."""
    return blake3.blake3(data).digest()


def chunk_hasher() -> blake3.blake3:
    """An incremental hasher for a chunk arriving in pieces (`update`, then `digest`)."""
    return blake3.blake3()


def is_chunk_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == CHUNK_HASH_BYTES
