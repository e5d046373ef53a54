"""The coordinator: Riak's get/put/delete FSMs as Trio code driving the pure quorum cores.

Any node coordinates any request. A get asks the key's N replicas for the object record,
answers at R (the pure `GetCore` decides) and read-repairs the stale replicas after
answering. A put of a value larger than one chunk cuts the body into chunks as it arrives
and streams each chunk to the N replicas; then one replica coordinates the new version (a
new dot), the others merge it, and the client gets its answer at W (`PutCore`). A value of
one chunk is read whole and its chunk travels with the version, in the same calls. Values
stream back chunk by chunk from the nearest replica holding a verified copy.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import blake3
import trio

from ringstore.coord.api import BodyCheck, GetResult, NodeInfo, PutResult, WriteMeta
from ringstore.coord.bucket_props import PropsStore
from ringstore.coord.fanout import Outcome, fan_out
from ringstore.coord.replica import CHUNK_CALL_TIMEOUT_S, Chunk, LocalReplica, ReplicaClient
from ringstore.coord.stats import CoordinatorStats
from ringstore.coord.uploads import ChunkFanOut
from ringstore.core import versions
from ringstore.core.chunking import Chunker
from ringstore.core.hashing import chunk_hash
from ringstore.core.props import BucketProps, Operation, RequestOptions, resolve_options
from ringstore.core.quorum import Absent, Failed, Found, GetCore, PutCore, RepairPlan
from ringstore.core.ring import Ring, Target
from ringstore.core.versions import Content, Entry, Object, VersionVector
from ringstore.errors import (
    BadRequest,
    ChunkCorrupt,
    ChunkMissing,
    LocalError,
    MissingChunks,
    NotFound,
    QuorumError,
    RequestTimeout,
    RingstoreError,
)
from ringstore.storage.engine import check_name

log = logging.getLogger(__name__)

# Chunks of one upload in flight between reading the body and replicating it: enough to
# overlap the two, small enough that memory stays bounded by concurrency x chunk size.
UPLOAD_PIPELINE_CHUNKS = 2
# A bucket or key of a listing crosses the HTTP layer as a batch: bounded like everything else.
KEY_LIST_BATCH = 1000  # keys per streamed batch of a key listing


class ObjectReconciler:
    """How the get core merges replica objects: the versions module's sync."""

    def __init__(self, lww: bool) -> None:
        self.lww = lww

    def merge(self, a: Object, b: Object) -> Object:
        if a is b and not self.lww:
            return a  # replicas in sync: one decoded object, and merge(a, a) == a
        merged = versions.merge(a, b, lww=self.lww)
        assert merged is not None
        return merged

    def equal(self, a: Object, b: Object) -> bool:
        return a == b

    def is_tombstone(self, obj: Object) -> bool:
        return obj.is_tombstone()


class Coordinator:
    """The node's `KV` handle (coord/api.py): every client request goes through here."""

    def __init__(
        self,
        *,
        node: str,
        secret: bytes,
        clients: Callable[[str], ReplicaClient],
        ring: Callable[[], Ring],
        up_nodes: Callable[[], frozenset[str]],
        props: PropsStore,
        broadcast_props: Callable[[bytes, BucketProps | None], Awaitable[None]] | None = None,
        chunk_size: int,
        inline_max: int,
        uploads_in_flight: int = 8,
        wall_clock: Callable[[], float] = time.time,
        version: str = "",
        extra_stats: Callable[[], Mapping[str, object]] | None = None,
        round_trip_s: Callable[[str], float | None] = lambda node: None,
    ) -> None:
        self.node = node
        self._secret = secret
        self._clients = clients
        self._ring = ring
        self._up_nodes = up_nodes
        self._props = props
        self._broadcast_props = broadcast_props
        self.chunk_size = chunk_size
        self.inline_max = inline_max
        # A turn per large value streaming in, held until its last chunk write ends (the
        # replicas that finish after the answer included): bounds the node's upload memory.
        self._upload_turns = trio.Semaphore(uploads_in_flight)
        self._wall_clock = wall_clock
        self._version = version
        self._extra_stats = extra_stats
        self._round_trip_s = round_trip_s
        self.stats = CoordinatorStats()
        self._background: trio.Nursery | None = None
        self._placements: dict[tuple[int, int], tuple[Target, ...]] = {}
        self._placement_ring: Ring | None = None
        self._placement_up: frozenset[str] = frozenset()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background work of requests (late replies, read repair) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def background(self) -> trio.Nursery:
        if self._background is None:
            raise LocalError("the coordinator is not running")
        return self._background

    # -- placement ---------------------------------------------------------------------------

    def targets(self, bucket: bytes, key: bytes, n: int) -> tuple[Target, ...]:
        ring, up = self._ring(), self._up_nodes()
        if ring is not self._placement_ring or up != self._placement_up:
            # Preflists are a function of ring and up nodes: remembered until either changes
            # (at most ring size x n values entries).
            self._placements = {}
            self._placement_ring, self._placement_up = ring, up
        partition = ring.partition_of(bucket, key)
        targets = self._placements.get((partition, n))
        if targets is None:
            targets = self._placements[partition, n] = ring.preflist(partition, n, up).targets
        return targets

    def nearest_first(self, nodes: Iterable[str]) -> list[str]:
        """This node, then the others by their last ping's round trip (unknown ones last)."""

        def distance(node: str) -> tuple[int, float]:
            if node == self.node:
                return (0, 0.0)
            rtt = self._round_trip_s(node)
            return (1, rtt) if rtt is not None else (2, 0.0)

        return sorted(nodes, key=distance)

    def _now_us(self) -> int:
        return int(self._wall_clock() * 1_000_000)

    def _decode_context(self, bucket: bytes, key: bytes, text: str | None) -> VersionVector | None:
        if text is None:
            return None
        return versions.decode_context(
            text, self._secret, scope=versions.context_scope(bucket, key)
        )

    def _encode_context(self, bucket: bytes, key: bytes, obj: Object | None) -> str | None:
        if obj is None:
            return None
        return versions.encode_context(
            obj.context(), self._secret, scope=versions.context_scope(bucket, key)
        )

    # -- get ---------------------------------------------------------------------------------

    async def get(self, bucket: bytes, key: bytes, query: Mapping[str, str]) -> GetResult:
        check_name(bucket, key)  # a client's error (400), not N replica failures (503)
        started = trio.current_time()
        props = await self.get_props(bucket)
        options = _options(props, query, "get")
        obj = await self._coordinated_get(bucket, key, options, props)
        self.stats.gets += 1
        self.stats.record(self.stats.get_times_us, int((trio.current_time() - started) * 1e6))
        if obj is not None:
            self.stats.record(self.stats.sibling_counts, len(obj.siblings()))
        if obj is not None and not props.allow_mult:
            obj = _resolved(obj)
        return GetResult(obj, self._encode_context(bucket, key, obj))

    async def _coordinated_get(
        self, bucket: bytes, key: bytes, options: RequestOptions, props: BucketProps
    ) -> Object | None:
        """The merged object (tombstones included), or None if no replica has the key."""
        targets = self.targets(bucket, key, options.n)
        primaries = sum(1 for t in targets if t.primary)
        core: GetCore[Object] = GetCore(
            options.n,
            options.r,
            options.pr,
            options.notfound_ok,
            options.basic_quorum,
            ObjectReconciler(props.last_write_wins),
            primaries=primaries,
        )
        if core.enough():
            return self._get_answer(core.response())

        # Replicas in sync send equal records: each distinct one is decoded once, and equal
        # answers are then one object, which the core compares and merges at no cost.
        decoded: dict[bytes, Object] = {}

        def object_of(record: bytes | None) -> Object | None:
            if record is None:
                return None
            obj = decoded.get(record)
            if obj is None:
                obj = decoded[record] = Object.decode(record)
            return obj

        async def call(target: Target) -> Object | None:
            return object_of(await self._clients(target.node).get_record(bucket, key))

        def start(
            target: Target, deliver: Callable[[Outcome[Object | None]], None], timeout_s: float
        ) -> bool:
            def on_record(record: bytes | None, error: Exception | None) -> None:
                if error is None:
                    try:
                        deliver(Outcome(target, object_of(record), None))
                        return
                    except Exception as exc:  # an undecodable record: the replica's fault
                        error = exc
                deliver(Outcome(target, None, error))

            client = self._clients(target.node)
            return client.start_get_record(bucket, key, on_record, timeout_s=timeout_s)

        # This node's own replica is read at once, without a task (a point read).
        known: list[Outcome[Object | None]] = []
        remote: list[Target] = []
        for target in targets:
            client = self._clients(target.node) if target.node == self.node else None
            if not isinstance(client, LocalReplica):
                remote.append(target)
                continue
            try:
                known.append(Outcome(target, object_of(client.lookup_record(bucket, key)), None))
            except Exception as exc:  # a replica's failure is a vote, not a crash
                known.append(Outcome(target, None, exc))

        def on_outcome(outcome: Outcome[Object | None]) -> bool:
            t = outcome.target
            if outcome.error is not None:
                core.add_result(t.node, t.primary, ("error", repr(outcome.error)))
            elif outcome.value is None:
                core.add_result(t.node, t.primary, ("notfound",))
            else:
                core.add_result(t.node, t.primary, ("ok", outcome.value))
            return core.enough()

        def read_repair() -> Awaitable[None] | None:
            plan = core.repair_plan()
            return None if plan is None else repair_all(plan)

        async def repair_all(plan: RepairPlan[Object]) -> None:
            by_node = {t.node: t for t in targets}
            for repair in plan.targets:
                self.stats.read_repairs += 1
                source = [t.node for t in targets if t.node != repair.replica]
                await self._push_object(
                    by_node[repair.replica].node,
                    bucket,
                    key,
                    plan.value,
                    source,
                    props.last_write_wins,
                )

        await fan_out(
            self.background,
            remote,
            call,
            on_outcome,
            timeout_s=options.timeout_ms / 1000,
            on_all_done=read_repair,
            known=known,
            start=start,
        )
        answer = core.response() if core.enough() else core.timeout_response()
        return self._get_answer(answer)

    def _get_answer(self, answer: Found[Object] | Absent[Object] | Failed) -> Object | None:
        if isinstance(answer, Failed):
            self.stats.quorum_failures += 1
            raise answer.error()
        if isinstance(answer, Found):
            return answer.value
        return answer.tombstone

    # -- put ---------------------------------------------------------------------------------

    async def put(
        self,
        bucket: bytes,
        key: bytes,
        meta: WriteMeta,
        body: AsyncIterator[bytes],
        context: str | None,
        query: Mapping[str, str],
        check: BodyCheck | None = None,
    ) -> PutResult:
        check_name(bucket, key)  # before a byte of the body is read or replicated
        started = trio.current_time()
        props = await self.get_props(bucket)
        options = _options(props, query, "put")
        vv = self._decode_context(bucket, key, context)
        targets = self._writable_targets(bucket, key, options)
        content, holders, attached = await self._receive_value(
            meta, body, targets, max(options.w, options.dw, 1)
        )
        # A value held whole for its replicas keeps its upload turn until all have answered.
        given_back = self._upload_turns.release if attached else None
        try:
            if check is not None:
                check.verify()
        except BaseException:
            if given_back is not None:
                given_back()
            raise
        obj = await self._coordinated_put(
            bucket, key, content, vv, options, props, holders, attached, given_back
        )
        self.stats.puts += 1
        self.stats.record(self.stats.put_times_us, int((trio.current_time() - started) * 1e6))
        if not options.returnbody:
            return PutResult(None, None)
        shown = obj if props.allow_mult else _resolved(obj)
        return PutResult(shown, self._encode_context(bucket, key, obj))

    async def delete(
        self, bucket: bytes, key: bytes, context: str | None, query: Mapping[str, str]
    ) -> None:
        check_name(bucket, key)
        props = await self.get_props(bucket)
        options = _options(props, query, "delete")
        vv = self._decode_context(bucket, key, context)
        if vv is None:
            # Riak: a delete without a context deletes whatever version is current.
            current = await self._coordinated_get(
                bucket, key, resolve_options(props, {"r": str(options.r)}, "get"), props
            )
            if current is None:
                raise NotFound("not found")
            vv = current.context()
        targets = self._writable_targets(bucket, key, options)
        tombstone = Content.tombstone(self._now_us())
        await self._coordinated_put(
            bucket, key, tombstone, vv, options, props, [t.node for t in targets]
        )
        self.stats.deletes += 1

    def _writable_targets(
        self, bucket: bytes, key: bytes, options: RequestOptions
    ) -> tuple[Target, ...]:
        """The key's replicas, failing at once when PW or W cannot be met (Riak checks early)."""
        targets = self.targets(bucket, key, options.n)
        primaries = sum(1 for t in targets if t.primary)
        if primaries < options.pw:
            self.stats.quorum_failures += 1
            raise QuorumError("pw", primaries, options.pw, "too few primaries are up")
        if len(targets) < max(options.w, options.dw):
            self.stats.quorum_failures += 1
            raise QuorumError("w", len(targets), max(options.w, options.dw), "too few nodes up")
        return targets

    async def _receive_value(
        self,
        meta: WriteMeta,
        body: AsyncIterator[bytes],
        targets: Sequence[Target],
        needed: int,
    ) -> tuple[Content, list[str], Chunk | None]:
        """Read the body: small values inline, larger ones as chunks.

        Returns the content, the replicas that hold every chunk of it (the ones that may
        coordinate the new version), and the chunk to send with the version. A value of one
        chunk is read whole, under an upload turn the caller gives back: its chunk goes to
        every replica with the version (one call and one commit on each, where a chunk of its
        own costs two), so all targets count as holders. A larger value is streamed to the
        replicas chunk by chunk as it arrives and is not held whole.
        """
        pieces = aiter(body)
        head: list[bytes] = []  # the body's first pieces, joined once rather than grown
        size = 0
        async for piece in pieces:
            head.append(piece)
            size += len(piece)
            if size > self.inline_max:
                break
        else:
            # The whole body fits in the record: no chunks, so none of the upload machinery.
            content = Content.from_bytes(b"".join(head), **self._content_fields(meta))
            return content, [t.node for t in targets], None
        if self._upload_turns.value == 0:
            self.stats.uploads_waited += 1
        await self._upload_turns.acquire()
        try:
            while size <= self.chunk_size:
                piece = await anext(pieces, None)
                if piece is None:
                    data = b"".join(head)
                    digest = chunk_hash(data)
                    content = Content(
                        size=len(data),
                        etag=digest.hex(),
                        inline=None,
                        chunks=(digest,),
                        **self._content_fields(meta),
                    )
                    return content, [t.node for t in targets], (digest, data)
                head.append(piece)
                size += len(piece)
        except BaseException:
            self._upload_turns.release()
            raise
        etag = blake3.blake3()  # of the whole value: more than one chunk, so not any chunk's
        chunker = Chunker(self.chunk_size)
        chunks: list[bytes] = []
        fan_out_chunks = ChunkFanOut(
            self.background,
            self._clients,
            [t.node for t in targets],
            needed,
            when_done=self._upload_turns.release,
        )
        send, receive = trio.open_memory_channel[bytes](UPLOAD_PIPELINE_CHUNKS)

        async def replicate() -> None:
            async with receive:
                async for chunk in receive:
                    chunks.append(await fan_out_chunks.send(chunk))

        async def pass_on(done: Iterable[bytes]) -> None:
            for chunk in done:
                etag.update(chunk)
                await send.send(chunk)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replicate)
                async with send:
                    for piece in head:
                        await pass_on(chunker.feed(piece))
                    async for piece in pieces:
                        await pass_on(chunker.feed(piece))
                    last = chunker.finish()
                    if last is not None:
                        await pass_on([last])
            holders = await fan_out_chunks.finish()
        finally:
            fan_out_chunks.close()
        content = Content(
            size=chunker.total_bytes,
            etag=etag.hexdigest(),
            inline=None,
            chunks=tuple(chunks),
            **self._content_fields(meta),
        )
        return content, holders, None

    def _content_fields(self, meta: WriteMeta) -> dict[str, Any]:
        """A new value's Content fields besides its bytes, stamped now (the body is in)."""
        return dict(
            content_type=meta.content_type,
            charset=meta.charset,
            content_encoding=meta.content_encoding,
            user_meta=meta.user_meta,
            links=meta.links,
            last_modified_us=self._now_us(),
        )

    async def _coordinated_put(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        options: RequestOptions,
        props: BucketProps,
        holders: Sequence[str],
        attached: Chunk | None = None,
        when_replicated: Callable[[], None] | None = None,
    ) -> Object:
        """One replica makes the new version; the others merge it; answer at W/DW/PW.

        The coordinating replica is one that holds every chunk (this node first when it is
        one); if it fails, the next one tries. Replicas that fell behind during the upload
        get the version too, and the chunks they lack with it (`_push_object`). An `attached`
        chunk goes with the version to every replica (`_receive_value`). `when_replicated` is
        called once: after the last replica answered, or as soon as the put fails before
        any was sent the version.
        """
        replicating = False
        try:
            targets = self._writable_targets(bucket, key, options)
            by_node = {t.node: t for t in targets}
            candidates = [by_node[n] for n in self.nearest_first(holders) if n in by_node]
            if not candidates:
                raise QuorumError("w", 0, options.w, "no replica holds the value")
            lww = props.last_write_wins
            new, coordinator = await self._coordinate(
                bucket, key, content, context, lww, candidates, options.timeout_ms / 1000, attached
            )
            replicating = True
        finally:
            if not replicating and when_replicated is not None:
                when_replicated()
        core = PutCore(
            options.n,
            options.w,
            options.pw,
            options.dw,
            primaries=sum(1 for t in targets if t.primary),
        )
        core.add_result(coordinator.node, coordinator.primary, "dw")
        others = [t for t in targets if t.node != coordinator.node]
        sources = [coordinator.node, *(n for n in holders if n != coordinator.node)]

        async def call(target: Target) -> None:
            await self._push_object(target.node, bucket, key, new, sources, lww, attached)

        def start(
            target: Target, deliver: Callable[[Outcome[None]], None], timeout_s: float
        ) -> bool:
            # The merge goes out without a task; only a replica that lacks chunks (it fell
            # behind during the upload) gets a task, to be sent them.
            deadline = trio.current_time() + timeout_s

            def on_merged(error: Exception | None) -> None:
                if isinstance(error, MissingChunks):
                    try:
                        self.background.start_soon(catch_up, target, error, deliver, deadline)
                        return
                    except RuntimeError:  # stopping: the background nursery is closed
                        pass
                deliver(Outcome(target, None, error))

            client = self._clients(target.node)
            return client.start_merge(
                bucket, key, new, lww, on_merged, timeout_s=timeout_s, chunk=attached
            )

        async def catch_up(
            target: Target,
            missing: MissingChunks,
            deliver: Callable[[Outcome[None]], None],
            deadline: float,
        ) -> None:
            outcome: Outcome[None] = Outcome(target, None, trio.TooSlowError())
            with trio.move_on_at(deadline):
                try:
                    await self._push_chunks_and_merge(
                        target.node, bucket, key, new, sources, lww, missing
                    )
                    outcome = Outcome(target, None, None)
                except Exception as exc:  # a replica's failure is a vote, not a crash
                    outcome = Outcome(target, None, exc)
            deliver(outcome)

        def on_outcome(outcome: Outcome[None]) -> bool:
            t = outcome.target
            result = "dw" if outcome.error is None else ("error", repr(outcome.error))
            core.add_result(t.node, t.primary, result)
            return core.enough()

        # Every replica gets the version, even when the coordinator's own write already
        # answers W and DW (w=1): they say when to answer, not where the value goes.
        await fan_out(
            self.background,
            others,
            call,
            on_outcome,
            timeout_s=options.timeout_ms / 1000,
            on_all_done=when_replicated,
            start=start,
        )
        answer = core.response() if core.enough() else core.timeout_response()
        if isinstance(answer, Failed):
            self.stats.quorum_failures += 1
            raise answer.error()
        return new

    async def _coordinate(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        lww: bool,
        candidates: Sequence[Target],
        timeout_s: float,
        attached: Chunk | None,
    ) -> tuple[Object, Target]:
        """Have the first candidate that can make the new version make it.

        A retry after an ambiguous failure can at worst add the value twice as siblings:
        at-least-once, never lost.
        """
        failures: list[str] = []
        with trio.move_on_after(timeout_s):
            for candidate in candidates:
                try:
                    new = await self._clients(candidate.node).coordinate_put(
                        bucket, key, content, context, lww, chunk=attached
                    )
                except RingstoreError as exc:
                    if isinstance(exc, BadRequest):
                        raise
                    failures.append(f"{candidate.node}: {exc}")
                    continue
                return new, candidate
            raise QuorumError("w", 0, 1, "no replica could coordinate: " + "; ".join(failures))
        raise RequestTimeout("request timed out while coordinating the new version")

    async def _push_object(
        self,
        node: str,
        bucket: bytes,
        key: bytes,
        obj: Object,
        sources: Sequence[str],
        lww: bool,
        attached: Chunk | None = None,
    ) -> None:
        """Merge `obj` into `node`'s replica (with the `attached` chunk, if any); send it the
        chunks it lacks first if needed.

        The offer/missing/send exchange of replication, read repair and handoff.
        """
        try:
            await self._clients(node).merge(bucket, key, obj, lww, chunk=attached)
        except MissingChunks as missing:
            await self._push_chunks_and_merge(node, bucket, key, obj, sources, lww, missing)

    async def _push_chunks_and_merge(
        self,
        node: str,
        bucket: bytes,
        key: bytes,
        obj: Object,
        sources: Sequence[str],
        lww: bool,
        missing: MissingChunks,
    ) -> None:
        """The rest of `_push_object` once `node` said which chunks it lacks."""
        client = self._clients(node)
        for digest in sorted(missing.missing):
            data = await self._fetch_chunk(digest, sources)
            await client.write_chunk(data, digest, hashed=True)
        await client.merge(bucket, key, obj, lww)

    async def _fetch_chunk(self, digest: bytes, sources: Sequence[str]) -> bytes:
        """A verified copy of a chunk from the first source that has a good one.

        A source that answered with a corrupt copy (it quarantined it) gets the good bytes
        back in the background: that is the repair of the bad copy.
        """
        damaged: list[str] = []
        errors: list[str] = []
        for node in sources:
            try:
                with trio.fail_after(CHUNK_CALL_TIMEOUT_S):
                    data = await self._clients(node).read_chunk(digest)
                # This node's engine verified the bytes as it read them; others' crossed a wire.
                if node != self.node and chunk_hash(data) != digest:
                    raise ChunkCorrupt(digest, f"bytes from {node} do not match")
            except (RingstoreError, trio.TooSlowError) as exc:
                errors.append(f"{node}: {exc}")
                self.stats.chunk_fallbacks += 1
                if isinstance(exc, ChunkCorrupt | ChunkMissing):
                    damaged.append(node)
                continue
            for bad in damaged:
                self.background.start_soon(self._repair_chunk, bad, data, digest)
            return data
        raise LocalError(f"no replica has a good copy of chunk {digest.hex()}: {'; '.join(errors)}")

    async def fetch_from_peers(self, digest: bytes) -> bytes:
        """A verified copy of a chunk from any other up node (the scrubber's repair source)."""
        return await self._fetch_chunk(digest, sorted(self._up_nodes() - {self.node}))

    async def _repair_chunk(self, node: str, data: bytes, digest: bytes) -> None:
        try:
            with trio.fail_after(CHUNK_CALL_TIMEOUT_S):
                await self._clients(node).write_chunk(data, digest, hashed=True)
            self.stats.chunk_repairs += 1
        except (RingstoreError, trio.TooSlowError) as exc:
            log.warning("repairing chunk %s on %s failed: %s", digest.hex()[:12], node, exc)

    # -- values ------------------------------------------------------------------------------

    async def read_value(
        self, bucket: bytes, key: bytes, content: Content, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        end = content.size if end is None else end
        if not 0 <= start <= end <= content.size:
            raise BadRequest(f"range {start}-{end} is outside the value's {content.size} bytes")
        if content.inline is not None:
            if end > start:
                yield content.inline[start:end]
            return
        props = await self.get_props(bucket)
        nodes = [t.node for t in self.targets(bucket, key, props.n_val)]
        sources = self.nearest_first(nodes)
        size = self.chunk_size
        for index in range(start // size, (end + size - 1) // size):
            data = await self._fetch_chunk(content.chunks[index], sources)
            chunk_start = index * size
            yield data[max(start - chunk_start, 0) : min(end - chunk_start, len(data))]

    # -- listing -----------------------------------------------------------------------------

    async def list_buckets(self) -> AsyncIterator[list[bytes]]:
        found: set[bytes] = set()
        for node in sorted(self._up_nodes()):
            with trio.fail_after(CHUNK_CALL_TIMEOUT_S):
                found.update(await self._clients(node).list_buckets())
        names = sorted(found)
        for start in range(0, len(names), KEY_LIST_BATCH):
            yield names[start : start + KEY_LIST_BATCH]

    async def list_keys(self, bucket: bytes) -> AsyncIterator[list[bytes]]:
        """Each partition's keys from one up replica (a coverage plan), streamed per node."""
        props = await self.get_props(bucket)
        ring = self._ring()
        up = self._up_nodes()
        plan: dict[str, list[int]] = {}
        for partition in range(ring.size):
            # Primaries only, as Riak's coverage plan: a fallback holds only what was written
            # while it stood in, so listing from it would silently miss keys.
            primaries = ring.preflist(partition, props.n_val, up).primaries
            if not primaries:
                raise QuorumError("r", 0, 1, f"no primary of partition {partition} is up")
            plan.setdefault(primaries[0][1], []).append(partition)
        for node, partitions in sorted(plan.items()):
            with trio.fail_after(CHUNK_CALL_TIMEOUT_S):
                keys = await self._clients(node).list_keys(bucket, partitions)
            for start in range(0, len(keys), KEY_LIST_BATCH):
                yield keys[start : start + KEY_LIST_BATCH]

    # -- bucket properties -------------------------------------------------------------------

    async def get_props(self, bucket: bytes) -> BucketProps:
        return await self._props.get(bucket)

    async def set_props(self, bucket: bytes, changes: Mapping[str, object]) -> BucketProps:
        props = BucketProps.from_json(dict(changes), await self._props.get(bucket))
        await self._props.put(bucket, props)
        if self._broadcast_props is not None:
            await self._broadcast_props(bucket, props)
        return props

    async def reset_props(self, bucket: bytes) -> None:
        await self._props.put(bucket, None)
        if self._broadcast_props is not None:
            await self._broadcast_props(bucket, None)

    def info(self) -> NodeInfo:
        stats: dict[str, object] = dict(self.stats.riak_view())
        if self._extra_stats is not None:
            stats.update(self._extra_stats())
        return NodeInfo(self.node, self._version, stats)


def _options(props: BucketProps, query: Mapping[str, str], op: Operation) -> RequestOptions:
    """`resolve_options`, remembered for the few distinct queries clients repeat."""
    return _remembered_options(props, tuple(query.items()), op)


@functools.lru_cache(maxsize=512)
def _remembered_options(
    props: BucketProps, query: tuple[tuple[str, str], ...], op: Operation
) -> RequestOptions:
    return resolve_options(props, dict(query), op)


def _resolved(obj: Object) -> Object:
    """What a bucket with allow_mult=false shows: only the newest sibling (Riak's reconcile).

    A view for the client, never stored: its context still covers every sibling, so a
    write with it replaces them all.
    """
    winner = obj.lww_winner()
    if winner is None or len(obj.siblings()) == 1:
        return obj
    holder = next(e.actor for e in obj.entries if winner in e.values)
    return Object(
        tuple(
            Entry(e.actor, e.counter, (winner,) if e.actor == holder else ()) for e in obj.entries
        )
    )
