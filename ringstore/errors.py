"""The error hierarchy: who did wrong (local or remote) and the HTTP status it maps to."""

from __future__ import annotations


class RingstoreError(Exception):
    """Base of every error ringstore raises on purpose.

    `http_status` is the status the HTTP layer answers with when this error reaches it.
    """

    http_status = 500


class LocalError(RingstoreError):
    """We did something wrong or hit a limit of our own (disk, corruption, bug)."""


class RemoteError(RingstoreError):
    """The other side (a client or a peer) sent something wrong."""

    http_status = 400


class BadRequest(RemoteError):
    """A client's input is malformed or out of range; nothing was changed."""


class BadContext(BadRequest):
    """An X-Riak-Vclock / causal context that cannot be decoded or was forged."""


class KeyTooLong(BadRequest):
    """A bucket or key longer than the documented limit."""


class ProtocolError(RemoteError):
    """A peer broke the wire protocol; the connection is dropped."""


class NotFound(RingstoreError):
    http_status = 404


class MissingChunks(RemoteError):
    """An object record names chunks the replica does not hold.

    The sender answers by sending exactly `missing`.
    """

    http_status = 503

    def __init__(self, missing: frozenset[bytes] | set[bytes]) -> None:
        self.missing = frozenset(missing)
        names = ", ".join(sorted(h.hex() for h in self.missing))
        super().__init__(f"missing {len(self.missing)} chunk(s): {names}")


class ChunkCorrupt(LocalError):
    """A chunk's bytes do not match its hash; the file was quarantined."""

    def __init__(self, chunk_hash: bytes, detail: str = "") -> None:
        self.chunk_hash = chunk_hash
        message = f"chunk {chunk_hash.hex()} is corrupt"
        super().__init__(f"{message}: {detail}" if detail else message)


class ChunkMissing(LocalError):
    """A chunk file named by a record is not on this node's disk."""

    http_status = 503

    def __init__(self, chunk_hash: bytes) -> None:
        self.chunk_hash = chunk_hash
        super().__init__(f"chunk {chunk_hash.hex()} is not stored here")


class StorageClosed(LocalError):
    """An operation on a storage engine that was closed or crashed."""


class QuorumError(RingstoreError):
    """Too few replicas answered in time for the requested quorum."""

    http_status = 503

    def __init__(self, kind: str, got: int, needed: int, detail: str = "") -> None:
        self.kind = kind
        self.got = got
        self.needed = needed
        message = f"{kind} quorum not met: got {got}, needed {needed}"
        super().__init__(f"{message} ({detail})" if detail else message)


class PeerError(RingstoreError):
    """A call to another node did not produce an answer; `peer` names that node."""

    http_status = 503

    def __init__(self, peer: str, message: str) -> None:
        self.peer = peer
        super().__init__(f"peer {peer}: {message}")


class PeerUnavailable(PeerError):
    """The peer cannot be reached: no connection, or the connection broke mid-call."""

    def __init__(self, peer: str, detail: str = "unavailable") -> None:
        super().__init__(peer, detail)


class PeerTimeout(PeerError):
    """The peer did not answer within the call's timeout (it may still act on the call)."""

    def __init__(self, peer: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(peer, f"no answer within {timeout_s:g} s")


class RemoteCallError(PeerError):
    """The peer's handler raised a ringstore error; `kind` is that error's class name."""

    def __init__(self, peer: str, kind: str, message: str) -> None:
        self.kind = kind
        self.remote_message = message
        super().__init__(peer, f"{kind}: {message}")


class LocalProtocolError(LocalError):
    """We tried to send (or set up) something the peer protocol forbids; nothing was sent."""


class ChunkTooLarge(BadRequest):
    """A chunk longer than the engine's chunk size; nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"chunk of at least {size} bytes exceeds the chunk size of {limit}")


class StorageFull(LocalError):
    """The metadata store reached its configured size (LMDB map_size); nothing was written."""

    http_status = 507


class CorruptRecord(LocalError, ValueError):
    """An encoded object record (from disk or a peer) that does not decode to a valid object."""


class RingError(BadRequest, ValueError):
    """A ring, ring size, member list or preference-list request that is malformed or invalid."""


class RequestTimeout(RingstoreError):
    """A request did not finish within its `timeout` (Riak: 503 "request timed out")."""

    http_status = 503


class AttachError(RingstoreError):
    """`ringstore attach` cannot reach a node's admin console, or lost it mid-command."""

    http_status = 503


class BadFormData(BadRequest):
    """A multipart/form-data upload (the web page's) that is malformed; nothing was stored."""
