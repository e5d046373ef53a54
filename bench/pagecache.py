"""What this machine charges for putting new bytes into files: the floor under 1 MiB PUTs.

    python -m bench.pagecache [--mib N] [--dir DIR]

Writes N (default 256) one-MiB files into a fresh directory under DIR (default: the system's
temporary directory) in these ways and prints the CPU time (user + system) per MiB of each:

- copy: the same MiB copied in memory (a bytearray made from it): the price of a memcpy;
- new files: each MiB written into a file just created, as a chunk file is (no fsync: this
  is the page-cache copy alone);
- overwrite: the same files written again in place, into page-cache pages that already exist;
- fsynced: new files again, each fsynced, its pages left in the page cache;
- dropped: new files fsynced and their pages given back (POSIX_FADV_DONTNEED), as chunk files
  are: each file then reuses the pages the one before gave back.

A replicated PUT of a 1 MiB value writes three new files on a one-machine cluster. Where "new
files" costs far more than "overwrite", the kernel's work to get fresh page-cache pages (on a
virtual machine, often the hypervisor's, for memory the guest gave back) is what "dropped"
saves. The directory is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024


def cpu_ms_per_mib(mib: int, step: Callable[[int], object]) -> float:
    started = time.process_time()
    for index in range(mib):
        step(index)
    return 1000 * (time.process_time() - started) / mib


def measure(mib: int, directory: Path) -> dict[str, float]:
    data = os.urandom(MIB)
    paths = [directory / f"{index:06d}" for index in range(mib)]

    def write(path: Path, flags: int, *, fsync: bool = False, drop: bool = False) -> None:
        fd = os.open(path, os.O_WRONLY | flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    # Files are never deleted before the end (freeing their pages would hand the next files
    # warm ones): as in a store, the page cache grows by every file that keeps its pages.
    synced = [path.with_suffix(".fsynced") for path in paths]
    dropped = [path.with_suffix(".dropped") for path in paths]
    new = os.O_CREAT | os.O_EXCL
    return {
        "copy": cpu_ms_per_mib(mib, lambda _: bytearray(data)),
        "new files": cpu_ms_per_mib(mib, lambda i: write(paths[i], new)),
        "overwrite": cpu_ms_per_mib(mib, lambda i: write(paths[i], 0)),
        "fsynced": cpu_ms_per_mib(mib, lambda i: write(synced[i], new, fsync=True)),
        "dropped": cpu_ms_per_mib(mib, lambda i: write(dropped[i], new, fsync=True, drop=True)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pagecache", description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="files of 1 MiB to write")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    options = parser.parse_args(argv)
    if not 1 <= options.mib <= 4096:
        parser.error("--mib is between 1 and 4096")
    if not options.dir.is_dir():
        parser.error(f"--dir {options.dir} is not a directory")
    directory = Path(tempfile.mkdtemp(prefix="ringstore-pagecache.", dir=options.dir))
    try:
        figures = measure(options.mib, directory)
    finally:
        shutil.rmtree(directory)
    for name, ms in figures.items():
        rate = 1000 / max(ms, 1e-6)
        print(f"{name:10} {ms:7.3f} ms of CPU per MiB ({rate:,.0f} MiB/s)")
    ratio = figures["new files"] / max(figures["overwrite"], 1e-6)
    print(f"new files / overwrite: {ratio:.2f}")
    ratio = figures["dropped"] / max(figures["fsynced"], 1e-6)
    print(f"dropped / fsynced: {ratio:.2f}")


if __name__ == "__main__":
    main()
