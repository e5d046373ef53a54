"""Shared fixtures for the storage tests: both engines, small sizes, a wall clock tests move."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from ringstore.core.chunking import Chunker
from ringstore.core.hashing import chunk_hash
from ringstore.storage.engine import StorageEngine
from ringstore.storage.lmdb_store import LmdbStore
from ringstore.storage.memory import MemoryStore

# Small sizes so that tests cross every boundary with a few hundred bytes.
RING_SIZE = 16
INLINE_MAX = 64
CHUNK_SIZE = 256
ENGINE_KINDS = ("lmdb", "memory")

INLINE_TAG = b"I"  # test records: a tag byte, then the inline value (chunked values: tag only)
CHUNKED_TAG = b"C"


class FakeWallClock:
    """The engines' wall clock, moved only by the test (the sweeper's grace runs on it)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Engines:
    """Makes, starts and reopens engines of one kind, all stopped when the test ends."""

    kind: str
    root: Path
    clock: FakeWallClock
    nursery: trio.Nursery

    def make(self, name: str = "node", **params: Any) -> StorageEngine:
        params = {
            "ring_size": RING_SIZE,
            "inline_max": INLINE_MAX,
            "chunk_size": CHUNK_SIZE,
            "wall_clock": self.clock,
            **params,
        }
        if self.kind == "lmdb":
            return LmdbStore(self.root / name, **params)
        return MemoryStore(**params)

    async def start(self, name: str = "node", **params: Any) -> StorageEngine:
        engine = self.make(name, **params)
        await self.nursery.start(engine.run)
        return engine

    async def reopen(self, engine: StorageEngine) -> StorageEngine:
        """A new running engine on what `engine` made durable (LMDB: a clean close; memory:
        a crash, which keeps exactly the completed commits)."""
        if isinstance(engine, LmdbStore):
            await engine.aclose()
            again: StorageEngine = LmdbStore(
                engine.path,
                ring_size=engine.ring_size,
                inline_max=engine.inline_max,
                chunk_size=engine.chunk_size,
                wall_clock=self.clock,
            )
        else:
            assert isinstance(engine, MemoryStore)
            engine.crash()
            again = MemoryStore.recover(engine)
        await self.nursery.start(again.run)
        return again

    def corrupt(self, engine: StorageEngine, chunk: bytes) -> None:
        """Flip one byte of a stored chunk, behind the engine's back."""
        if isinstance(engine, LmdbStore):
            path = self.chunk_file(engine, chunk)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
        else:
            assert isinstance(engine, MemoryStore)
            engine.corrupt_chunk(chunk)

    @staticmethod
    def chunk_file(engine: LmdbStore, chunk: bytes) -> Path:
        name = chunk.hex()
        return engine.path / "chunks" / name[:2] / name[2:4] / name

    @staticmethod
    def quarantined_files(engine: LmdbStore) -> list[str]:
        return sorted(os.listdir(engine.path / "quarantine"))

    @staticmethod
    async def store_value(
        engine: StorageEngine, bucket: bytes, key: bytes, value: bytes
    ) -> list[bytes]:
        """Store a value as a coordinator would: inline up to inline_max, else as chunks.

        Returns the chunk hashes the record names.
        """
        if len(value) <= engine.inline_max:
            await engine.put_record(bucket, key, INLINE_TAG + value, [])
            return []
        chunker = Chunker(engine.chunk_size)
        pieces = chunker.feed(value)
        last = chunker.finish()
        if last is not None:
            pieces.append(last)
        hashes = [await engine.write_chunk(piece, expected=chunk_hash(piece)) for piece in pieces]
        await engine.put_record(bucket, key, CHUNKED_TAG, hashes)
        return hashes

    @staticmethod
    async def load_value(engine: StorageEngine, bucket: bytes, key: bytes) -> bytes | None:
        stored = await engine.get_record(bucket, key)
        if stored is None:
            return None
        if stored.record.startswith(INLINE_TAG):
            return stored.record[len(INLINE_TAG) :]
        return b"".join([await engine.read_chunk(chunk) for chunk in stored.chunks])


@pytest.fixture
def wall_clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture(params=ENGINE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def engines(
    kind: str, tmp_path: Path, wall_clock: FakeWallClock, nursery: trio.Nursery
) -> Engines:
    return Engines(kind, tmp_path, wall_clock, nursery)


@pytest.fixture
async def engine(engines: Engines) -> StorageEngine:
    return await engines.start()
