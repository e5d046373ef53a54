"""The ring: an immutable, versioned partition -> owner map, and the preference lists it gives."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ringstore.core import hashing
from ringstore.errors import RingError

MIN_RING_SIZE = 8  # fewer partitions cannot spread three replicas over more than a few nodes
MAX_RING_SIZE = 1024  # enough for ~100 nodes within 10% of even; more only multiplies handoffs
DEFAULT_RING_SIZE = 64  # Riak's default: balances up to ~16 nodes within one partition
MAX_NODE_NAME_CHARS = 255  # a node name is "name@host"-sized; anything longer is garbage
MAX_RING_VERSION = 2**63 - 1  # versions travel as CBOR integers; keep them in a signed 64-bit
RING_DICT_KEYS = frozenset({"version", "nodes", "owners"})


def check_ring_size(size: object) -> int:
    """Return `size` if it is a power of two in 8..1024, else raise RingError."""
    if type(size) is not int or not MIN_RING_SIZE <= size <= MAX_RING_SIZE or size & (size - 1):
        raise RingError(
            f"ring size must be a power of two from {MIN_RING_SIZE} to {MAX_RING_SIZE}, "
            f"got {size!r:.80}"
        )
    return size


def check_node_name(name: object) -> str:
    """Return `name` if it can name a node (a non-empty str of printable characters)."""
    if type(name) is not str or not 0 < len(name) <= MAX_NODE_NAME_CHARS or not name.isprintable():
        raise RingError(
            f"a node name must be a printable str of 1..{MAX_NODE_NAME_CHARS} characters, "
            f"got {name!r:.80}"
        )
    return name


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise RingError(f"{what} must be an int from {low} to {high}, got {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """One replica of a preference list: the node, and the partition it stores the key for.

    For a fallback, `partition` is the partition of the primary it stands in for (the hint
    that hinted handoff follows back to that partition's owner).
    """

    partition: int
    node: str
    primary: bool


@dataclass(frozen=True, slots=True)
class Preflist:
    """Where the replicas of one key partition go, given which nodes are up.

    `primaries` are the reachable owners among the first `n` distinct owners walking the ring
    from `partition`; `fallbacks` stand in for the unreachable ones, one each, in order.
    """

    partition: int
    n: int
    primaries: tuple[tuple[int, str], ...]
    fallbacks: tuple[tuple[int, str], ...]

    @property
    def targets(self) -> tuple[Target, ...]:
        """Primaries then fallbacks, each flagged with which it is."""
        return tuple(Target(p, node, True) for p, node in self.primaries) + tuple(
            Target(p, node, False) for p, node in self.fallbacks
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        """The distinct nodes to send to: primaries first, then fallbacks."""
        return tuple(node for _, node in self.primaries) + tuple(node for _, node in self.fallbacks)


@dataclass(frozen=True, slots=True)
class Ring:
    """Who owns each of `size` equal partitions, as of `version` (higher replaces lower).

    `owners[i]` is the node owning partition i. Build one with `Ring.initial` or
    `core.claim.claim`; the constructor only validates.
    """

    version: int
    owners: tuple[str, ...]
    _members: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int(self.version, "ring version", 0, MAX_RING_VERSION)
        owners = self.owners
        if isinstance(owners, list):
            owners = tuple(owners)
            object.__setattr__(self, "owners", owners)
        if not isinstance(owners, tuple):
            raise RingError(f"ring owners must be a tuple of node names, got {type(owners)}")
        check_ring_size(len(owners))
        if not all(type(name) is str for name in owners):
            raise RingError("ring owners must be node names (str)")
        distinct = set(owners)
        for name in distinct:
            check_node_name(name)
        object.__setattr__(self, "_members", tuple(sorted(distinct)))

    @classmethod
    def initial(cls, members: Iterable[str], size: int = DEFAULT_RING_SIZE, n_val: int = 3) -> Ring:
        """The first ring (version 1) of a cluster of `members`."""
        from ringstore.core.claim import claim  # claim builds Rings: import here, not in a cycle

        return claim(members, size, n_val, None)

    @property
    def size(self) -> int:
        """Number of partitions (Q)."""
        return len(self.owners)

    @property
    def members(self) -> tuple[str, ...]:
        """The distinct owners, sorted."""
        return self._members

    def partition_of(self, bucket: bytes, key: bytes) -> int:
        """The partition a key hashes to."""
        if not isinstance(bucket, bytes) or not isinstance(key, bytes):
            raise RingError("bucket and key must be bytes")
        return hashing.partition_of(bucket, key, len(self.owners))

    def owned_by(self, node: str) -> list[int]:
        """The partitions `node` owns, ascending (empty for a node not in the ring)."""
        return [p for p, owner in enumerate(self.owners) if owner == node]

    def newer_than(self, other: Ring) -> bool:
        """Whether gossip should replace `other` with this ring.

        Higher version wins. Two different rings with one version (two claims raced) are
        ordered by their owners, so every node keeps the same one: a strict total order.
        """
        if not isinstance(other, Ring):
            raise RingError(f"can only compare a ring with a ring, got {type(other)}")
        return (self.version, self.owners) > (other.version, other.owners)

    def transfers_to(self, new: Ring) -> tuple[tuple[int, str, str], ...]:
        """The partitions whose owner differs in `new`: (partition, old owner, new owner)."""
        if not isinstance(new, Ring) or new.size != self.size:
            raise RingError("transfers are only defined between rings of one size")
        return tuple(
            (p, old, now)
            for p, (old, now) in enumerate(zip(self.owners, new.owners, strict=True))
            if old != now
        )

    def preflist(self, partition: int, n: int, up: Collection[str] | None = None) -> Preflist:
        """Where to put the `n` replicas of keys in `partition`, with `up` the reachable nodes.

        Primaries: walk the ring from `partition` and take owners until `n` distinct ones are
        found, keeping those that are up. Whenever claim met its spacing (see core.claim) that is
        exactly the owners of the `n` partitions from the key's one; where it could not, a
        repeated owner is skipped (as Dynamo does) so replicas still land on distinct nodes.
        Fallbacks (Riak's sloppy quorum): for each down primary in ring order, the next up
        node further along the ring that is not in the list yet. Fewer than `n` targets come
        back only when fewer distinct up nodes exist; no node is listed twice. `up=None`
        means every node is up. Deterministic for a given ring and up set.
        """
        size = len(self.owners)
        _check_int(partition, "partition", 0, size - 1)
        _check_int(n, "n", 1, size)
        if isinstance(up, str | bytes):
            raise RingError("up must be a collection of node names, not one name")
        owners = self.owners
        seen: set[str] = set()
        primaries: list[tuple[int, str]] = []
        down: list[int] = []
        step = 0
        while len(seen) < n and step < size:
            p = (partition + step) % size
            node = owners[p]
            step += 1
            if node in seen:
                continue
            seen.add(node)
            if up is None or node in up:
                primaries.append((p, node))
            else:
                down.append(p)
        fallbacks: list[tuple[int, str]] = []
        for hinted in down:
            while step < size:
                node = owners[(partition + step) % size]
                step += 1
                if node not in seen and (up is None or node in up):
                    seen.add(node)
                    fallbacks.append((hinted, node))
                    break
        return Preflist(partition, n, tuple(primaries), tuple(fallbacks))

    def key_preflist(
        self, bucket: bytes, key: bytes, n: int, up: Collection[str] | None = None
    ) -> Preflist:
        """`preflist` for the partition a key hashes to."""
        return self.preflist(self.partition_of(bucket, key), n, up)

    def to_dict(self) -> dict[str, object]:
        """A plain form for CBOR/JSON: sorted node names, and each partition's index into them."""
        index = {name: i for i, name in enumerate(self._members)}
        return {
            "version": self.version,
            "nodes": list(self._members),
            "owners": [index[owner] for owner in self.owners],
        }

    @classmethod
    def from_dict(cls, data: object) -> Ring:
        """Inverse of `to_dict`; anything but its exact shape raises RingError."""
        if not isinstance(data, dict) or set(data) != RING_DICT_KEYS:
            raise RingError(f"a ring is a map with exactly the keys {sorted(RING_DICT_KEYS)}")
        nodes = data["nodes"]
        indices = data["owners"]
        if not isinstance(nodes, list | tuple) or not isinstance(indices, list | tuple):
            raise RingError("ring nodes and owners must be lists")
        check_ring_size(len(indices))
        if len(nodes) > len(indices):
            raise RingError("a ring lists more nodes than it has partitions")
        for name in nodes:
            check_node_name(name)
        if list(nodes) != sorted(set(nodes)):
            raise RingError("ring nodes must be distinct and sorted")
        for i in indices:
            _check_int(i, "owner index", 0, len(nodes) - 1)
        if len(set(indices)) != len(nodes):
            raise RingError("every listed ring node must own a partition")
        return cls(data["version"], tuple(nodes[i] for i in indices))
