"""Chunker and chunk_slices: properties over arbitrary inputs, splits and ranges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core.chunking import Chunker, ChunkSlice, chunk_slices


def cut(data: bytes, chunk_size: int, splits: list[int]) -> list[bytes]:
    """Feed `data` to a Chunker in pieces ending at `splits`; return every chunk produced."""
    chunker = Chunker(chunk_size)
    chunks: list[bytes] = []
    start = 0
    for end in sorted(splits) + [len(data)]:
        chunks.extend(chunker.feed(data[start:end]))
        assert chunker.buffered_bytes < chunk_size  # bounded memory between calls
        start = end
    last = chunker.finish()
    if last is not None:
        chunks.append(last)
    assert chunker.total_bytes == len(data)
    return chunks


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=2000),
    chunk_size=st.integers(1, 300),
    split_fractions=st.lists(st.floats(0, 1), max_size=12),
)
def test_chunks_reassemble_and_do_not_depend_on_the_splits(data, chunk_size, split_fractions):
    splits = [int(fraction * len(data)) for fraction in split_fractions]
    chunks = cut(data, chunk_size, splits)
    assert b"".join(chunks) == data
    assert chunks == cut(data, chunk_size, [])  # the same as one big feed
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    if chunks:
        assert 0 < len(chunks[-1]) <= chunk_size
    assert len(chunks) == -(-len(data) // chunk_size)


@pytest.mark.parametrize(
    ("size", "expected_lengths"),
    [(0, []), (1, [1]), (9, [9]), (10, [10]), (11, [10, 1]), (30, [10, 10, 10])],
)
def test_chunk_boundaries(size, expected_lengths):
    assert [len(chunk) for chunk in cut(b"x" * size, 10, [])] == expected_lengths


def test_chunker_accepts_bytes_like_and_refuses_misuse():
    chunker = Chunker(4)
    assert chunker.feed(bytearray(b"ab")) == []
    assert chunker.feed(memoryview(b"cdefghij")) == [b"abcd", b"efgh"]
    assert chunker.finish() == b"ij"
    with pytest.raises(RuntimeError):
        chunker.feed(b"more")
    with pytest.raises(RuntimeError):
        chunker.finish()
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            Chunker(bad)


@st.composite
def sizes_and_range(draw):
    sizes = draw(st.lists(st.integers(0, 50), max_size=8))
    total = sum(sizes)
    start = draw(st.integers(0, total))
    end = draw(st.integers(start, total))
    return sizes, start, end


@settings(max_examples=300, deadline=None)
@given(sizes_and_range())
def test_slices_cover_exactly_the_range(case):
    sizes, start, end = case
    chunks = [bytes([index]) * size for index, size in enumerate(sizes)]
    whole = b"".join(chunks)
    slices = chunk_slices(sizes, start, end)
    assert (
        b"".join(chunks[i][offset : offset + length] for i, offset, length in slices)
        == (whole[start:end])
    )
    assert all(length > 0 for _, _, length in slices)
    assert all(offset >= 0 and offset + length <= sizes[i] for i, offset, length in slices)
    indexes = [index for index, _, _ in slices]
    if indexes:  # every non-empty chunk from the first to the last, in order
        assert indexes == [i for i in range(indexes[0], indexes[-1] + 1) if sizes[i]]


def test_slices_examples():
    sizes = [10, 10, 5]
    assert chunk_slices(sizes, 0, 25) == [ChunkSlice(0, 0, 10), ChunkSlice(1, 0, 10), (2, 0, 5)]
    assert chunk_slices(sizes, 12, 13) == [ChunkSlice(1, 2, 1)]
    assert chunk_slices(sizes, 9, 21) == [(0, 9, 1), (1, 0, 10), (2, 0, 1)]
    assert chunk_slices(sizes, 10, 20) == [(1, 0, 10)]
    assert chunk_slices(sizes, 25, 25) == []
    assert chunk_slices([], 0, 0) == []
    assert chunk_slices([0, 4, 0, 4], 2, 6) == [(1, 2, 2), (3, 0, 2)]


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (0, 26), (26, 26)])
def test_slices_refuse_ranges_outside_the_value(start, end):
    with pytest.raises(ValueError):
        chunk_slices([10, 10, 5], start, end)


def test_slices_refuse_negative_sizes():
    with pytest.raises(ValueError):
        chunk_slices([10, -1], 0, 5)


def test_a_reused_input_buffer_does_not_change_chunks_already_fed() -> None:
    chunker = Chunker(8)
    buffer = bytearray(b"abcde")
    assert chunker.feed(buffer) == []
    buffer[:] = b"XXXXX"  # the caller reuses its buffer
    assert chunker.feed(memoryview(buffer)[:3]) == [b"abcdeXXX"]
    assert chunker.feed(b"tail") == []
    assert chunker.finish() == b"tail"
    assert chunker.total_bytes == 12
