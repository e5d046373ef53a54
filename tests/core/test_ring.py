"""Ring value: validation, queries, gossip order, codec, and preference lists."""

from __future__ import annotations

import dataclasses
import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core import hashing
from ringstore.core.claim import achievable_spacing
from ringstore.core.ring import (
    DEFAULT_RING_SIZE,
    MAX_NODE_NAME_CHARS,
    Preflist,
    Ring,
    Target,
    check_ring_size,
)
from ringstore.errors import BadRequest, RingError

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
NAMES = [f"node{i}@10.0.0.{i}" for i in range(40)]

ring_sizes = st.sampled_from(SIZES)
member_lists = st.lists(st.sampled_from(NAMES), min_size=1, max_size=32, unique=True)


@st.composite
def rings(draw: st.DrawFn) -> Ring:
    """Claimed rings, plus some arbitrary (unbalanced, unspaced) owner tuples."""
    size = draw(ring_sizes)
    members = draw(member_lists)
    if draw(st.booleans()):
        return Ring.initial(members, size, draw(st.integers(1, 5)))
    owners = draw(st.lists(st.sampled_from(members), min_size=size, max_size=size))
    return Ring(draw(st.integers(0, 2**63 - 1)), tuple(owners))


def reference_preflist(ring: Ring, partition: int, n: int, up: set[str]) -> Preflist:
    """The documented rule, written out plainly: the oracle for Ring.preflist."""
    walk = [
        (p % ring.size, ring.owners[p % ring.size]) for p in range(partition, partition + ring.size)
    ]
    first_distinct: list[tuple[int, str]] = []
    for p, node in walk:
        if len(first_distinct) < n and node not in (seen for _, seen in first_distinct):
            first_distinct.append((p, node))
    end = walk.index(first_distinct[-1]) + 1
    primaries = [(p, node) for p, node in first_distinct if node in up]
    down = [p for p, node in first_distinct if node not in up]
    listed = {node for _, node in first_distinct}
    candidates: list[str] = []
    for _, node in walk[end:]:
        if node in up and node not in listed and node not in candidates:
            candidates.append(node)
    fallbacks = list(zip(down, candidates, strict=False))
    return Preflist(partition, n, tuple(primaries), tuple(fallbacks))


# ---------------------------------------------------------------------------------------------
# Construction and validation


def test_ring_holds_version_and_owners_and_is_frozen():
    ring = Ring(3, ("a", "b") * 4)
    assert ring.version == 3
    assert ring.size == 8
    assert ring.members == ("a", "b")
    assert ring.owned_by("a") == [0, 2, 4, 6]
    assert ring.owned_by("nobody") == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        ring.version = 4  # type: ignore[misc]
    assert Ring(3, ["a", "b"] * 4) == ring  # a list is taken as a tuple
    assert hash(Ring(3, ("a", "b") * 4)) == hash(ring)


@pytest.mark.parametrize("size", SIZES)
def test_every_power_of_two_from_8_to_1024_is_a_ring_size(size):
    assert check_ring_size(size) == size
    assert Ring(0, ("x",) * size).size == size


@pytest.mark.parametrize("size", [0, 1, 2, 4, 7, 12, 48, 100, 2048, 4096])
def test_other_ring_sizes_are_refused(size):
    with pytest.raises(RingError, match="power of two from 8 to 1024"):
        Ring(1, ("x",) * size)
    with pytest.raises(RingError):
        check_ring_size(size)


@pytest.mark.parametrize("size", [True, 64.0, "64", None, [64]])
def test_a_ring_size_must_be_an_int(size):
    with pytest.raises(RingError):
        check_ring_size(size)


@pytest.mark.parametrize(
    ("version", "owners"),
    [
        (-1, ("a",) * 8),
        (True, ("a",) * 8),
        (1.0, ("a",) * 8),
        ("1", ("a",) * 8),
        (2**63, ("a",) * 8),
        (1, "abcdefgh"),
        (1, None),
        (1, ("a",) * 7 + (None,)),
        (1, ("a",) * 7 + (b"b",)),
        (1, ("a",) * 7 + ([1],)),
        (1, ("a",) * 7 + ("",)),
        (1, ("a",) * 7 + ("x" * (MAX_NODE_NAME_CHARS + 1),)),
        (1, ("a",) * 7 + ("bad\nname",)),
    ],
)
def test_malformed_rings_are_refused_with_ring_error(version, owners):
    with pytest.raises(RingError):
        Ring(version, owners)


def test_ring_error_is_a_bad_request_and_a_value_error():
    assert issubclass(RingError, BadRequest)
    assert issubclass(RingError, ValueError)
    assert RingError.http_status == 400


def test_initial_ring_is_version_one_and_uses_every_member():
    ring = Ring.initial(["c", "a", "b", "d"])
    assert ring.version == 1
    assert ring.size == DEFAULT_RING_SIZE
    assert ring.members == ("a", "b", "c", "d")
    assert all(len(ring.owned_by(node)) == 16 for node in ring.members)


@pytest.mark.parametrize(
    ("members", "size"),
    [
        ([], 64),
        (["a", "a"], 64),
        ("abc", 64),
        (["a", ""], 64),
        (["a", 3], 64),
        (None, 64),
        (["a"], 48),
        (["a"], 2048),
    ],
)
def test_initial_refuses_bad_members_and_sizes(members, size):
    with pytest.raises(RingError):
        Ring.initial(members, size)


# ---------------------------------------------------------------------------------------------
# Queries


@given(rings(), st.binary(max_size=40), st.binary(max_size=40))
@settings(max_examples=100, deadline=None)
def test_partition_of_is_the_hashing_partition(ring, bucket, key):
    p = ring.partition_of(bucket, key)
    assert p == hashing.partition_of(bucket, key, ring.size)
    assert 0 <= p < ring.size


def test_partition_of_wants_bytes():
    ring = Ring.initial(["a"], 8)
    with pytest.raises(RingError):
        ring.partition_of("bucket", b"key")  # type: ignore[arg-type]
    with pytest.raises(RingError):
        ring.partition_of(b"bucket", "key")  # type: ignore[arg-type]


@given(rings())
@settings(max_examples=50, deadline=None)
def test_members_and_owned_by_partition_the_ring(ring):
    assert list(ring.members) == sorted(set(ring.owners))
    owned = sorted(p for node in ring.members for p in ring.owned_by(node))
    assert owned == list(range(ring.size))


def test_newer_than_orders_by_version_then_owners():
    old = Ring(4, ("a", "b") * 4)
    new = Ring(5, ("b", "a") * 4)
    assert new.newer_than(old)
    assert not old.newer_than(new)
    assert not old.newer_than(old)
    assert not old.newer_than(Ring(4, ("a", "b") * 4))
    raced = Ring(4, ("b", "a") * 4)
    # Two claims of one version: exactly one wins, the same one on every node.
    assert raced.newer_than(old) != old.newer_than(raced)
    with pytest.raises(RingError):
        old.newer_than(None)  # type: ignore[arg-type]


@given(rings(), rings())
@settings(max_examples=50, deadline=None)
def test_newer_than_is_a_strict_total_order(a, b):
    assert not (a.newer_than(b) and b.newer_than(a))
    assert a.newer_than(b) or b.newer_than(a) or a == b


def test_transfers_to_lists_the_partitions_that_change_owner():
    old = Ring(1, ("a", "b", "c", "d") * 2)
    new = Ring(2, ("a", "b", "c", "a", "a", "b", "e", "d"))
    assert old.transfers_to(new) == ((3, "d", "a"), (6, "c", "e"))
    assert old.transfers_to(old) == ()
    with pytest.raises(RingError):
        old.transfers_to(Ring(2, ("a",) * 16))


# ---------------------------------------------------------------------------------------------
# Codec


@given(rings())
@settings(max_examples=50, deadline=None)
def test_to_dict_round_trips_through_cbor_and_json(ring):
    data = ring.to_dict()
    assert Ring.from_dict(data) == ring
    assert Ring.from_dict(cbor2.loads(cbor2.dumps(data))) == ring
    assert Ring.from_dict(json.loads(json.dumps(data))) == ring
    # Compact: each partition costs one small integer, not a node name.
    assert all(isinstance(i, int) for i in data["owners"])


def valid_dict() -> dict[str, object]:
    return Ring(7, ("a", "b", "c", "a", "b", "c", "a", "b")).to_dict()


def changed(**fields: object) -> dict[str, object]:
    data = valid_dict()
    data.update(fields)
    return data


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "ring",
        b"\x00",
        {},
        {"version": 1, "owners": [0] * 8},
        changed(extra=1),
        changed(version=-1),
        changed(version=True),
        changed(version="7"),
        changed(version=2**64),
        changed(nodes="abc"),
        changed(nodes=["a", "b"]),  # index 2 has no node
        changed(nodes=["b", "a", "c"]),  # not sorted
        changed(nodes=["a", "a", "c"]),
        changed(nodes=["a", "b", "c", "d"]),  # d owns nothing
        changed(nodes=["a", "b", ""]),
        changed(nodes=["a", "b", 3]),
        changed(nodes=["n"] * 10_000),
        changed(owners=[0] * 7),
        changed(owners=[0] * 12),
        changed(owners=[0, 1, 2, 0, 1, 2, 0, 3]),
        changed(owners=[0, 1, 2, 0, 1, 2, 0, -1]),
        changed(owners=[0, 1, 2, 0, 1, 2, 0, True]),
        changed(owners=[0, 1, 2, 0, 1, 2, 0, 1.0]),
        changed(owners=[0, 1, 2, 0, 1, 2, 0, "1"]),
        changed(owners={0: 1}),
        changed(owners=None),
    ],
)
def test_from_dict_rejects_garbage(data):
    with pytest.raises(RingError):
        Ring.from_dict(data)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5)
)
json_values = st.one_of(
    json_leaves,
    st.lists(json_leaves, max_size=10),
    st.dictionaries(st.text(max_size=8), json_leaves, max_size=4),
)


@given(
    st.one_of(
        json_values,
        st.builds(
            changed,
            version=json_values,
        ),
        st.builds(changed, nodes=json_values),
        st.builds(changed, owners=st.lists(json_values, min_size=8, max_size=8)),
    )
)
@settings(max_examples=200, deadline=None)
def test_from_dict_on_anything_returns_a_ring_or_raises_ring_error(data):
    try:
        ring = Ring.from_dict(data)
    except RingError:
        return
    assert Ring.from_dict(ring.to_dict()) == ring


# ---------------------------------------------------------------------------------------------
# Preference lists


def test_preflist_all_up_is_the_n_owners_from_the_keys_partition():
    ring = Ring(1, ("a", "b", "c", "d") * 2)
    pl = ring.preflist(6, 3)
    assert pl.partition == 6
    assert pl.n == 3
    assert pl.primaries == ((6, "c"), (7, "d"), (0, "a"))
    assert pl.fallbacks == ()
    assert pl.nodes == ("c", "d", "a")
    assert pl.targets == (Target(6, "c", True), Target(7, "d", True), Target(0, "a", True))


def test_a_down_primary_is_replaced_by_the_next_up_node_along_the_ring():
    ring = Ring(1, ("a", "b", "c", "d", "e", "f", "g", "h"))
    pl = ring.preflist(1, 3, up={"a", "b", "d", "e", "f", "g", "h"})
    assert pl.primaries == ((1, "b"), (3, "d"))
    # Partition 2's owner c is down; e (partition 4, the first after the three) holds its
    # replicas, labelled with partition 2 so hinted handoff finds c again.
    assert pl.fallbacks == ((2, "e"),)
    assert pl.targets[-1] == Target(2, "e", False)
    pl = ring.preflist(1, 3, up={"a", "f", "h"})
    assert pl.primaries == ()
    assert pl.fallbacks == ((1, "f"), (2, "h"), (3, "a"))


def test_everything_down_gives_an_empty_preflist():
    ring = Ring.initial(NAMES[:5], 64)
    for up in (set(), frozenset(), [], {"someone-else"}):
        pl = ring.preflist(10, 3, up)
        assert pl.primaries == pl.fallbacks == pl.targets == pl.nodes == ()


def test_fewer_up_nodes_than_n_gives_each_once():
    ring = Ring.initial(["a", "b"], 16, 3)
    assert sorted(ring.preflist(5, 3).nodes) == ["a", "b"]
    assert ring.preflist(5, 3, up={"b"}).nodes == ("b",)


def test_preflist_skips_a_repeated_owner_where_claim_could_not_space_n():
    # 64 partitions over 3 nodes: 22+21+21, so two windows of 3 hold a node twice.
    ring = Ring.initial(["a", "b", "c"], 64, 3)
    windows = [ring.owners[p : p + 3] + ring.owners[: max(0, p + 3 - 64)] for p in range(64)]
    assert any(len(set(window)) < 3 for window in windows)
    for p in range(64):
        pl = ring.preflist(p, 3)
        assert sorted(pl.nodes) == ["a", "b", "c"]
        assert pl.fallbacks == ()


@pytest.mark.parametrize(
    ("partition", "n", "up"),
    [
        (-1, 3, None),
        (64, 3, None),
        (True, 3, None),
        (1.0, 3, None),
        (0, 0, None),
        (0, 65, None),
        (0, True, None),
        (0, "3", None),
        (0, 3, "node0"),
        (0, 3, b"node0"),
    ],
)
def test_preflist_rejects_bad_arguments(partition, n, up):
    ring = Ring.initial(NAMES[:4], 64)
    with pytest.raises(RingError):
        ring.preflist(partition, n, up)


@given(
    st.data(),
    ring_sizes,
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=32, unique=True),
    st.integers(1, 5),
)
@settings(max_examples=150, deadline=None)
def test_preflist_properties(data, size, members, n):
    ring = Ring.initial(members, size, n)
    partition = data.draw(st.integers(0, size - 1))
    up = data.draw(st.sets(st.sampled_from([*members, "stranger"])))
    pl = ring.preflist(partition, n, up)
    assert pl == reference_preflist(ring, partition, n, up)
    assert pl == ring.preflist(partition, n, sorted(up))  # deterministic, any collection
    nodes = pl.nodes
    assert len(nodes) == len(set(nodes)), "a node is listed twice"
    # A member owning no partition (more members than partitions) cannot hold replicas.
    assert set(nodes) <= up & set(ring.members)
    assert len(nodes) == min(n, len(up & set(ring.members)))
    all_up = ring.preflist(partition, n)
    assert all_up == ring.preflist(partition, n, set(members))
    assert all_up.fallbacks == ()
    if len(members) >= n and achievable_spacing(len(members), size, n) == n:
        # Claim met its spacing: the primaries are the owners of the n partitions.
        window = [(p % size, ring.owners[p % size]) for p in range(partition, partition + n)]
        assert all_up.primaries == tuple(window)
        assert len(set(all_up.nodes)) == n
    # Fallbacks replace exactly the down primaries, in order, while up nodes last.
    down = [p for p, node in all_up.primaries if node not in up]
    assert [p for p, _ in pl.fallbacks] == down[: len(pl.fallbacks)]
    assert pl.primaries == tuple((p, node) for p, node in all_up.primaries if node in up)


@given(rings(), st.binary(max_size=20), st.binary(max_size=20), st.integers(1, 5))
@settings(max_examples=50, deadline=None)
def test_key_preflist_is_the_preflist_of_the_keys_partition(ring, bucket, key, n):
    up = set(ring.members[::2])
    assert ring.key_preflist(bucket, key, n, up) == ring.preflist(
        ring.partition_of(bucket, key), n, up
    )
