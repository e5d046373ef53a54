"""Processes the cluster tools started and find again by pid file: whether a pid is still one of
them, signalling one, and waiting until one is gone; plus the tools' one error class."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

POLL_INTERVAL_S = 0.05  # re-checking other processes' state: they give no event to wait on


class ClusterError(Exception):
    """A cluster operation that cannot be done; the message says why and what to look at."""


def process_state(pid: int) -> tuple[str, bytes] | None:
    """(state letter, command line) of a live process, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    state = stat.rpartition(")")[2].split()[0]
    if state in ("Z", "X"):
        return None
    return state, cmdline


def read_pid_file(path: Path) -> int | None:
    """The pid a pid file names, or None if it is missing or does not hold a pid."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def send_signal(pid: int, signum: int) -> None:
    """Signal `pid`; one that exited meanwhile is already where the signal would take it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Until `pid` is gone or a zombie (for a process someone else reaps); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while process_state(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True
