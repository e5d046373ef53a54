"""Replica operations over the peer protocol: `RemoteReplica` (caller) and its handlers (callee).

Each `ReplicaClient` method is one RPC method (`replica.<name>`) whose body is a CBOR map.
Refusals that carry data (a replica lacking chunks) travel as ordinary replies so the data
survives; other errors arrive as `RemoteCallError` and are mapped back to the local classes
the coordinator acts on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ringstore.coord.replica import (
    CHUNK_CALL_TIMEOUT_S,
    Chunk,
    LocalReplica,
    OnMerged,
    OnRecord,
)
from ringstore.core.hashing import is_chunk_hash
from ringstore.core.versions import (
    Content,
    Object,
    VersionVector,
    decode_content,
    encode_content,
)
from ringstore.errors import (
    BadRequest,
    ChunkCorrupt,
    ChunkMissing,
    MissingChunks,
    ProtocolError,
    RemoteCallError,
)
from ringstore.net.connection import Handler, Inline

Body = dict[str, Any]
Call = Callable[[str, str, Body, float], Awaitable[Body]]
# PeerService.start_call: (peer, method, body, *, timeout_s, on_reply) -> started?
StartCall = Callable[..., bool]

# Per-call timeouts: a record is small and quick (a chunk: replica.CHUNK_CALL_TIMEOUT_S).
RECORD_CALL_TIMEOUT_S = 10.0
LIST_CALL_TIMEOUT_S = 120.0  # a full scan of one node's share of a bucket


def _field(body: Body, name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} is missing or not {kind}")
    return value


def _quiet_merge_body(
    bucket: bytes, key: bytes, obj: Object, lww: bool, chunk: Chunk | None
) -> Body:
    # "quiet": the replica answers without its merged record, which nobody here reads.
    return _with_chunk({"b": bucket, "k": key, "o": obj.encode(), "lww": lww, "quiet": True}, chunk)


def _with_chunk(body: Body, chunk: Chunk | None) -> Body:
    # The bytes as a field of their own: the frame encoder sends them without copying.
    if chunk is not None:
        body["ch"], body["cd"] = chunk
    return body


def _call_timeout_s(chunk: Chunk | None) -> float:
    return RECORD_CALL_TIMEOUT_S if chunk is None else CHUNK_CALL_TIMEOUT_S


def _chunk_from_wire(body: Body) -> Chunk | None:
    """The chunk a version came with ("ch": its hash, "cd": its bytes), verified when stored."""
    if "ch" not in body and "cd" not in body:
        return None
    digest, data = body.get("ch"), body.get("cd")
    if not is_chunk_hash(digest) or not isinstance(data, bytes):
        raise ProtocolError("fields 'ch' and 'cd' are not a chunk hash and its bytes")
    return digest, data


def _record_of(reply: Body) -> bytes | None:
    """The record in a replica.get reply (None: the replica has no such key)."""
    return None if reply.get("o") is None else _field(reply, "o", bytes)


def _vv_to_wire(vv: VersionVector | None) -> list[list[Any]] | None:
    return None if vv is None else [list(pair) for pair in vv.counters]


def _vv_from_wire(value: object) -> VersionVector | None:
    if value is None:
        return None
    try:
        return VersionVector.of(tuple(pair) for pair in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad version vector: {exc}") from None


def _chunk_error(exc: RemoteCallError, digest: bytes) -> Exception:
    if exc.kind == "ChunkCorrupt":
        return ChunkCorrupt(digest, f"on {exc.peer}")
    if exc.kind == "ChunkMissing":
        return ChunkMissing(digest)
    return exc


class RemoteReplica:
    """A `ReplicaClient` for another node, over `call(peer, method, body, timeout_s)` (and
    `start_call`, PeerService's, for the reads that need no waiting task; without it every
    read waits in a task)."""

    def __init__(self, node: str, call: Call, start_call: StartCall | None = None) -> None:
        self.node = node
        self._call = call
        self._start_call = start_call

    async def _request(self, method: str, body: Body, timeout_s: float) -> Body:
        return await self._call(self.node, "replica." + method, body, timeout_s)

    def _start(
        self,
        method: str,
        body: Body,
        timeout_s: float,
        on_reply: Callable[[Body | None, Exception | None], None],
        bound_s: float = RECORD_CALL_TIMEOUT_S,
    ) -> bool:
        """A call without a task waiting for it (PeerService.start_call), if one can start
        now; never longer than `bound_s`, the call's own bound."""
        if self._start_call is None:
            return False
        return self._start_call(
            self.node,
            "replica." + method,
            body,
            timeout_s=min(timeout_s, bound_s),
            on_reply=on_reply,
        )

    async def get(self, bucket: bytes, key: bytes) -> Object | None:
        record = await self.get_record(bucket, key)
        return None if record is None else Object.decode(record)

    async def get_record(self, bucket: bytes, key: bytes) -> bytes | None:
        reply = await self._request("get", {"b": bucket, "k": key}, RECORD_CALL_TIMEOUT_S)
        return _record_of(reply)

    def start_get_record(
        self, bucket: bytes, key: bytes, on_record: OnRecord, *, timeout_s: float
    ) -> bool:
        def replied(reply: Body | None, error: Exception | None) -> None:
            if reply is not None:
                try:
                    record = _record_of(reply)
                except ProtocolError as exc:
                    error = exc
                else:
                    on_record(record, None)
                    return
            on_record(None, error)

        return self._start("get", {"b": bucket, "k": key}, timeout_s, replied)

    async def coordinate_put(
        self,
        bucket: bytes,
        key: bytes,
        content: Content,
        context: VersionVector | None,
        lww: bool,
        *,
        chunk: Chunk | None = None,
    ) -> Object:
        body = {
            "b": bucket,
            "k": key,
            "c": encode_content(content),
            "ctx": _vv_to_wire(context),
            "lww": lww,
        }
        reply = await self._request(
            "coordinate_put", _with_chunk(body, chunk), _call_timeout_s(chunk)
        )
        _raise_missing(reply)
        return Object.decode(_field(reply, "o", bytes))

    async def merge_put(self, bucket: bytes, key: bytes, obj: Object, lww: bool) -> Object:
        body = {"b": bucket, "k": key, "o": obj.encode(), "lww": lww}
        reply = await self._request("merge_put", body, RECORD_CALL_TIMEOUT_S)
        _raise_missing(reply)
        return Object.decode(_field(reply, "o", bytes))

    async def merge(
        self, bucket: bytes, key: bytes, obj: Object, lww: bool, *, chunk: Chunk | None = None
    ) -> None:
        body = _quiet_merge_body(bucket, key, obj, lww, chunk)
        _raise_missing(await self._request("merge_put", body, _call_timeout_s(chunk)))

    def start_merge(
        self,
        bucket: bytes,
        key: bytes,
        obj: Object,
        lww: bool,
        on_merged: OnMerged,
        *,
        timeout_s: float,
        chunk: Chunk | None = None,
    ) -> bool:
        def replied(reply: Body | None, error: Exception | None) -> None:
            if reply is not None:
                try:
                    _raise_missing(reply)
                except (MissingChunks, ProtocolError) as exc:
                    error = exc
            on_merged(error)

        body = _quiet_merge_body(bucket, key, obj, lww, chunk)
        return self._start("merge_put", body, timeout_s, replied, _call_timeout_s(chunk))

    async def missing_chunks(self, hashes: Sequence[bytes]) -> frozenset[bytes]:
        reply = await self._request("missing_chunks", {"h": list(hashes)}, RECORD_CALL_TIMEOUT_S)
        return frozenset(check_hashes(_field(reply, "missing", list)))

    async def write_chunk(self, data: bytes, expected: bytes, *, hashed: bool = False) -> None:
        # `hashed` says nothing about the bytes the peer will receive: it verifies them.
        try:
            await self._request("write_chunk", {"d": data, "h": expected}, CHUNK_CALL_TIMEOUT_S)
        except RemoteCallError as exc:
            raise _chunk_error(exc, expected) from None

    async def read_chunk(self, chunk_hash: bytes) -> bytes:
        try:
            reply = await self._request("read_chunk", {"h": chunk_hash}, CHUNK_CALL_TIMEOUT_S)
        except RemoteCallError as exc:
            raise _chunk_error(exc, chunk_hash) from None
        return _field(reply, "d", bytes)

    async def list_keys(self, bucket: bytes, partitions: Sequence[int]) -> list[bytes]:
        body = {"b": bucket, "p": list(partitions)}
        reply = await self._request("list_keys", body, LIST_CALL_TIMEOUT_S)
        return _bytes_list(_field(reply, "keys", list))

    async def list_buckets(self) -> list[bytes]:
        reply = await self._request("list_buckets", {}, LIST_CALL_TIMEOUT_S)
        return _bytes_list(_field(reply, "buckets", list))


def check_hashes(items: object) -> list[bytes]:
    if not isinstance(items, list) or not all(is_chunk_hash(item) for item in items):
        raise ProtocolError("expected a list of chunk hashes")
    return items


def _raise_missing(reply: Body) -> None:
    missing = reply.get("missing")
    if missing is not None:
        raise MissingChunks(frozenset(check_hashes(missing)))


def _bytes_list(items: list[Any]) -> list[bytes]:
    if not all(isinstance(item, bytes) for item in items):
        raise ProtocolError("expected a list of byte strings")
    return items


def replica_handlers(replica: LocalReplica) -> dict[str, Handler]:
    """The RPC methods that serve this node's `replica` to the coordinators of other nodes."""

    def get(peer: str, body: Body) -> Body:
        # The record goes out as stored: decoding and re-encoding it would only cost time.
        return {"o": replica.lookup_record(_field(body, "b", bytes), _field(body, "k", bytes))}

    async def coordinate_put(peer: str, body: Body) -> Body:
        try:
            content = decode_content(_field(body, "c", bytes))
        except ValueError as exc:
            raise BadRequest(f"bad content from {peer}: {exc}") from None
        try:
            _, record = await replica.coordinate_put_record(
                _field(body, "b", bytes),
                _field(body, "k", bytes),
                content,
                _vv_from_wire(body.get("ctx")),
                bool(body.get("lww")),
                chunk=_chunk_from_wire(body),
            )
        except MissingChunks as exc:
            return {"missing": sorted(exc.missing)}
        return {"o": record}

    async def merge_put(peer: str, body: Body) -> Body:
        try:
            incoming = Object.decode(_field(body, "o", bytes))
        except ValueError as exc:
            raise BadRequest(f"bad object from {peer}: {exc}") from None
        try:
            _, record = await replica.merge_put_record(
                _field(body, "b", bytes),
                _field(body, "k", bytes),
                incoming,
                bool(body.get("lww")),
                chunk=_chunk_from_wire(body),
            )
        except MissingChunks as exc:
            return {"missing": sorted(exc.missing)}
        return {} if body.get("quiet") else {"o": record}

    async def missing_chunks(peer: str, body: Body) -> Body:
        hashes = check_hashes(_field(body, "h", list))
        return {"missing": sorted(await replica.missing_chunks(hashes))}

    async def write_chunk(peer: str, body: Body) -> Body:
        await replica.write_chunk(_field(body, "d", bytes), _field(body, "h", bytes))
        return {}

    async def read_chunk(peer: str, body: Body) -> Body:
        return {"d": await replica.read_chunk(_field(body, "h", bytes))}

    async def list_keys(peer: str, body: Body) -> Body:
        partitions = _field(body, "p", list)
        if not all(isinstance(p, int) for p in partitions):
            raise ProtocolError("partitions must be integers")
        return {"keys": await replica.list_keys(_field(body, "b", bytes), partitions)}

    async def list_buckets(peer: str, body: Body) -> Body:
        return {"buckets": await replica.list_buckets()}

    handlers: dict[str, Handler] = {
        "get": Inline(get),  # a point read on the event loop: answered without a task
        "coordinate_put": coordinate_put,
        "merge_put": merge_put,
        "missing_chunks": missing_chunks,
        "write_chunk": write_chunk,
        "read_chunk": read_chunk,
        "list_keys": list_keys,
        "list_buckets": list_buckets,
    }
    return {"replica." + name: handler for name, handler in handlers.items()}
