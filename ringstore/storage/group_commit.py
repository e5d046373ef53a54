"""Group commit: writes queued by many tasks, applied and made durable together by one
committer, a batch at a time, so that one fsync serves every write in the batch.

A writer queues an operation (`enqueue`, `submit`) and waits for its outcome; the committer
task (`run`) takes what is queued, up to `max_batch_ops`, and awaits the owner's
`commit(batch)` (the LMDB engine's runs a transaction on a worker thread, the memory
engine's applies the batch after a simulated fsync). That function applies each operation,
recording its `result` or `error` (one failing operation does not fail its batch) and what
it changed (`changes`), and makes them durable at once, raising only if that fails. After a
commit `committed(batch)` runs before any writer wakes (the owner's statistics); a failed
commit fails every operation of its batch with a fresh `failed(exc)`. The queue holds at
most `queue_ops` operations: writers beyond that wait to enqueue, which bounds memory under
overload. Both engines share this, so their writes wait, batch and fail alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ringstore.errors import StorageClosed


class WriteOp:
    """One queued write: the owner's commit runs `apply`; the writer waits on `done`.
    `changes` is what the owner counts once the write is committed (None if it failed)."""

    __slots__ = ("apply", "done", "result", "error", "changes", "abandoned")

    def __init__(self, apply: Callable[..., Any]) -> None:
        self.apply = apply
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.changes: Any = None
        self.abandoned = False

    def finish(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class GroupCommit:
    """The queue and the committer of one store (see the top); `close` ends both."""

    def __init__(
        self,
        name: str,
        commit: Callable[[list[WriteOp]], Awaitable[None]],
        *,
        committed: Callable[[list[WriteOp]], None],
        failed: Callable[[BaseException], Exception],
        max_batch_ops: int,
        queue_ops: int,
    ) -> None:
        self.name = name
        self._owner_commit = commit
        self._committed = committed
        self._failed = failed
        self.max_batch_ops = max_batch_ops
        self._send, self._receive = trio.open_memory_channel[WriteOp](queue_ops)

    async def submit(self, apply: Callable[..., Any]) -> Any:
        """Queue a write; return its result once its batch is durable (or raise its error).

        A caller cancelled while waiting does not learn the outcome: the write may commit.
        """
        (op,) = await self.enqueue(apply)
        return await self.outcome(op)

    async def enqueue(self, *applies: Callable[..., Any]) -> list[WriteOp]:
        """Queue writes (`outcome` waits for each), applied in this order. They are queued
        back to back, so one commit takes them all unless the queue is full."""
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller queues nothing
        ops = [WriteOp(apply) for apply in applies]
        try:
            for op in ops:
                try:
                    self._send.send_nowait(op)
                except trio.WouldBlock:
                    await self._send.send(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StorageClosed(f"storage {self.name} closed") from None
        return ops

    @staticmethod
    async def outcome(op: WriteOp) -> Any:
        try:
            await op.done.wait()
        except trio.Cancelled:
            op.abandoned = True
            raise
        if op.error is not None:
            raise op.error
        return op.result

    async def run(self) -> None:
        """Commit queued writes, a batch at a time, until cancelled or closed."""
        async for first in self._receive:
            batch = [first]
            while len(batch) < self.max_batch_ops:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            batch = [op for op in batch if not op.abandoned]
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[WriteOp]) -> None:
        try:
            await self._owner_commit(batch)
        except Exception as exc:
            for op in batch:
                op.finish(None, self._failed(exc))
            return
        self._committed(batch)
        for op in batch:
            op.done.set()

    def close(self) -> None:
        """Refuse new writes and fail the queued ones; writers blocked on a full queue wake
        with StorageClosed. Call it once `run` has returned: a commit in progress finishes first."""
        self._send.close()
        while True:
            try:
                op = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            op.finish(None, StorageClosed("the storage engine closed before this write committed"))
        self._receive.close()
