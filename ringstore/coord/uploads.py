"""One upload's chunks on their way to the key's replicas, each replica at its own pace."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from ringstore.coord.replica import CHUNK_CALL_TIMEOUT_S, ReplicaClient
from ringstore.core.hashing import chunk_hash
from ringstore.errors import QuorumError, RingstoreError

log = logging.getLogger(__name__)

# Chunks queued for one replica beyond the one it is storing. A replica further behind
# stops receiving the upload (so a slow disk or link never slows the put or grows memory)
# and gets the chunks it lacks when the new version reaches it.
UPLOAD_LAG_CHUNKS = 2


class ChunkFanOut:
    """Streams one upload's chunks to its replicas, each through its own bounded queue.

    Each replica stores its chunks in order, so `acked[node]` chunks are a prefix of the
    value. `send` returns once `needed` replicas hold the chunk; the rest catch up in the
    `background` nursery (the coordinator's) or, if they fall `UPLOAD_LAG_CHUNKS` behind, are
    dropped.
    """

    def __init__(
        self,
        background: trio.Nursery,
        client_of: Callable[[str], ReplicaClient],
        nodes: Sequence[str],
        needed: int,
        when_done: Callable[[], None],
    ) -> None:
        self._background = background
        self._client_of = client_of
        self._needed = needed
        self._sent = 0
        self.acked = dict.fromkeys(nodes, 0)
        self._alive = set(nodes)
        self._queues: dict[str, trio.MemorySendChannel[tuple[bytes, bytes]]] = {}
        self._changed = trio.Event()
        self._started = False
        # Called once, when closed and every replica's writer has ended: no chunk of this
        # upload is held any more.
        self._when_done: Callable[[], None] | None = when_done
        self._closed = False
        self._writers = 0

    def _start(self) -> None:
        self._started = True
        for node in self.acked:
            send, receive = trio.open_memory_channel[tuple[bytes, bytes]](UPLOAD_LAG_CHUNKS)
            self._queues[node] = send
            self._writers += 1
            self._background.start_soon(self._store, node, receive)

    async def _store(
        self, node: str, receive: trio.MemoryReceiveChannel[tuple[bytes, bytes]]
    ) -> None:
        try:
            async with receive:
                async for digest, chunk in receive:
                    try:
                        with trio.fail_after(CHUNK_CALL_TIMEOUT_S):
                            await self._client_of(node).write_chunk(chunk, digest, hashed=True)
                    except (RingstoreError, trio.TooSlowError) as exc:
                        log.warning("chunk %s to %s failed: %s", digest.hex()[:12], node, exc)
                        self._drop(node)
                        return
                    self.acked[node] += 1
                    self._notify()
        finally:
            self._writers -= 1
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self._closed and self._writers == 0 and self._when_done is not None:
            when_done, self._when_done = self._when_done, None
            when_done()

    def _drop(self, node: str) -> None:
        self._alive.discard(node)
        self._queues[node].close()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, chunk: bytes) -> bytes:
        if not self._started:
            self._start()
        digest = chunk_hash(chunk)
        index = self._sent
        self._sent += 1
        for node in sorted(self._alive):
            try:
                self._queues[node].send_nowait((digest, chunk))
            except trio.WouldBlock:
                log.info("replica %s fell behind an upload; it catches up later", node)
                self._drop(node)
        while True:
            holding = sum(1 for node in self._alive if self.acked[node] > index)
            if self._alive and holding >= min(self._needed, len(self._alive)):
                return digest
            if not self._alive:
                raise QuorumError("w", 0, 1, "no replica could store the value's chunks")
            await self._changed.wait()

    async def finish(self) -> list[str]:
        """The replicas holding every chunk, once at least one does (or none can)."""
        while True:
            ready = [n for n in self.acked if n in self._alive and self.acked[n] == self._sent]
            if ready or not self._alive:
                break
            await self._changed.wait()
        if not ready:
            raise QuorumError("w", 0, 1, "no replica could store the value's chunks")
        return ready

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._closed = True
        self._maybe_done()
