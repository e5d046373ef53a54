"""ChunkFiles on its own: durable publish under the hash, verified reads, quarantine, the walk."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path

import pytest

from ringstore.core.hashing import chunk_hash
from ringstore.errors import LocalError
from ringstore.storage.chunk_files import CORRUPT, OK, VANISHED, ChunkFiles


@pytest.fixture
def files(tmp_path) -> ChunkFiles:
    chunk_files = ChunkFiles(tmp_path)
    chunk_files.prepare()
    return chunk_files


def store(files: ChunkFiles, data: bytes, pieces: int = 1) -> bytes:
    upload = files.start_upload()
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        upload.write(data[start : start + step])
    digest = upload.finish()
    files.publish(upload, digest)
    return digest


def test_publish_puts_the_file_under_its_hash(files):
    data = b"some chunk bytes" * 10
    chunk = store(files, data, pieces=3)
    assert chunk == chunk_hash(data)
    name = chunk.hex()
    assert files.path_of(chunk) == files.chunks_dir / name[:2] / name[2:4] / name
    assert files.path_of(chunk).read_bytes() == data
    assert os.listdir(files.tmp_dir) == []
    assert files.read_verified(chunk, len(data)) == (OK, data)
    assert store(files, data) == chunk  # the same bytes again: the same file, replaced


def cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), size) as mapped:
        # The c_char view is dropped at once: only the address is kept, while mapped.
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(byte & 1 for byte in vector)


@pytest.mark.skipif(sys.platform != "linux", reason="posix_fadvise and mincore as on Linux")
def test_a_stored_chunk_leaves_no_pages_in_the_page_cache(files, tmp_path):
    data = os.urandom(64 * mmap.PAGESIZE)
    chunk = store(files, data)
    assert cached_pages(files.path_of(chunk)) == 0
    # The same bytes written and fsynced plainly stay cached: the check can see pages.
    plain = tmp_path / "plain"
    with open(plain, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    assert cached_pages(plain) == 64
    assert files.read_verified(chunk, len(data)) == (OK, data)  # a read caches as usual


def test_reads_verify_and_never_return_bad_bytes(files):
    data = bytes(range(100))
    chunk = store(files, data)
    path = files.path_of(chunk)
    path.write_bytes(data[:-1] + b"\x00")
    assert files.read_verified(chunk, len(data)) == (CORRUPT, None)
    path.write_bytes(data + b"!")  # right bytes plus one: still not the chunk
    assert files.read_verified(chunk, len(data)) == (CORRUPT, None)
    files.quarantine(chunk)
    assert not path.exists()
    assert [name.split(".")[0] for name in os.listdir(files.quarantine_dir)] == [chunk.hex()]
    assert files.read_verified(chunk, len(data)) == (VANISHED, None)
    files.quarantine(chunk)  # nothing left to move: no error
    files.unlink([chunk])


def test_unreadable_file_is_a_local_error(files):
    chunk = store(files, b"x")
    files.path_of(chunk).unlink()
    files.path_of(chunk).mkdir()  # exists, but cannot be read as a file
    with pytest.raises(LocalError, match=chunk.hex()):
        files.read_verified(chunk, 1)


def test_discarded_upload_leaves_nothing(files):
    upload = files.start_upload()
    upload.write(b"half a chunk")
    upload.discard()
    upload.discard()
    assert os.listdir(files.tmp_dir) == []


def test_prepare_empties_tmp_and_walk_lists_only_chunk_files(tmp_path):
    files = ChunkFiles(tmp_path)
    files.prepare()
    chunks = {store(files, b"a" * 10): 10, store(files, b"b" * 20): 20}
    (files.tmp_dir / "cut-off.tmp").write_bytes(b"an upload a crash cut off")
    (files.chunks_dir / "README").write_bytes(b"not a chunk")
    stray = files.chunks_dir / "00" / "00"
    stray.mkdir(parents=True)
    (stray / "not-hex").write_bytes(b"")
    (stray / ("zz" * 32)).write_bytes(b"")  # 64 characters, not hex
    (stray / ("ab" * 32)).write_bytes(b"")  # hex, in the wrong directory
    again = ChunkFiles(tmp_path)
    again.prepare()
    assert os.listdir(again.tmp_dir) == []
    assert dict(again.walk()) == chunks
