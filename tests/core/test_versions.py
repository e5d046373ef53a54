"""Tests of core.versions: DVV set laws, histories of writes and merges, KV679, codecs."""

from __future__ import annotations

import base64
import functools
import itertools
import random
from dataclasses import dataclass, field

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringstore.core import versions
from ringstore.core.hashing import chunk_hash
from ringstore.core.versions import (
    MAX_CONTEXT_ACTORS,
    MAX_CONTEXT_CHARS,
    Content,
    Entry,
    Object,
    VersionVector,
    context_scope,
    coordinate,
    decode_context,
    encode_context,
    key_actor,
    make_actor,
    merge,
)
from ringstore.errors import BadContext, CorruptRecord

SECRET = b"cluster secret for tests"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HISTORIES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_labels = itertools.count()


def value(label: str | None = None, ts: int = 0) -> Content:
    """A distinct small value (its etag identifies it)."""
    label = label if label is not None else f"v{next(_labels)}"
    return Content.from_bytes(label.encode(), content_type="text/plain", last_modified_us=ts)


def tombstone(ts: int = 0) -> Content:
    """A distinct tombstone (unlike Content.tombstone, whose etag is always the same)."""
    label = f"t{next(_labels)}".encode()
    return Content(
        content_type="application/octet-stream",
        charset=None,
        content_encoding=None,
        user_meta=(),
        links=(),
        size=0,
        etag=chunk_hash(label).hex(),
        last_modified_us=ts,
        inline=None,
        chunks=(),
        deleted=True,
    )


def node_actor(node: int, life: int = 0) -> bytes:
    return make_actor(f"n{node}@127.0.0.1", bytes([node, life]) * 4)


def etags(obj: Object | None) -> set[str]:
    return set() if obj is None else {c.etag for c in obj.siblings()}


def merge_all(objects, *, lww: bool = False) -> Object | None:
    return functools.reduce(lambda a, b: merge(a, b, lww=lww), objects, None)


# ---------------------------------------------------------------------------------------
# A model of one key on three replicas: random histories of coordinated writes, reads,
# one-way syncs (replication, read repair, anti-entropy), drops of a copy after handing it to
# another replica (handoff, reaping) and wipes after such a handoff (disk lost: the node
# restarts with a new epoch and its key-epoch counter starts over, as it lived in the lost
# data directory). Handing off first keeps every write somewhere, so that a lost write is
# the versions code's fault.


@dataclass
class Replica:
    node: int
    life: int = 0
    next_key_epoch: int = 0
    obj: Object | None = None

    @property
    def actor(self) -> bytes:
        return node_actor(self.node, self.life)

    def take_key_epoch(self) -> int:
        self.next_key_epoch += 1
        return self.next_key_epoch - 1


@dataclass
class History:
    lww: bool
    replicas: list[Replica] = field(default_factory=lambda: [Replica(i) for i in range(3)])
    reads: list[tuple[versions.VersionVector | None, set[str]]] = field(default_factory=list)
    acked: dict[str, Content] = field(default_factory=dict)
    superseded: set[str] = field(default_factory=set)
    dots: dict[tuple[bytes, int], Content] = field(default_factory=dict)
    states: list[Object] = field(default_factory=list)

    def record(self, replica: Replica) -> None:
        # Every dot names one value forever, across all replicas and lives (KV679).
        if replica.obj is None:
            return
        self.states.append(replica.obj)
        for dot, content in replica.obj.dotted_siblings():
            assert self.dots.setdefault(dot, content) == content, f"dot {dot} issued twice"

    def apply(self, op: tuple) -> None:
        kind, i = op[0], op[1]
        replica = self.replicas[i]
        if kind == "write":
            _, _, read_index, ts, deleted = op
            context, seen = (None, set())
            if read_index is not None and self.reads:
                context, seen = self.reads[read_index % len(self.reads)]
            content = tombstone(ts) if deleted else value(ts=ts)
            replica.obj = coordinate(
                replica.obj,
                content,
                context,
                replica.actor,
                lww=self.lww,
                key_epoch=replica.take_key_epoch(),
            )
            self.acked[content.etag] = content
            self.superseded |= seen
        elif kind == "read":
            obj = replica.obj
            self.reads.append((None, set()) if obj is None else (obj.context(), etags(obj)))
        elif kind == "sync":
            source = self.replicas[op[2]]
            replica.obj = merge(replica.obj, source.obj, lww=self.lww)
        elif kind in ("drop", "wipe") and op[2] != i:
            heir = self.replicas[op[2]]
            heir.obj = merge(heir.obj, replica.obj, lww=self.lww)
            self.record(heir)
            if kind == "drop":
                replica.obj = None
            else:
                self.replicas[i] = Replica(replica.node, life=replica.life + 1)
        self.record(self.replicas[i])


replica_index = st.integers(0, 2)
operations = st.one_of(
    st.tuples(
        st.just("write"),
        replica_index,
        st.none() | st.integers(0, 30),
        st.integers(0, 20),
        st.booleans(),
    ),
    st.tuples(st.just("read"), replica_index),
    st.tuples(st.just("sync"), replica_index, replica_index),
    st.tuples(st.just("drop"), replica_index, replica_index),
    st.tuples(st.just("wipe"), replica_index, replica_index),
)


def run_history(ops, *, lww: bool) -> History:
    history = History(lww=lww)
    for op in ops:
        history.apply(op)
    return history


@HISTORIES
@given(ops=st.lists(operations, max_size=40), order=st.permutations(range(3)))
def test_no_acknowledged_write_disappears(ops, order):
    history = run_history(ops, lww=False)
    final = merge_all(history.replicas[i].obj for i in order)
    expected = set(history.acked) - history.superseded
    # Every acknowledged write not replaced by a writer who had read it is still there, and
    # nothing replaced comes back.
    assert etags(final) == expected
    if final is not None:
        # Merging invents no dot and never pairs a dot with another value.
        assert all(history.dots[dot] == c for dot, c in final.dotted_siblings())


@HISTORIES
@given(ops=st.lists(operations, max_size=40), order=st.permutations(range(3)))
def test_lww_history_keeps_the_single_newest_write(ops, order):
    history = run_history(ops, lww=True)
    final = merge_all((history.replicas[i].obj for i in order), lww=True)
    if not history.acked:
        assert final is None
        return
    newest = max(history.acked.values(), key=lambda c: (c.last_modified_us, c.etag))
    assert final is not None
    assert final.siblings() == [newest]
    assert final.lww_winner() == newest


@st.composite
def history_states(draw, lww: bool = False, count: int = 1):
    """`count` states (or None) that replicas held during one random history."""
    ops = draw(st.lists(operations, min_size=1, max_size=25))
    states = [None, *run_history(ops, lww=lww).states]
    return [draw(st.sampled_from(states)) for _ in range(count)]


def history_state(lww: bool = False):
    return history_states(lww=lww).map(lambda states: states[0])


# ---------------------------------------------------------------------------------------
# Merge laws: on states real histories reach, and on any structurally valid object
# (including dots issued twice with different values, which only a KV679 bug produces).

POOL = [value(f"pool{i}", ts=i % 2) for i in range(4)]


@st.composite
def any_objects(draw):
    actors = draw(st.lists(st.sampled_from([b"a", b"b", b"c"]), unique=True))
    entries = []
    for actor in sorted(actors):
        counter = draw(st.integers(1, 6))
        n = draw(st.integers(0, min(counter, 3)))
        values = draw(st.lists(st.sampled_from(POOL), min_size=n, max_size=n))
        entries.append(Entry(actor, counter, tuple(values)))
    return Object(tuple(entries))


# Three objects: arbitrary ones, or three states of one history.
triples = st.tuples(*[st.none() | any_objects()] * 3) | history_states(count=3)


@FAST
@given(triple=triples)
def test_merge_is_commutative_associative_idempotent(triple):
    a, b, c = triple
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, None) == a
    merged = merge(a, b)
    if merged is not None:
        # The context is the join of both contexts.
        for side in (a, b):
            if side is not None:
                assert merged.context().descends(side.context())


@FAST
@given(triple=triples)
def test_lww_merge_is_commutative_idempotent_and_keeps_the_newest(triple):
    a, b, _ = triple
    merged = merge(a, b, lww=True)
    assert merged == merge(b, a, lww=True)
    assert merge(merged, merged, lww=True) == merged
    if merged is not None and merged.siblings():
        survivors = merge(a, b).siblings()
        assert merged.lww_winner() == max(
            survivors, key=lambda x: (x.last_modified_us, x.etag, x.inline)
        )


@FAST
@given(triple=history_states(lww=True, count=3))
def test_lww_merge_is_a_join_on_lww_histories(triple):
    a, b, c = triple
    assert merge(merge(a, b, lww=True), c, lww=True) == merge(a, merge(b, c, lww=True), lww=True)
    assert merge(a, a, lww=True) == a
    for state in (a, b, c):
        assert state is None or len(state.siblings()) == 1


# ---------------------------------------------------------------------------------------
# Contexts: what a write replaces.


@FAST
@given(
    base=history_state(),
    concurrent=st.lists(st.tuples(replica_index, st.booleans()), max_size=4),
    writer=replica_index,
    writer_saw_concurrent=st.booleans(),
    order=st.permutations(range(3)),
)
def test_a_write_with_a_read_context_replaces_exactly_what_was_read(
    base, concurrent, writer, writer_saw_concurrent, order
):
    replicas = [Replica(i, obj=base) for i in range(3)]
    context, read = (None, set()) if base is None else (base.context(), etags(base))
    others = []
    for i, stale in concurrent:
        # Concurrent writes by other clients, blind or with the same (now stale) context.
        content = value()
        r = replicas[i]
        r.obj = coordinate(r.obj, content, context if stale else None, r.actor, key_epoch=9)
        others.append(content.etag)
    if writer_saw_concurrent:
        replicas[writer].obj = merge_all(r.obj for r in replicas)
    new = value()
    r = replicas[writer]
    r.obj = coordinate(r.obj, new, context, r.actor, key_epoch=9)
    final = merge_all(replicas[i].obj for i in order)
    assert etags(final) == (etags(base) - read) | set(others) | {new.etag}


@FAST
@given(
    base=history_state(),
    writes=st.lists(st.tuples(replica_index, st.booleans()), min_size=1, max_size=6),
    order=st.permutations(range(3)),
    pairwise=st.lists(st.tuples(replica_index, replica_index), max_size=6),
)
def test_concurrent_writes_all_survive_any_merge_order(base, writes, order, pairwise):
    replicas = [Replica(i, obj=base) for i in range(3)]
    stale = None if base is None else base.context()
    written = set()
    for i, use_stale in writes:
        content = value()
        r = replicas[i]
        r.obj = coordinate(r.obj, content, stale if use_stale else None, r.actor, key_epoch=4)
        written.add(content.etag)
    for target, source in pairwise:
        replicas[target].obj = merge(replicas[target].obj, replicas[source].obj)
    final = merge_all(replicas[i].obj for i in order)
    assert written <= etags(final)
    covered = etags(base) if any(use_stale for _, use_stale in writes) else set()
    assert etags(final) == (etags(base) - covered) | written


# ---------------------------------------------------------------------------------------
# Examples that read like dvvset's own (actors a and b, one key epoch each).

A, B = node_actor(1), node_actor(2)
A0, B0 = key_actor(A, 0), key_actor(B, 0)


def shape(obj: Object) -> dict[bytes, tuple[int, list[bytes | None]]]:
    return {e.actor: (e.counter, [v.inline for v in e.values]) for e in obj.entries}


def test_examples_of_coordinated_writes():
    v = {name: value(name) for name in ("v1", "v2", "v3", "v4", "v5")}
    s = {}
    # name: (coordinator, local state, value, context taken from state, expected shape)
    table = [
        ("s0", A, None, "v1", None, {A0: (1, [b"v1"])}),
        ("s1", A, "s0", "v2", "s0", {A0: (2, [b"v2"])}),
        ("s2", B, "s1", "v3", "s1", {A0: (2, []), B0: (1, [b"v3"])}),
        ("s3", B, "s1", "v4", "s0", {A0: (2, [b"v2"]), B0: (1, [b"v4"])}),
        ("s4", A, "s1", "v5", "s0", {A0: (3, [b"v5", b"v2"])}),
        ("s5", A, "s4", "v1", None, {A0: (4, [b"v1", b"v5", b"v2"])}),
    ]
    for name, actor, local, val, ctx, expected in table:
        context = s[ctx].context() if ctx else None
        local_obj = s[local] if local else None
        s[name] = coordinate(local_obj, v[val], context, actor, key_epoch=0)
        assert shape(s[name]) == expected, name


def test_example_concurrent_write_stays_while_the_read_one_is_replaced():
    # dvvset's sync_update_test: Mary writes v1; Peter reads it; Mary writes v2 blind;
    # Peter writes v3 with what he read: v1 goes, v2 stays beside v3.
    s0 = coordinate(None, value("v1"), None, A, key_epoch=0)
    peter = s0.context()
    s1 = coordinate(s0, value("v2"), None, A)
    s2 = coordinate(s1, value("v3"), peter, A)
    assert peter == VersionVector.of({A0: 1})
    assert shape(s1) == {A0: (2, [b"v2", b"v1"])}
    assert shape(s2) == {A0: (3, [b"v3", b"v2"])}


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ({b"a": (1, [])}, {b"a": (2, ["v2", "v1"])}, {b"a": (2, ["v2"])}),
        ({b"x": (1, [])}, {b"a": (1, ["v1"])}, {b"a": (1, ["v1"]), b"x": (1, [])}),
        ({b"a": (1, ["v1"])}, {b"b": (1, ["v2"])}, {b"a": (1, ["v1"]), b"b": (1, ["v2"])}),
        (
            {b"a": (2, []), b"b": (1, ["v3"])},
            {b"a": (2, []), b"c": (1, ["v3"])},
            {b"a": (2, []), b"b": (1, ["v3"]), b"c": (1, ["v3"])},
        ),
        ({b"a": (3, ["v3"])}, {b"a": (3, ["v3", "v2"])}, {b"a": (3, ["v3"])}),
        ({b"a": (4, ["v4", "v3"])}, {b"a": (3, ["v3", "v2"])}, {b"a": (4, ["v4", "v3"])}),
    ],
    ids=["newer-replaces", "other-actor", "concurrent", "dvvset-sync", "pruned", "overlap"],
)
def test_merge_examples(left, right, expected):
    def build(spec):
        return Object(
            tuple(
                Entry(actor, n, tuple(value(v) for v in vals))
                for actor, (n, vals) in sorted(spec.items())
            )
        )

    assert merge(build(left), build(right)) == build(expected)
    assert merge(build(right), build(left)) == build(expected)


def test_lww_examples():
    old = value("old", ts=100)
    newer = value("newer", ts=200)
    late = value("late", ts=50)  # coordinated by a node whose clock lags
    s0 = coordinate(None, old, None, A, lww=True, key_epoch=0)
    s1 = coordinate(s0, newer, None, B, lww=True, key_epoch=0)
    assert s1.siblings() == [newer]
    s2 = coordinate(s1, late, s1.context(), A, lww=True)
    # The newest value stays, under the new dot: the write happened, its value lost.
    assert s2.siblings() == [newer]
    assert s2.dotted_siblings() == [((A0, 2), newer)]
    concurrent = coordinate(s0, value("x", ts=150), None, node_actor(3), lww=True, key_epoch=0)
    assert merge(s2, concurrent, lww=True).siblings() == [newer]
    assert merge(s2, concurrent).lww_winner() == newer


def test_lww_winner_breaks_timestamp_ties_by_etag():
    x, y = value("x", ts=7), value("y", ts=7)
    both = merge(
        coordinate(None, x, None, A, key_epoch=0), coordinate(None, y, None, B, key_epoch=0)
    )
    assert both.lww_winner() == max(x, y, key=lambda c: c.etag)
    assert len(merge(both, both, lww=True).siblings()) == 1


def test_tombstones_are_siblings():
    live = coordinate(None, value("v"), None, A, key_epoch=0)
    deleted = coordinate(live, Content.tombstone(5), live.context(), A)
    assert deleted.is_tombstone()
    assert [c.deleted for c in deleted.siblings()] == [True]
    concurrent = coordinate(live, value("w"), None, B, key_epoch=0)
    both = merge(deleted, concurrent)
    assert not both.is_tombstone()
    assert sorted(c.deleted for c in both.siblings()) == [False, True]


def test_chunk_hashes_collects_every_sibling():
    h1, h2 = chunk_hash(b"one"), chunk_hash(b"two")
    big = Content("application/x", None, None, (), (), 10, "ab", 1, None, (h1, h2))
    also = Content("application/x", None, None, (), (), 5, "cd", 2, None, (h2,))
    obj = merge(
        coordinate(None, big, None, A, key_epoch=0), coordinate(None, also, None, B, key_epoch=0)
    )
    assert obj.chunk_hashes() == frozenset({h1, h2})
    assert Object(()).chunk_hashes() == frozenset()


# ---------------------------------------------------------------------------------------
# KV679: a replica that forgot its own writes must never issue one of their dots again.


def test_a_wiped_node_with_a_new_epoch_keeps_both_old_and_new_writes():
    first = coordinate(None, value("before"), None, node_actor(1, life=0), key_epoch=0)
    replica_b = merge(None, first)  # replicated, then node 1 loses its disk
    after = coordinate(None, value("after"), None, node_actor(1, life=1), key_epoch=0)
    assert not set(dict(after.dotted_siblings())) & set(dict(replica_b.dotted_siblings()))
    assert {c.inline for c in merge(replica_b, after).siblings()} == {b"before", b"after"}


def test_reusing_a_dot_loses_a_write_which_is_why_epochs_exist():
    # The control for the test above: the same actor and key epoch after the loss.
    first = coordinate(None, value("before"), None, A, key_epoch=0)
    after = coordinate(None, value("after"), None, A, key_epoch=0)
    assert len(merge(first, after).siblings()) == 1


def test_a_key_recreated_after_its_tombstone_was_reaped_survives_a_doomstone():
    # Riak's KV679 story: a fallback keeps the tombstone after the primaries reaped it.
    v1 = coordinate(None, value("v1"), None, A, key_epoch=0)
    tomb = coordinate(v1, Content.tombstone(1), v1.context(), A)
    fallback = merge(None, tomb)
    recreated = coordinate(None, value("v2"), None, A, key_epoch=1)  # A holds nothing now
    healed = merge(recreated, fallback)
    assert b"v2" in {c.inline for c in healed.siblings()}
    # With the reaped key actor reused, the old tombstone would win.
    reused = coordinate(None, value("v2"), None, A, key_epoch=0)
    assert b"v2" not in {c.inline for c in merge(reused, fallback).siblings()}


def test_a_replica_continues_its_own_key_actor_and_needs_no_new_epoch():
    s0 = coordinate(None, value(), None, A, key_epoch=5)
    s1 = coordinate(s0, value(), s0.context(), A)
    assert [e.actor for e in s1.entries] == [key_actor(A, 5)]
    other_life = coordinate(s1, value(), s1.context(), node_actor(1, life=1), key_epoch=0)
    assert {e.actor for e in other_life.entries} == {
        key_actor(A, 5),
        key_actor(node_actor(1, 1), 0),
    }


def test_a_context_ahead_of_the_local_copy_starts_a_new_key_epoch():
    # The local copy came back stale (read repair after a drop); a client saw more of A's dots.
    s0 = coordinate(None, value(), None, A, key_epoch=0)
    s1 = coordinate(s0, value(), None, A)
    s2 = coordinate(s1, value(), None, A)
    new = coordinate(s0, value("new"), s2.context(), A, key_epoch=1)
    assert new.dotted_siblings()[-1][0] == (key_actor(A, 1), 1)
    assert b"new" in {c.inline for c in merge(new, s2).siblings()}


def test_coordinating_a_key_not_held_requires_a_key_epoch():
    with pytest.raises(ValueError, match="key_epoch"):
        coordinate(None, value(), None, A)
    s0 = coordinate(None, value(), None, A, key_epoch=3)
    with pytest.raises(ValueError, match="used before"):
        coordinate(None, value(), s0.context(), A, key_epoch=3)


@pytest.mark.parametrize(
    ("node", "epoch"),
    [("", b"12345678"), ("a/b", b"12345678"), ("n" * 101, b"12345678"), ("n", b"1234")],
)
def test_make_actor_rejects_bad_names_and_epochs(node, epoch):
    with pytest.raises(ValueError):
        make_actor(node, epoch)


def test_actor_shape():
    assert make_actor("dev1@127.0.0.1", bytes(range(8))) == b"dev1@127.0.0.1@0001020304050607"
    assert key_actor(b"n@00", 12) == b"n@00/12"
    assert len(versions.new_epoch(random.Random(1))) == versions.EPOCH_BYTES


# ---------------------------------------------------------------------------------------
# The record codec.


@FAST
@given(obj=any_objects() | history_state() | history_state(lww=True))
def test_object_encoding_round_trips_deterministically(obj):
    if obj is None:
        return
    data = obj.encode()
    assert Object.decode(data) == obj
    assert Object.decode(data).encode() == data
    # An equal object reached another way encodes to the same bytes.
    assert merge(Object.decode(data), obj).encode() == data


def test_content_with_every_field_round_trips():
    h = chunk_hash(b"x")
    rich = Content(
        content_type="image/png",
        charset="utf-8",
        content_encoding="gzip",
        user_meta=(("color", "blue"), ("Owner", "ann")),
        links=('</buckets/b/keys/k>; riaktag="next"',),
        size=3_000_000,
        etag="00ff",
        last_modified_us=1_700_000_000_000_000,
        inline=None,
        chunks=(h, h, chunk_hash(b"y")),
    )
    obj = coordinate(None, rich, None, A, key_epoch=0)
    assert Object.decode(obj.encode()).siblings() == [rich]


@FAST
@given(data=st.binary(max_size=300))
def test_garbage_records_raise_corrupt_record_only(data):
    try:
        Object.decode(data)
    except CorruptRecord:
        pass


@FAST
@given(obj=history_state(), position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_damaged_records_raise_corrupt_record_only(obj, position, byte):
    if obj is None:
        return
    data = bytearray(obj.encode())
    data[position % len(data)] = byte
    try:
        Object.decode(bytes(data))
    except CorruptRecord:
        pass


GOOD = value("good")
GOOD_ITEM = versions._content_to_cbor(GOOD)


@pytest.mark.parametrize(
    "item",
    [
        [],
        [2, []],
        [True, []],
        [1, [[b"a", 1, [GOOD_ITEM, GOOD_ITEM]]]],  # two values, one dot
        [1, [[b"b", 1, []], [b"a", 1, []]]],  # unsorted actors
        [1, [[b"a", 1, []], [b"a", 2, []]]],  # an actor twice
        [1, [[b"a", 0, []]]],
        [1, [[b"a", -1, []]]],
        [1, [[b"a", True, []]]],
        [1, [[b"a", 2**64, []]]],
        [1, [["a", 1, []]]],
        [1, [[b"", 1, []]]],
        [1, [[b"a", 1, [GOOD_ITEM[:-1]]]]],
        [1, [[b"a", 1, [[*GOOD_ITEM[:5], 99, *GOOD_ITEM[6:]]]]]],  # size disagrees
        [1, [[b"a", 1, [[*GOOD_ITEM[:6], "XYZ", *GOOD_ITEM[7:]]]]]],  # etag not hex
        [1, [[b"a", 1, [[*GOOD_ITEM[:3], [["k"]], *GOOD_ITEM[4:]]]]]],  # meta not a pair
        [1, [[b"a", 1, [[*GOOD_ITEM[:9], [b"short"], *GOOD_ITEM[10:]]]]]],  # bad chunk hash
        [1, [[b"a", 1, [[*GOOD_ITEM[:10], 1]]]]],  # deleted not a bool
        [1, [[b"a", 1, [[*GOOD_ITEM[:10], True]]]]],  # tombstone with a value
        {"format": 1},
    ],
)
def test_malformed_records_are_rejected(item):
    with pytest.raises(CorruptRecord):
        Object.decode(cbor2.dumps(item))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        bytes.fromhex("5b7fffffffffffffff"),  # claims an exabyte of bytes
        b"\x81" * 100 + b"\x01",  # deep nesting
        cbor2.dumps(cbor2.CBORTag(1, "not a date")),
        "text, not bytes",
    ],
)
def test_undecodable_records_are_rejected(data):
    with pytest.raises(CorruptRecord):
        Object.decode(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content_type": ""},
        {"size": -1},
        {"size": 3},  # inline is 4 bytes
        {"etag": "ABC"},
        {"etag": ""},
        {"last_modified_us": -1},
        {"user_meta": (("a",),)},
        {"user_meta": [("a", "b")]},
        {"links": ("ok", 3)},
        {"chunks": (chunk_hash(b"c"),)},  # both inline and chunked
        {"inline": None},  # neither inline nor chunked
        {"deleted": 1},
        {"deleted": True},  # a tombstone holding a value
        {"charset": b"utf-8"},
    ],
)
def test_content_constructor_rejects_inconsistent_fields(kwargs):
    fields = {
        "content_type": "text/plain",
        "charset": None,
        "content_encoding": None,
        "user_meta": (),
        "links": (),
        "size": 4,
        "etag": "abcd",
        "last_modified_us": 0,
        "inline": b"abcd",
        "chunks": (),
    }
    with pytest.raises(ValueError):
        Content(**{**fields, **kwargs})


def test_object_constructor_rejects_bad_structure():
    with pytest.raises(ValueError):
        Object((Entry(b"b", 1), Entry(b"a", 1)))
    with pytest.raises(ValueError):
        Entry(b"a", 1, (GOOD, GOOD))
    with pytest.raises(ValueError):
        Entry(b"a", 0)
    with pytest.raises(TypeError):
        merge(GOOD, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The context codec: X-Riak-Vclock.

actors = st.binary(min_size=1, max_size=versions.MAX_ACTOR_BYTES)
contexts = st.dictionaries(actors, st.integers(1, versions.MAX_COUNTER), max_size=8).map(
    VersionVector.of
)
scopes = st.binary(max_size=40)


@FAST
@given(vv=contexts, scope=scopes)
def test_context_round_trips_deterministically(vv, scope):
    text = encode_context(vv, SECRET, scope=scope)
    assert decode_context(text, SECRET, scope=scope) == vv
    assert decode_context(text.encode(), SECRET, scope=scope) == vv
    assert encode_context(vv, SECRET, scope=scope) == text
    base64.b64decode(text, validate=True)  # a plain base64 header value


def test_largest_context_fits_the_limits():
    big = VersionVector.of(
        {i.to_bytes(2, "big") * 80: versions.MAX_COUNTER for i in range(MAX_CONTEXT_ACTORS)}
    )
    text = encode_context(big, SECRET)
    assert len(text) < MAX_CONTEXT_CHARS
    assert decode_context(text, SECRET) == big
    with pytest.raises(ValueError):
        encode_context(
            VersionVector.of({bytes([i, j]): 1 for i in range(2) for j in range(200)}), SECRET
        )


@FAST
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_garbage_contexts_raise_bad_context_only(text):
    with pytest.raises(BadContext):
        decode_context(text, SECRET)


@FAST
@given(vv=contexts, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_tampered_contexts_are_rejected(vv, position, bit):
    raw = bytearray(base64.b64decode(encode_context(vv, SECRET)))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(BadContext):
        decode_context(base64.b64encode(bytes(raw)).decode(), SECRET)


@FAST
@given(vv=contexts, cut=st.integers(min_value=1))
def test_truncated_contexts_are_rejected(vv, cut):
    text = encode_context(vv, SECRET)
    with pytest.raises(BadContext):
        decode_context(text[: -(1 + cut % len(text))], SECRET)


def test_context_from_another_cluster_or_object_is_rejected():
    vv = VersionVector.of({A0: 3})
    here = context_scope(b"bucket", b"key")
    text = encode_context(vv, SECRET, scope=here)
    assert decode_context(text, SECRET, scope=here) == vv
    for secret, scope in [
        (b"other secret", here),
        (SECRET, context_scope(b"bucket", b"other")),
        (SECRET, context_scope(b"bucketk", b"ey")),
        (SECRET, b""),
    ]:
        with pytest.raises(BadContext, match="not issued"):
            decode_context(text, secret, scope=scope)


def signed(item) -> str:
    return versions._sign_context_payload(cbor2.dumps(item), SECRET)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not issued"),
        ("!!!!", "base64"),
        ("QUJD", "not issued"),
        ("é", "base64"),
        ("A" * (MAX_CONTEXT_CHARS + 4), "limit"),
        (versions._sign_context_payload(b"\xff", SECRET), "CBOR"),
        (signed([2, []]), "format"),
        (signed([1, [[b"a", 0]]]), "counter"),
        (signed([1, [[b"a", -5]]]), "counter"),
        (signed([1, [[b"a", True]]]), "counter"),
        (signed([1, [[b"a", 2**70]]]), "counter"),
        (signed([1, [[b"b", 1], [b"a", 1]]]), "sorted"),
        (signed([1, [[b"a", 1], [b"a", 2]]]), "sorted"),
        (signed([1, [["a", 1]]]), "actor"),
        (signed([1, [[b"a" * 161, 1]]]), "actor"),
        (signed([1, [[b"a", 1, 2]]]), "pairs"),
        (signed([1, [[bytes([i, j]), 1] for i in range(2) for j in range(200)]]), "more than"),
        (signed({"a": 1}), "format"),
        (signed([1, [[b"a", 1]]])[:-1], "base64"),
    ],
)
def test_malformed_contexts_name_the_problem(text, reason):
    with pytest.raises(BadContext, match=reason):
        decode_context(text, SECRET)


def test_non_text_context_is_bad_context():
    with pytest.raises(BadContext):
        decode_context(None, SECRET)  # type: ignore[arg-type]
    with pytest.raises(BadContext):
        decode_context(b"\xff\xfe", SECRET)


def test_version_vector_is_a_sorted_mapping():
    vv = VersionVector.of({b"b": 2, b"a": 1, b"c": 0})
    assert list(vv) == [b"a", b"b"]
    assert dict(vv) == {b"a": 1, b"b": 2}
    assert vv.get(b"z", 0) == 0
    assert vv.descends(VersionVector.of({b"a": 1}))
    assert not VersionVector.of({b"a": 1}).descends(vv)
    with pytest.raises(ValueError):
        VersionVector(((b"b", 1), (b"a", 1)))
    with pytest.raises(ValueError):
        VersionVector.of([(b"a", 1), (b"a", 2)])
    with pytest.raises(ValueError):
        VersionVector.of({b"a": -1})
