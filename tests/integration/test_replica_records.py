"""A replica hands out and takes in object records without decoding or encoding them twice.

`LocalReplica` over the in-memory engine (thread-free), and its RPC handlers called directly:
what they return must be exactly what the engine stores, and the objects they return must
equal what a decode of the stored record gives.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio

from ringstore.coord.remote import RECORD_CALL_TIMEOUT_S, RemoteReplica, replica_handlers
from ringstore.coord.replica import LocalReplica
from ringstore.core import versions
from ringstore.core.hashing import chunk_hash
from ringstore.core.versions import Content, Object
from ringstore.core.wire import Request, encode_frame_parts
from ringstore.errors import MissingChunks, PeerUnavailable, ProtocolError
from ringstore.net.connection import Inline
from ringstore.net.memnet import MemoryNetwork
from ringstore.storage.memory import MemoryStore
from tests.integration.cluster import TEXT, Cluster, body_of, memory_stores

ACTOR = versions.make_actor("n1", b"\x01" * versions.EPOCH_BYTES)
OTHER = versions.make_actor("n2", b"\x02" * versions.EPOCH_BYTES)


def content(value: bytes, modified_us: int = 1) -> Content:
    return Content.from_bytes(value, content_type="text/plain", last_modified_us=modified_us)


@pytest.fixture
async def replica(nursery: trio.Nursery) -> LocalReplica:
    store = MemoryStore(ring_size=16, inline_max=1024, chunk_size=4096)
    await nursery.start(store.run)
    return LocalReplica("n1", ACTOR, store)


async def stored_record(replica: LocalReplica, key: bytes) -> bytes:
    stored = await replica.storage.get_record(b"b", key)
    assert stored is not None
    return stored.record


async def test_coordinate_returns_the_stored_object_and_its_record(replica):
    obj, record = await replica.coordinate_put_record(b"b", b"k", content(b"v1"), None, False)
    assert record == await stored_record(replica, b"k")
    assert Object.decode(record) == obj
    assert obj.encode() == record
    again = await replica.coordinate_put(b"b", b"k", content(b"v2", 2), obj.context(), False)
    assert again == Object.decode(await stored_record(replica, b"k"))
    assert [c.inline for c in again.siblings()] == [b"v2"]


async def test_merge_returns_the_stored_object_whether_or_not_it_changed(replica):
    theirs = versions.coordinate(None, content(b"theirs"), None, OTHER, key_epoch=1)
    merged, record = await replica.merge_put_record(b"b", b"k", theirs, False)
    assert merged == theirs == Object.decode(record)
    assert record == await stored_record(replica, b"k")
    # The same object again changes nothing: the record stays as it was, byte for byte.
    unchanged, same = await replica.merge_put_record(b"b", b"k", theirs, False)
    assert (unchanged, same) == (theirs, record)
    # A concurrent local write makes siblings; merging the old object back keeps them.
    mine = await replica.coordinate_put(b"b", b"k", content(b"mine", 5), None, False)
    assert len(mine.siblings()) == 2
    assert await replica.merge_put(b"b", b"k", theirs, False) == mine
    assert await replica.merge(b"b", b"k", theirs, False) is None
    assert Object.decode(await stored_record(replica, b"k")) == mine


async def test_handlers_send_the_stored_record_as_it_is(replica):
    handlers = replica_handlers(replica)
    get = handlers["replica.get"]
    assert isinstance(get, Inline)  # a point read, answered without a task
    assert get.fn("n2", {"b": b"b", "k": b"k"}) == {"o": None}
    obj = await replica.coordinate_put(b"b", b"k", content(b"v"), None, False)
    record = await stored_record(replica, b"k")
    assert get.fn("n2", {"b": b"b", "k": b"k"}) == {"o": record}

    body = {"b": b"b", "k": b"k2", "c": versions.encode_content(content(b"w")), "lww": False}
    reply = await handlers["replica.coordinate_put"]("n2", body)
    assert reply == {"o": await stored_record(replica, b"k2")}

    theirs = versions.coordinate(obj, content(b"newer", 9), obj.context(), OTHER, key_epoch=1)
    body = {"b": b"b", "k": b"k", "o": theirs.encode(), "lww": False}
    reply = await handlers["replica.merge_put"]("n2", body)
    assert reply == {"o": await stored_record(replica, b"k")}
    assert Object.decode(reply["o"]) == theirs
    # A quiet merge (replication: the coordinator does not read the record) answers empty.
    assert await handlers["replica.merge_put"]("n2", {**body, "quiet": True}) == {}


async def test_remote_merge_does_not_need_the_object_back(replica):
    handlers = replica_handlers(replica)

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        handler = handlers[method]
        if isinstance(handler, Inline):
            return handler.fn("n2", body)
        return await handler("n2", body)

    remote = RemoteReplica("n1", call)
    theirs = versions.coordinate(None, content(b"x"), None, OTHER, key_epoch=1)
    assert await remote.merge(b"b", b"k", theirs, False) is None
    assert await remote.merge_put(b"b", b"k", theirs, False) == theirs
    assert await remote.get(b"b", b"k") == theirs
    assert await remote.get_record(b"b", b"k") == await stored_record(replica, b"k")
    assert await remote.get_record(b"b", b"absent") is None


async def test_a_started_record_read_reports_through_its_function(replica):
    handlers = replica_handlers(replica)
    theirs = versions.coordinate(None, content(b"x"), None, OTHER, key_epoch=1)
    await LocalReplica.merge(replica, b"b", b"k", theirs, False)
    told: list[tuple[bytes | None, Exception | None]] = []
    started: list[tuple[str, str, float]] = []

    def start_call(peer, method, body, *, timeout_s, on_reply) -> bool:
        started.append((peer, method, timeout_s))
        if body["k"] == b"garbled":
            on_reply({"o": "not bytes"}, None)
        elif body["k"] == b"down":
            on_reply(None, PeerUnavailable(peer, "connection lost"))
        else:
            on_reply(handlers[method].fn("n2", body), None)
        return True

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        raise AssertionError("every read here is started")

    remote = RemoteReplica("n1", call, start_call)
    for key in (b"k", b"absent", b"garbled", b"down"):
        assert remote.start_get_record(b"b", key, lambda *answer: told.append(answer), timeout_s=60)
    assert told[:2] == [(await stored_record(replica, b"k"), None), (None, None)]
    assert told[2][0] is None and isinstance(told[2][1], ProtocolError)
    assert told[3][0] is None and isinstance(told[3][1], PeerUnavailable)
    # The call's timeout is the request's, but never over a record call's own bound.
    assert {timeout for _, _, timeout in started} == {RECORD_CALL_TIMEOUT_S}
    assert {(peer, method) for peer, method, _ in started} == {("n1", "replica.get")}
    # Without a start_call nothing starts: the coordinator reads in a task instead.
    assert not RemoteReplica("n1", call).start_get_record(b"b", b"k", told.append, timeout_s=1)
    # The local replica answers before returning.
    local: list[tuple[bytes | None, Exception | None]] = []
    assert replica.start_get_record(b"b", b"k", lambda *a: local.append(a), timeout_s=1)
    assert local == [(await stored_record(replica, b"k"), None)]


async def test_a_started_merge_reports_through_its_function(replica):
    handlers = replica_handlers(replica)
    lacking = chunk_hash(b"a chunk this replica never got")
    told: list[Exception | None] = []
    bodies: list[dict] = []

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        raise AssertionError("every merge here is started")

    def start_call(peer, method, body, *, timeout_s, on_reply) -> bool:
        assert (peer, method, timeout_s) == ("n1", "replica.merge_put", RECORD_CALL_TIMEOUT_S)
        bodies.append(body)
        replies = {
            b"k": ({}, None),
            b"lacks": ({"missing": [lacking]}, None),
            b"garbled": ({"missing": ["not a hash"]}, None),
            b"down": (None, PeerUnavailable(peer, "connection lost")),
        }
        on_reply(*replies[body["k"]])
        return True

    remote = RemoteReplica("n1", call, start_call)
    obj = versions.coordinate(None, content(b"x"), None, OTHER, key_epoch=1)
    for key in (b"k", b"lacks", b"garbled", b"down"):
        assert remote.start_merge(b"b", key, obj, False, told.append, timeout_s=60)
    assert told[0] is None
    assert isinstance(told[1], MissingChunks) and told[1].missing == {lacking}
    assert isinstance(told[2], ProtocolError)
    assert isinstance(told[3], PeerUnavailable)
    # The same quiet body a waiting merge sends: the replica answers without its record.
    assert all(body["quiet"] is True and body["o"] == obj.encode() for body in bodies)
    assert (await handlers["replica.merge_put"]("n2", bodies[0])) == {}
    assert not RemoteReplica("n1", call).start_merge(
        b"b", b"k", obj, False, told.append, timeout_s=1
    )
    # A local merge waits for its commit: it always takes the task path.
    assert not replica.start_merge(b"b", b"k", obj, False, told.append, timeout_s=1)
    assert len(told) == 4


def test_an_objects_encoding_is_kept_and_changes_nothing_else():
    obj = versions.coordinate(None, content(b"value"), None, ACTOR, key_epoch=3)
    fresh = Object(obj.entries)
    first = obj.encode()
    assert obj.encode() is first  # kept, not made again
    assert first == fresh.encode()
    assert obj == fresh and hash(obj) == hash(fresh)
    assert repr(obj) == repr(fresh)
    changed = dataclasses.replace(obj, entries=obj.entries[:0])
    assert changed.encode() != first
    assert Object.decode(first) == obj


async def test_a_coordinated_get_decodes_equal_replies_once(
    nursery, tmp_path, autojump_clock, monkeypatch
):
    cluster = Cluster(
        nursery,
        tmp_path,
        3,
        network=MemoryNetwork(random.Random(0)),
        storage_factory=memory_stores(),
        serve_http=False,
    )
    await cluster.start()
    n1 = cluster.nodes["n1"]
    await n1.coordinator.put(b"b", b"k", TEXT, body_of(b"value"), None, {"w": "3"})

    answered = 0
    all_answered = trio.Event()
    decodes: list[bytes] = []
    real_decode = Object.decode

    def counted_decode(data: bytes) -> Object:
        decodes.append(data)
        return real_decode(data)

    def counted(get_record):
        async def wrapper(self, bucket: bytes, key: bytes) -> bytes | None:
            nonlocal answered
            record = await get_record(self, bucket, key)
            answered += 1
            if answered == 3:
                all_answered.set()
            return record

        return wrapper

    monkeypatch.setattr(Object, "decode", staticmethod(counted_decode))
    real_lookup = LocalReplica.lookup_record

    def counted_lookup(self, bucket: bytes, key: bytes) -> bytes | None:
        nonlocal answered
        if self is n1.replica:  # the coordinator's own replica: read at once, no task
            answered += 1
        return real_lookup(self, bucket, key)

    monkeypatch.setattr(LocalReplica, "lookup_record", counted_lookup)
    real_start = RemoteReplica.start_get_record

    def counted_start(self, bucket, key, on_record, *, timeout_s):
        def counted_on_record(record, error):
            nonlocal answered
            answered += 1
            if answered == 3:
                all_answered.set()
            on_record(record, error)

        return real_start(self, bucket, key, counted_on_record, timeout_s=timeout_s)

    monkeypatch.setattr(RemoteReplica, "get_record", counted(RemoteReplica.get_record))
    monkeypatch.setattr(RemoteReplica, "start_get_record", counted_start)
    result = await n1.coordinator.get(b"b", b"k", {"r": "2"})
    with trio.fail_after(5):
        await all_answered.wait()
    assert [c.inline for c in result.object.siblings()] == [b"value"]
    assert len(decodes) == 1  # three equal records, one decode
    cluster.stop_all()


async def test_a_chunk_sent_with_a_version_leaves_as_it_is_not_copied_into_the_frame():
    sent: list[tuple[str, dict]] = []

    async def call(peer: str, method: str, body: dict, timeout_s: float) -> dict:
        sent.append((method, body))
        return {"o": obj.encode()}

    data = random.Random(4).randbytes(1 << 20)
    chunk = (chunk_hash(data), data)
    obj = versions.coordinate(None, content(b"x"), None, OTHER, key_epoch=1)
    remote = RemoteReplica("n2", call)
    await remote.merge(b"b", b"k", obj, False, chunk=chunk)
    await remote.coordinate_put(b"b", b"k", obj.siblings()[0], None, False, chunk=chunk)
    for method, body in sent:
        parts = encode_frame_parts(Request(1, method, body))
        assert any(part is data for part in parts), method
