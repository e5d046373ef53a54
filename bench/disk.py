"""How fast this machine's disk takes durable new files: the bound under replicated PUTs.

    python -m bench.disk [--threads T] [--seconds S] [--dir DIR]

T threads (default 8, a node's chunk-file threads) each create a new file in a fresh
directory under DIR (default: the system's temporary directory), write one MiB into it and
fsync it, again and again for S seconds (default 8): what a chunk upload asks of the disk,
without anything else. Prints the MiB made durable per second.

A one-machine cluster with N=3 writes every PUT's bytes three times to this one disk, so
its PUT MB/s cannot pass a third of this figure, whatever the CPU does. The directory is
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024 * 1024


def durable_mib_per_s(threads: int, seconds: float, directory: Path) -> float:
    data = os.urandom(MIB)
    written = [0] * threads
    stop_at = time.monotonic() + seconds

    def write_files(worker: int) -> None:
        while time.monotonic() < stop_at:
            path = directory / f"{worker}.{written[worker]}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            written[worker] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=write_files, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(written) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__)
    parser.add_argument("--threads", type=int, default=8, help="writers at once")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to write")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    options = parser.parse_args(argv)
    if not 1 <= options.threads <= 64:
        parser.error("--threads is between 1 and 64")
    if not 0 < options.seconds <= 600:
        parser.error("--seconds is more than 0 and at most 600")
    if not options.dir.is_dir():
        parser.error(f"--dir {options.dir} is not a directory")
    directory = Path(tempfile.mkdtemp(prefix="ringstore-disk.", dir=options.dir))
    try:
        rate = durable_mib_per_s(options.threads, options.seconds, directory)
    finally:
        shutil.rmtree(directory)
    print(f"{rate:,.0f} MiB/s into new fsynced 1 MiB files from {options.threads} threads")
    print(f"a one-machine N=3 cluster's PUTs are bounded at {rate / 3:,.0f} MiB/s")


if __name__ == "__main__":
    main()
