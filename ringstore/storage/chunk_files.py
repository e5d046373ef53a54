"""Chunk files on disk: written durably under their hash, read back verified, quarantined if bad.

Layout (under an engine's directory; the engine's `chunks` rows say which files count):

  chunks/ab/cd/<hex hash>   one file per chunk; ab and cd are the hash's first two bytes in hex
  tmp/<random>.tmp          uploads in progress; emptied by `prepare` at every start
  quarantine/<hex>.<tag>    chunk files that failed verification, kept for the operator

Durability: an upload is written under tmp/ and fsynced; `publish` renames it into place and
fsyncs its directory (and each directory it had to create, in its parent), so once `publish`
returns the file survives a crash under its final name.

Every method blocks on the disk: the engine calls them on worker threads and orders the
operations on one hash (publish, quarantine, unlink) with its own per-chunk locks.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ringstore.core.hashing import CHUNK_HASH_BYTES, chunk_hash, chunk_hasher
from ringstore.errors import LocalError

MAX_CHUNK_FILE_BYTES = 64 * 1024**2  # a read never holds more, whatever a damaged row says
HASH_HEX_CHARS = 2 * CHUNK_HASH_BYTES

# What a look at one chunk file found (`ChunkFiles.read_verified`).
OK, VANISHED, CORRUPT = "ok", "vanished", "corrupt"


def fsync_dir(directory: str | Path) -> None:
    """Make `directory`'s entries (a rename into it, a new subdirectory) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_cached_pages(fd: int) -> None:
    """Give a durable file's page-cache pages back (its bytes are on disk, the pages clean).

    A chunk just written is rarely read soon, and reads cache what they read. Without this
    the page cache grows by every chunk written, and each new file's bytes are copied into
    freshly allocated pages, which costs several times a copy into reused ones
    (`python -m bench.pagecache`); with it the next upload reuses the pages just freed.
    """
    if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the kernel keeps them
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class Upload:
    """A chunk being received into a temporary file (from `ChunkFiles.start_upload`)."""

    def __init__(self, tmp_path: str, hashing: bool = True) -> None:
        self.tmp_path = tmp_path
        self.fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        # None when the writer already knows the hash of what it writes.
        self.hasher = chunk_hasher() if hashing else None
        self.size = 0
        self.published = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.hasher is not None:
            self.hasher.update(data)
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            view = view[os.write(self.fd, view) :]

    def finish(self) -> bytes | None:
        """Make the bytes durable and return their hash (None if not hashing)."""
        os.fsync(self.fd)
        _drop_cached_pages(self.fd)
        os.close(self.fd)
        self.fd = -1
        return None if self.hasher is None else self.hasher.digest()

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class ChunkFiles:
    """The chunk files of one engine directory (`root`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks_dir = root / "chunks"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        # Every upload and read names files: plain strings here, as pathlib's objects cost
        # a visible share of a small chunk's CPU.
        self._chunks = str(self.chunks_dir)
        self._tmp = str(self.tmp_dir)
        self._known_dirs: set[str] = set()

    def prepare(self) -> None:
        """Create the directories and delete leftover uploads.

        Only for the holder of the directory's lock: no other engine may be uploading here.
        """
        for directory in (self.chunks_dir, self.tmp_dir, self.quarantine_dir):
            directory.mkdir(exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink()
        fsync_dir(self.root)

    def path_of(self, chunk: bytes) -> Path:
        return Path(self._file_of(chunk)[1])

    def _file_of(self, chunk: bytes) -> tuple[str, str]:
        """The chunk's directory (chunks/ab/cd) and file."""
        name = chunk.hex()
        directory = f"{self._chunks}/{name[:2]}/{name[2:4]}"
        return directory, f"{directory}/{name}"

    def start_upload(self, hashing: bool = True) -> Upload:
        return Upload(f"{self._tmp}/{secrets.token_hex(8)}.tmp", hashing)

    def publish(self, upload: Upload, chunk: bytes) -> None:
        """Move a finished upload to its final name, durably."""
        directory, final = self._file_of(chunk)
        self._ensure_dir(directory)
        os.rename(upload.tmp_path, final)
        upload.published = True
        fsync_dir(directory)

    def _ensure_dir(self, directory: str) -> None:
        """Create chunks/ab/cd as needed, each new directory made durable in its parent."""
        if directory in self._known_dirs:
            return
        for level in (os.path.dirname(directory), directory):
            try:
                os.mkdir(level)
            except FileExistsError:
                continue
            fsync_dir(os.path.dirname(level))
        self._known_dirs.add(directory)

    def read_verified(self, chunk: bytes, size: int) -> tuple[str, bytes | None]:
        """(OK, the bytes) if the file holds exactly the chunk, else (VANISHED or CORRUPT, None).

        `size` is what the chunk's row expects: the read asks for one byte more, so that a
        longer file fails to verify, and no more, because a read's buffer costs what it could
        hold. `LocalError` if the file exists but cannot be read.
        """
        try:
            with open(self._file_of(chunk)[1], "rb") as file:
                data = file.read(min(size, MAX_CHUNK_FILE_BYTES) + 1)
        except FileNotFoundError:
            return VANISHED, None
        except OSError as exc:
            raise LocalError(f"chunk {chunk.hex()} cannot be read: {exc}") from exc
        if chunk_hash(data) != chunk:
            return CORRUPT, None
        return OK, data

    def quarantine(self, chunk: bytes) -> None:
        """Move a bad chunk file aside (if it is still there), under a name of its own."""
        target = self.quarantine_dir / f"{chunk.hex()}.{secrets.token_hex(4)}"
        try:
            os.rename(self._file_of(chunk)[1], target)
        except FileNotFoundError:
            pass

    def unlink(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            try:
                os.unlink(self._file_of(chunk)[1])
            except FileNotFoundError:
                pass

    def walk(self) -> Iterator[tuple[bytes, int]]:
        """(hash, size) of every file under chunks/ named as a chunk file is; others are left."""
        for first in sorted(self.chunks_dir.iterdir()):
            for second in sorted(first.iterdir()) if first.is_dir() else ():
                for file in sorted(second.iterdir()) if second.is_dir() else ():
                    name = file.name
                    if (
                        len(name) != HASH_HEX_CHARS
                        or name[:2] != first.name
                        or name[2:4] != second.name
                    ):
                        continue
                    try:
                        yield bytes.fromhex(name), file.stat().st_size
                    except ValueError:
                        continue
