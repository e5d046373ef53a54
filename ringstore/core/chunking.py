"""Cutting a byte stream into fixed-size chunks, and mapping a byte range onto those chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Chunker:
    """Cuts bytes fed in arbitrary pieces into chunks of exactly `chunk_size` bytes.

    `feed` returns the chunks it completed; `finish` returns the last, shorter one (or None
    when the input was empty or a whole number of chunks). At most `chunk_size - 1` bytes stay
    buffered between calls, so memory is bounded whatever the piece sizes.
    """

    def __init__(self, chunk_size: int) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int: {chunk_size!r}")
        self.chunk_size = chunk_size
        self.total_bytes = 0
        # The pieces of the chunk being filled, joined once when it is full: growing one
        # buffer would copy its bytes again at every reallocation and once more at the end.
        self._pieces: list[bytes | memoryview] = []
        self._buffered = 0
        self._finished = False

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._finished:
            raise RuntimeError("feed after finish")
        view = memoryview(data).cast("B")
        if not isinstance(data, bytes):
            view = memoryview(bytes(view))  # the caller may reuse a mutable buffer
        self.total_bytes += len(view)
        size = self.chunk_size
        chunks: list[bytes] = []
        position = 0
        if self._pieces:
            position = min(size - self._buffered, len(view))
            self._keep(view[:position])
            if self._buffered < size:
                return chunks
            chunks.append(self._take())
        # Whole chunks are sliced straight from the input: a large piece is copied once.
        while len(view) - position >= size:
            chunks.append(bytes(view[position : position + size]))
            position += size
        if position < len(view):
            self._keep(view[position:])
        return chunks

    def finish(self) -> bytes | None:
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        return self._take() if self._pieces else None

    def _keep(self, piece: memoryview) -> None:
        self._pieces.append(piece)
        self._buffered += len(piece)

    def _take(self) -> bytes:
        chunk = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        return chunk


class ChunkSlice(NamedTuple):
    """`length` bytes of chunk number `index`, starting at `offset` within that chunk.

    A tuple, so callers may unpack it: `for index, offset, length in chunk_slices(...)`.
    """

    index: int
    offset: int
    length: int


def chunk_slices(sizes: Sequence[int], start: int, end: int) -> list[ChunkSlice]:
    """The pieces of chunks that hold bytes `start` (inclusive) to `end` (exclusive).

    `sizes` are the chunk sizes in order. An empty range gives no slices; a range outside
    0..sum(sizes) is a `ValueError` (the HTTP layer answers 416 before getting here).
    """
    if any(size < 0 for size in sizes):
        raise ValueError("chunk sizes must not be negative")
    total = sum(sizes)
    if not 0 <= start <= end <= total:
        raise ValueError(f"byte range {start}..{end} is not within 0..{total}")
    slices: list[ChunkSlice] = []
    if start == end:
        return slices
    chunk_start = 0
    for index, size in enumerate(sizes):
        chunk_end = chunk_start + size
        if chunk_start >= end:
            break
        if size and chunk_end > start:
            offset = max(start - chunk_start, 0)
            length = min(end, chunk_end) - chunk_start - offset
            slices.append(ChunkSlice(index, offset, length))
        chunk_start = chunk_end
    return slices
