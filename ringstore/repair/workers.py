"""Background workers in one shape: a name, a status line, one unit of work, and a pause.

Daemons expose `run_once` (Swift's style) so tests and operators can drive them to a final
state without waiting for their interval.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ringstore.errors import RingstoreError
from ringstore.storage.engine import StorageEngine

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0  # orphans only cost disk; every ten minutes keeps that small
SCRUB_INTERVAL_S = 24 * 3600.0  # a full verification pass a day, itself rate-limited


class Worker(Protocol):
    name: str
    interval_s: float

    def status(self) -> str: ...

    async def run_once(self) -> None: ...


@dataclass(slots=True)
class Sweeper:
    """Deletes chunk files no record has referenced for a grace period (aborted uploads)."""

    storage: StorageEngine
    grace_s: float
    interval_s: float = SWEEP_INTERVAL_S
    name: str = "sweeper"
    removed_total: int = 0
    rounds: int = 0

    def status(self) -> str:
        return f"{self.rounds} rounds, {self.removed_total} orphan chunks removed"

    async def run_once(self) -> None:
        self.removed_total += await self.storage.sweep(self.grace_s)
        self.rounds += 1


@dataclass(slots=True)
class Scrubber:
    """Re-verifies every chunk at a bounded rate and replaces bad ones from other replicas."""

    storage: StorageEngine
    bytes_per_s: float
    fetch_good_copy: Callable[[bytes], Awaitable[bytes]]
    interval_s: float = SCRUB_INTERVAL_S
    name: str = "scrubber"
    corrupt_total: int = 0
    repaired_total: int = 0
    rounds: int = 0

    def status(self) -> str:
        return (
            f"{self.rounds} passes, {self.corrupt_total} corrupt chunks found, "
            f"{self.repaired_total} repaired"
        )

    async def run_once(self) -> None:
        corrupt = await self.storage.scrub(self.bytes_per_s)
        self.corrupt_total += len(corrupt)
        for digest in corrupt:
            try:
                data = await self.fetch_good_copy(digest)
                await self.storage.write_chunk(data, digest)
            except RingstoreError as exc:
                log.warning("scrub: chunk %s not repaired: %s", digest.hex(), exc)
            else:
                self.repaired_total += 1
        self.rounds += 1


async def run_workers(
    workers: Sequence[Worker], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run each worker every `interval_s` until cancelled; a failed round is logged, not fatal."""

    async def loop(worker: Worker) -> None:
        while True:
            await trio.sleep(worker.interval_s)
            try:
                await worker.run_once()
            except RingstoreError as exc:
                log.warning("%s: round failed: %s", worker.name, exc)

    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(loop, worker)
        task_status.started()
