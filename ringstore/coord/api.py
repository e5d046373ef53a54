"""The one narrow handle through which the HTTP and admin layers use a node's key/value store.

`http/` and `admin/` never touch storage or the network: they call a `KV` and get back these
values. Errors arrive as `ringstore.errors` exceptions carrying an `http_status`
(BadRequest 400, NotFound 404, QuorumError 503, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringstore.core.props import BucketProps
    from ringstore.core.versions import Content, Object


@dataclass(frozen=True, slots=True)
class GetResult:
    """A coordinated read. `object` is None when no replica holds the key.

    `context` (the X-Riak-Vclock value) is present whenever an object exists, tombstones
    included, so a client can write over a deletion with causal context.
    """

    object: Object | None
    context: str | None


@dataclass(frozen=True, slots=True)
class WriteMeta:
    """What a client says about a value besides its bytes (everything but the body)."""

    content_type: str
    charset: str | None = None
    content_encoding: str | None = None
    user_meta: tuple[tuple[str, str], ...] = ()
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PutResult:
    """A coordinated write: the stored object (after merging) when `returnbody` was asked."""

    object: Object | None
    context: str | None


@dataclass(frozen=True, slots=True)
class BodyCheck:
    """Runs after the last body byte arrived and before the write is acknowledged.

    `verify()` raises `BadRequest` (for example a Content-Digest mismatch) to abort the
    write: nothing becomes visible and the uploaded chunks stay unreferenced for the sweeper.
    """

    verify: Callable[[], None]


@dataclass(slots=True)
class NodeInfo:
    name: str
    version: str
    stats: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One cluster member as the reporting node sees it."""

    name: str
    up: bool  # answering this node's pings (the node itself is always up)
    partitions: int  # partitions it owns in the reporting node's ring


@dataclass(frozen=True, slots=True)
class HandoffStatus:
    """One partition transfer running on the reporting node (hinted or ownership handoff)."""

    partition: int
    kind: str  # "hinted" (a fallback returning data) or "ownership" (a membership change)
    source: str
    target: str
    objects_sent: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A background worker's name and its one-line status, as the operator sees it."""

    name: str
    status: str


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What one node knows of the cluster right now, for the web page and /metrics.

    `owners[p]` is the owner of partition p in the node's ring. The node fills this on
    demand (it is cheap: no I/O), so a caller may ask for it on every request.
    """

    node: str
    ring_version: int
    owners: tuple[str, ...]
    members: tuple[MemberStatus, ...]
    handoffs: tuple[HandoffStatus, ...] = ()
    workers: tuple[WorkerStatus, ...] = ()


ClusterStatusSource = Callable[[], ClusterStatus]


class KV(Protocol):
    async def get(self, bucket: bytes, key: bytes, query: Mapping[str, str]) -> GetResult:
        """Coordinated read with Riak's query parameters (r, pr, notfound_ok, ...)."""

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
        """Coordinated write. The body is chunked and replicated as it arrives."""

    async def delete(
        self, bucket: bytes, key: bytes, context: str | None, query: Mapping[str, str]
    ) -> None: ...

    def read_value(
        self, bucket: bytes, key: bytes, content: Content, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of one sibling's value, verified chunk by chunk."""

    def list_buckets(self) -> AsyncIterator[list[bytes]]: ...

    def list_keys(self, bucket: bytes) -> AsyncIterator[list[bytes]]: ...

    async def get_props(self, bucket: bytes) -> BucketProps: ...

    async def set_props(self, bucket: bytes, props: Mapping[str, object]) -> BucketProps: ...

    async def reset_props(self, bucket: bytes) -> None: ...

    def info(self) -> NodeInfo: ...
