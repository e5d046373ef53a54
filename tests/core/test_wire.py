"""Tests of the peer protocol core: codec round trips, strictness, fuzzing and the handshake."""

from __future__ import annotations

import enum
import functools
import io
import itertools
import random

import cbor2
import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ringstore.core.strict_cbor import MAX_DEPTH, MAX_ITEMS_PER_FRAME, Decoder
from ringstore.core.wire import (
    CLOSED,
    HANDSHAKE_MAX_FRAME_BYTES,
    LENGTH_PREFIX_BYTES,
    MAX_FRAME_BYTES,
    MAX_ID,
    METHOD_PATTERN,
    NEED_DATA,
    NONCE_BYTES,
    Challenge,
    Connection,
    Established,
    Handshake,
    Hello,
    Ping,
    Pong,
    Proof,
    Reply,
    Request,
    Role,
    decode_payload,
    encode_frame,
)
from ringstore.errors import LocalError, LocalProtocolError, ProtocolError

SECRET = b"the cluster secret used in tests"
OTHER_SECRET = b"a different secret, same length"
SMALL_FRAME_BYTES = 8192  # keeps fuzzing of established connections quick


def nonce(seed: int) -> bytes:
    return random.Random(seed).randbytes(NONCE_BYTES)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big") + payload


def pump(client: Connection, server: Connection) -> None:
    """Carry handshake bytes both ways until neither side has anything more to say."""
    seen: dict[Role, list[object]] = {Role.CLIENT: [], Role.SERVER: []}
    for _ in range(4):
        for sender, receiver in ((client, server), (server, client)):
            data = sender.data_to_send()
            if data:
                receiver.receive_data(data)
            while (event := receiver.next_event()) is not NEED_DATA:
                seen[receiver.role].append(event)
    assert seen[Role.CLIENT] == [Established(server.node_name)]
    assert seen[Role.SERVER] == [Established(client.node_name)]


def connected_pair(max_frame_bytes: int = MAX_FRAME_BYTES) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, "alpha", SECRET, nonce(1), max_frame_bytes=max_frame_bytes)
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2), max_frame_bytes=max_frame_bytes)
    pump(client, server)
    assert client.established and server.established
    return client, server


def feed_in_pieces(conn: Connection, data: bytes, cuts: list[int]) -> list[object]:
    """Feed `data` split at `cuts`, draining events after each piece as a driver does."""
    events: list[object] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue
        conn.receive_data(data[start:end])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
        # Only part of one frame may stay buffered between pieces.
        assert conn.buffered_bytes < LENGTH_PREFIX_BYTES + conn.max_frame_bytes
    return events


# --- strategies ------------------------------------------------------------------------------

ids = st.integers(0, MAX_ID)
methods = st.from_regex(METHOD_PATTERN, fullmatch=True)
keys = st.text(max_size=8) | st.binary(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)


def nesting(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


# The message map and the body take 2 of MAX_DEPTH levels.
bodies = st.dictionaries(keys, values, max_size=5).filter(lambda b: nesting(b) <= MAX_DEPTH - 1)
names = st.text(
    st.characters(categories=("L", "N", "P", "S")) | st.just(" "), min_size=1, max_size=30
)
nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
macs = st.binary(min_size=32, max_size=32)
application_messages = st.one_of(
    st.builds(Request, ids, methods, bodies),
    st.builds(Reply, ids, st.booleans(), bodies),
    st.builds(Ping, ids),
    st.builds(Pong, ids),
)
handshake_messages = st.one_of(
    st.builds(Hello, names, nonces, st.integers(0, 0xFFFF)),
    st.builds(Challenge, names, nonces, macs),
    st.builds(Proof, macs),
)


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(application_messages, min_size=1, max_size=6), st.booleans(), st.data())
def test_messages_round_trip_in_random_splits(messages, from_client, data):
    client, server = connected_pair()
    sender, receiver = (client, server) if from_client else (server, client)
    stream = b"".join(sender.send(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert feed_in_pieces(receiver, stream, cuts) == messages


@settings(max_examples=40, deadline=None)
@given(st.lists(application_messages, min_size=1, max_size=3))
def test_messages_round_trip_byte_by_byte(messages):
    client, server = connected_pair()
    stream = b"".join(client.send(m) for m in messages)
    assert feed_in_pieces(server, stream, list(range(len(stream)))) == messages


@settings(max_examples=100, deadline=None)
@given(application_messages | handshake_messages)
def test_every_message_type_round_trips_through_the_codec(message):
    data = encode_frame(message)
    assert int.from_bytes(data[:LENGTH_PREFIX_BYTES], "big") == len(data) - LENGTH_PREFIX_BYTES
    assert decode_payload(data[LENGTH_PREFIX_BYTES:]) == message


@settings(max_examples=60, deadline=None)
@given(application_messages | handshake_messages)
def test_frames_are_standard_cbor(message):
    """Our strict codec agrees with cbor2 both ways, so any CBOR library can speak it."""
    payload = encode_frame(message)[LENGTH_PREFIX_BYTES:]
    wire_map = cbor2.loads(payload)
    assert wire_map["type"] == message.TYPE
    assert wire_map["id"] == getattr(message, "id", 0)
    assert all(wire_map[name] == getattr(message, name) for name in message.FIELDS)
    assert decode_payload(cbor2.dumps(wire_map)) == message


def test_bytearray_values_are_sent_as_byte_strings():
    client, server = connected_pair()
    server.receive_data(client.send(Request(1, "put", {"a": bytearray(b"12"), "b": b"3"})))
    event = server.next_event()
    assert event == Request(1, "put", {"a": b"12", "b": b"3"})
    assert all(type(v) is bytes for v in event.body.values())


def blob_reply(size: int, seed: int = 0) -> Reply:
    return Reply(7, True, {"data": random.Random(seed).randbytes(size)})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(MAX_FRAME_BYTES - 64, MAX_FRAME_BYTES), st.integers(0, 2**32), st.data())
def test_bytes_bodies_near_the_maximum_frame_size(size, seed, data):
    client, server = connected_pair()
    message = blob_reply(size, seed)
    payload_bytes = len(encode_frame(message, MAX_FRAME_BYTES + 1024)) - LENGTH_PREFIX_BYTES
    if payload_bytes > MAX_FRAME_BYTES:
        with pytest.raises(LocalProtocolError, match="frame limit"):
            client.send(message)
        return
    stream = client.send(message)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    assert feed_in_pieces(server, stream, cuts) == [message]


def test_exact_maximum_frame_is_accepted_and_one_byte_more_is_not():
    client, server = connected_pair()
    probe = len(encode_frame(blob_reply(MAX_FRAME_BYTES - 1000))) - LENGTH_PREFIX_BYTES
    exact = blob_reply(MAX_FRAME_BYTES - 1000 + MAX_FRAME_BYTES - probe)
    stream = client.send(exact)
    assert len(stream) == LENGTH_PREFIX_BYTES + MAX_FRAME_BYTES
    assert feed_in_pieces(server, stream, [3, 1000]) == [exact]

    too_big = blob_reply(MAX_FRAME_BYTES - 1000 + MAX_FRAME_BYTES - probe + 1)
    with pytest.raises(LocalProtocolError, match="frame limit"):
        client.send(too_big)
    # A peer allowing itself more is refused at the length prefix, before the body arrives.
    oversized = encode_frame(too_big, MAX_FRAME_BYTES + 1)
    server.receive_data(oversized[:LENGTH_PREFIX_BYTES])
    with pytest.raises(ProtocolError, match="exceeds"):
        server.next_event()


def test_max_frame_bytes_is_a_constructor_parameter():
    client, server = connected_pair(max_frame_bytes=5000)
    assert server.max_frame_bytes == 5000
    with pytest.raises(LocalProtocolError):
        client.send(blob_reply(5000))
    server.receive_data((5001).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        server.next_event()


# --- bounded input and EOF -------------------------------------------------------------------


@pytest.mark.parametrize("established", [False, True])
def test_oversize_length_prefix_is_rejected_before_buffering(established):
    if established:
        _, conn = connected_pair()
        limit = MAX_FRAME_BYTES
    else:
        conn = Connection(Role.SERVER, "beta", SECRET, nonce(2))
        limit = HANDSHAKE_MAX_FRAME_BYTES
    conn.receive_data((limit + 1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ProtocolError, match=f"exceeds the {limit}-byte limit"):
        conn.next_event()
    assert conn.buffered_bytes == 0


def test_length_prefix_at_the_limit_waits_for_the_body():
    _, server = connected_pair()
    server.receive_data(MAX_FRAME_BYTES.to_bytes(4, "big"))
    assert server.next_event() is NEED_DATA


def test_unauthenticated_peers_get_only_small_frames():
    """Before the handshake the limit is HANDSHAKE_MAX_FRAME_BYTES, whatever max_frame_bytes."""
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    server.receive_data((HANDSHAKE_MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        server.next_event()


def test_feeding_without_draining_is_refused_once_a_maximum_frame_is_buffered():
    client, server = connected_pair(max_frame_bytes=5000)
    data = client.send(Ping(1)) * 2000
    with pytest.raises(LocalProtocolError, match="next_event"):
        for start in range(0, len(data), 100):
            server.receive_data(data[start : start + 100])
    assert server.buffered_bytes < LENGTH_PREFIX_BYTES + 5000 + 100
    assert server.next_event() == Ping(1)  # the refusal changed nothing


def test_eof_at_a_frame_boundary_is_closed():
    client, server = connected_pair()
    server.receive_data(client.send(Ping(3)))
    server.receive_data(b"")
    assert server.next_event() == Ping(3)
    assert server.next_event() is CLOSED
    assert server.next_event() is CLOSED
    server.receive_data(b"")  # repeating EOF is harmless
    with pytest.raises(LocalProtocolError, match="after EOF"):
        server.receive_data(b"more")
    assert server.send(Pong(3)) == client.send(Pong(3))  # half-closed: we may still answer


def test_eof_mid_frame_is_a_protocol_error():
    client, server = connected_pair()
    data = client.send(Request(1, "get", {"k": b"v"}))
    server.receive_data(data[:-1])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="mid-frame"):
        server.next_event()


def test_eof_mid_length_prefix_is_a_protocol_error():
    _, server = connected_pair()
    server.receive_data(b"\x00\x00")
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="mid-frame"):
        server.next_event()


def test_eof_before_the_handshake_completes_is_a_protocol_error():
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="before the handshake"):
        server.next_event()


def test_a_connection_is_dead_after_a_protocol_error():
    client, server = connected_pair()
    server.receive_data(frame(b"\xff"))
    with pytest.raises(ProtocolError):
        server.next_event()
    for call in (
        server.next_event,
        lambda: server.receive_data(client.send(Ping(1))),
        lambda: server.send(Pong(1)),
        server.data_to_send,
    ):
        with pytest.raises(ProtocolError, match="connection is dead"):
            call()


# --- strict decoding -------------------------------------------------------------------------


def request_map(**changes: object) -> dict[str, object]:
    wire_map: dict[str, object] = {"type": "request", "id": 1, "method": "get", "body": {}}
    wire_map.update(changes)
    return {k: v for k, v in wire_map.items() if v is not DROP}


DROP = object()


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def hello_map(**changes: object) -> dict[str, object]:
    return {"type": "hello", "id": 0, "name": "a", "nonce": bytes(32), "version": 1, **changes}


# name -> (payload, what the error must say: proves the intended check fired)
BAD_PAYLOADS = {
    "empty payload": (b"", "ends before"),
    "not a map": (cbor2.dumps([1, 2]), "must hold a CBOR map"),
    "trailing bytes": (cbor2.dumps(request_map()) + b"\x00", "1 stray bytes"),
    "truncated": (cbor2.dumps(request_map())[:-1], "frame ends"),
    "tag": (cbor2.dumps(request_map(body={"t": cbor2.CBORTag(1, 0)})), "tags are not allowed"),
    "bignum tag": (cbor2.dumps(request_map(id=2**70)), "tags are not allowed"),
    "float": (cbor2.dumps(request_map(body={"f": 1.5})), "floats"),
    "undefined": (cbor2.dumps(request_map(body={"u": cbor2.undefined})), "simple values"),
    "indefinite map": (cbor2.dumps(request_map(), indefinite_containers=True), "indefinite"),
    "lone break": (b"\xff", "simple values"),
    "reserved info": (b"\x1c", "reserved"),
    "duplicate key": (
        b"\xa5" + cbor2.dumps(request_map())[1:] + cbor2.dumps("id") + b"\x02",
        "duplicate map key 'id'",
    ),
    "int key": (cbor2.dumps(request_map(body={1: 2})), "map key 1 is not str or bytes"),
    "bad utf-8": (b"\xa1\x61\xff\x01", "UTF-8"),
    "too deep": (cbor2.dumps(request_map(body={"d": nested(MAX_DEPTH)})), "frame nests deeper"),
    "too many items": (
        cbor2.dumps(request_map(body={"z": [0] * MAX_ITEMS_PER_FRAME})),
        "frame holds over",
    ),
    "huge array count": (b"\x9b" + (2**63).to_bytes(8, "big"), "array is longer"),
    "huge map count": (b"\xbb" + (2**62).to_bytes(8, "big"), "map is longer"),
    "huge string length": (b"\x5b" + (2**63).to_bytes(8, "big") + b"x", "inside a CBOR string"),
    "unknown type": (cbor2.dumps(request_map(type="shout")), "unknown message type 'shout'"),
    "type not str": (cbor2.dumps(request_map(type=b"request")), "unknown message type"),
    "missing key": (cbor2.dumps(request_map(body=DROP)), r"missing keys \['body'\]"),
    "extra key": (cbor2.dumps(request_map(extra=1)), "unexpected keys"),
    "negative id": (cbor2.dumps(request_map(id=-1)), "id must be"),
    "id too big": (cbor2.dumps(request_map(id=2**63)), "id must be"),
    "bool id": (cbor2.dumps(request_map(id=True)), "id must be"),
    "bad method": (cbor2.dumps(request_map(method="GET /")), "method must match"),
    "long method": (cbor2.dumps(request_map(method="m" * 65)), "method must match"),
    "body not map": (cbor2.dumps(request_map(body=[1])), "body must be a dict"),
    "ok not bool": (
        cbor2.dumps({"type": "reply", "id": 1, "ok": 1, "body": {}}),
        "ok must be a bool",
    ),
    "handshake id": (cbor2.dumps({"type": "proof", "id": 5, "mac": bytes(32)}), "carry id 0"),
    "short nonce": (cbor2.dumps(hello_map(nonce=b"x")), "nonce must be 32 bytes"),
    "empty name": (cbor2.dumps(hello_map(name="")), "node name"),
    "unprintable name": (cbor2.dumps(hello_map(name="a\nb")), "node name"),
    "bool version": (cbor2.dumps(hello_map(version=True)), "version must be"),
}


@pytest.mark.parametrize("payload, reason", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_malformed_payloads_are_protocol_errors(payload, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode_payload(payload)
    _, server = connected_pair()
    server.receive_data(frame(payload))
    with pytest.raises(ProtocolError, match=reason):
        server.next_event()


# The message map, its 4 keys and 4 values, the body's key and its list are 11 items; the
# message map and the body are 2 levels of nesting.
ITEMS_AROUND_BODY_LIST = 11
LEVELS_AROUND_BODY_VALUE = 2


def test_limits_allow_exactly_their_maximum_on_both_sides():
    deepest = nested(MAX_DEPTH - LEVELS_AROUND_BODY_VALUE)
    most = [0] * (MAX_ITEMS_PER_FRAME - ITEMS_AROUND_BODY_LIST)
    for body in ({"d": deepest}, {"z": most}):
        message = Request(1, "get", body)
        assert decode_payload(encode_frame(message)[LENGTH_PREFIX_BYTES:]) == message
    for body in ({"d": [deepest]}, {"z": [*most, 0]}):
        with pytest.raises(ProtocolError):
            decode_payload(cbor2.dumps(request_map(body=body)))
        with pytest.raises(LocalProtocolError):
            Request(1, "get", body)
    assert decode_payload(cbor2.dumps(request_map(id=MAX_ID))).id == MAX_ID


def test_non_shortest_heads_are_accepted():
    payload = b"\xa2" + cbor2.dumps("type") + cbor2.dumps("ping") + cbor2.dumps("id") + b"\x18\x05"
    assert decode_payload(payload) == Ping(5)


# --- local errors ----------------------------------------------------------------------------


class Number(enum.IntEnum):
    ONE = 1


class Method(enum.StrEnum):
    GET = "get"


# Exact types only: what the peer decodes must equal what we built.
BAD_CONSTRUCTIONS = {
    "negative id": lambda: Ping(-1),
    "id too big": lambda: Pong(MAX_ID + 1),
    "bool id": lambda: Ping(True),
    "str id": lambda: Ping("1"),
    "method uppercase": lambda: Request(1, "Get"),
    "method empty": lambda: Request(1, ""),
    "method bytes": lambda: Request(1, b"get"),
    "body list": lambda: Request(1, "get", [1]),
    "float value": lambda: Request(1, "get", {"f": 1.0}),
    "tuple value": lambda: Request(1, "get", {"t": (1, 2)}),
    "set value": lambda: Reply(1, True, {"s": {1}}),
    "memoryview value": lambda: Reply(1, True, {"m": memoryview(b"x")}),
    "subclass value": lambda: Reply(1, True, {"e": Role.CLIENT}),
    "int subclass id": lambda: Ping(Number.ONE),
    "str subclass method": lambda: Request(1, Method.GET),
    "bool key": lambda: Reply(1, True, {"nested": {True: 1}}),
    "int too big": lambda: Reply(1, True, {"i": 2**64}),
    "int too small": lambda: Reply(1, True, {"i": -(2**64) - 1}),
    "huge int": lambda: Reply(1, True, {"i": 10**5000}),
    "int key": lambda: Reply(1, True, {1: 1}),
    "surrogate": lambda: Reply(1, True, {"s": "\ud800"}),
    "too deep": lambda: Reply(1, True, {"d": nested(MAX_DEPTH)}),
    "too many items": lambda: Reply(1, True, {"z": [0] * MAX_ITEMS_PER_FRAME}),
    "ok int": lambda: Reply(1, 1),
    "name empty": lambda: Hello("", bytes(32)),
    "name too long": lambda: Hello("n" * 256, bytes(32)),
    "name newline": lambda: Hello("a\nb", bytes(32)),
    "nonce short": lambda: Hello("a", bytes(31)),
    "nonce bytearray": lambda: Hello("a", bytearray(32)),
    "version": lambda: Hello("a", bytes(32), 70000),
    "mac short": lambda: Proof(b"x"),
    "challenge mac": lambda: Challenge("a", bytes(32), bytes(31)),
    "short secret": lambda: Connection(Role.CLIENT, "a", b"short", nonce(1)),
    "str secret": lambda: Connection(Role.CLIENT, "a", "x" * 32, nonce(1)),
    "bad nonce": lambda: Connection(Role.CLIENT, "a", SECRET, b"\x00"),
    "bad name": lambda: Connection(Role.CLIENT, "", SECRET, nonce(1)),
    "bad role": lambda: Connection("client", "a", SECRET, nonce(1)),
    "small frames": lambda: Connection(Role.CLIENT, "a", SECRET, nonce(1), max_frame_bytes=100),
    "huge frames": lambda: Connection(Role.CLIENT, "a", SECRET, nonce(1), max_frame_bytes=2**32),
}


@pytest.mark.parametrize("build", BAD_CONSTRUCTIONS.values(), ids=BAD_CONSTRUCTIONS.keys())
def test_invalid_local_values_raise_local_protocol_error(build):
    with pytest.raises(LocalProtocolError):
        build()
    assert issubclass(LocalProtocolError, LocalError)


def test_sending_invalid_things_raises_local_error_and_changes_nothing():
    client, server = connected_pair()
    body: dict[object, object] = {"ok": 1}
    request = Request(1, "put", body)
    body["bad"] = 1.5  # bodies are plain dicts: send() checks again
    with pytest.raises(LocalProtocolError, match="float"):
        client.send(request)
    for bad in (Hello("alpha", nonce(9)), Proof(bytes(32)), "ping", None):
        with pytest.raises(LocalProtocolError):
            client.send(bad)
    with pytest.raises(LocalProtocolError):
        client.receive_data("text")
    server.receive_data(client.send(Ping(4)))
    assert server.next_event() == Ping(4)


def test_nothing_but_handshake_before_it_completes():
    client = Connection(Role.CLIENT, "alpha", SECRET, nonce(1))
    with pytest.raises(LocalProtocolError, match="before the handshake"):
        client.send(Ping(1))
    assert client.data_to_send()  # the Hello, still queued: the refusal changed nothing


# --- handshake -------------------------------------------------------------------------------


def test_handshake_succeeds_and_names_both_sides():
    client = Connection(Role.CLIENT, "alpha", SECRET, nonce(1))
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    assert server.data_to_send() == b""
    assert (client.peer_name, server.peer_name) == (None, None)
    server.receive_data(client.data_to_send())
    assert server.next_event() is NEED_DATA
    assert server.peer_name is None  # named, but not yet proven
    client.receive_data(server.data_to_send())
    assert client.next_event() == Established("beta")
    assert client.established and client.peer_name == "beta"
    assert client.next_event() is NEED_DATA
    # The client may send at once, right behind its Proof.
    server.receive_data(client.data_to_send() + client.send(Request(1, "get")))
    assert server.next_event() == Established("alpha")
    assert server.next_event() == Request(1, "get")
    assert server.established and server.peer_name == "alpha"
    assert client.data_to_send() == server.data_to_send() == b""
    assert (client.role, server.role, server.node_name) == (Role.CLIENT, Role.SERVER, "beta")


@settings(max_examples=40, deadline=None)
@given(names, names, nonces, nonces, st.binary(min_size=16, max_size=64))
def test_handshake_succeeds_for_any_names_and_nonces(name_c, name_s, nonce_c, nonce_s, secret):
    assume(name_c != name_s)
    client = Connection(Role.CLIENT, name_c, secret, nonce_c)
    server = Connection(Role.SERVER, name_s, secret, nonce_s)
    pump(client, server)
    assert (client.peer_name, server.peer_name) == (name_s, name_c)


def test_wrong_secret_fails_on_the_client():
    client = Connection(Role.CLIENT, "alpha", OTHER_SECRET, nonce(1))
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    server.receive_data(client.data_to_send())
    server.next_event()
    client.receive_data(server.data_to_send())
    with pytest.raises(ProtocolError, match="failed to prove the secret"):
        client.next_event()
    assert not client.established


def test_wrong_secret_fails_on_the_server():
    """A client with another secret, talking to an impostor of the server that shares it."""
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    impostor = Connection(Role.SERVER, "beta", OTHER_SECRET, nonce(2))
    client = Connection(Role.CLIENT, "alpha", OTHER_SECRET, nonce(1))
    hello = client.data_to_send()
    server.receive_data(hello)
    assert server.next_event() is NEED_DATA
    impostor.receive_data(hello)
    impostor.next_event()
    client.receive_data(impostor.data_to_send())
    assert client.next_event() == Established("beta")  # fooled: the impostor shares its secret
    server.receive_data(client.data_to_send())
    with pytest.raises(ProtocolError, match="client 'alpha' failed to prove the secret"):
        server.next_event()
    assert not server.established and server.peer_name is None


def record_session(server_nonce: bytes) -> bytes:
    """Everything an honest client sent in one successful session."""
    client = Connection(Role.CLIENT, "alpha", SECRET, nonce(1))
    server = Connection(Role.SERVER, "beta", SECRET, server_nonce)
    sent = client.data_to_send()
    server.receive_data(sent)
    server.next_event()
    client.receive_data(server.data_to_send())
    client.next_event()
    return sent + client.data_to_send()


def test_replayed_proof_from_an_earlier_session_fails():
    recorded = record_session(nonce(2))
    fresh = Connection(Role.SERVER, "beta", SECRET, nonce(3))
    fresh.receive_data(recorded)
    with pytest.raises(ProtocolError, match="failed to prove the secret"):
        fresh.next_event()
    # Control: only the fresh server nonce stops the replay.
    reused = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    reused.receive_data(recorded)
    assert reused.next_event() == Established("alpha")


def test_replayed_challenge_fails_on_a_fresh_client():
    first = Connection(Role.CLIENT, "alpha", SECRET, nonce(1))
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    server.receive_data(first.data_to_send())
    server.next_event()
    challenge = server.data_to_send()
    second = Connection(Role.CLIENT, "alpha", SECRET, nonce(4))
    second.receive_data(challenge)
    with pytest.raises(ProtocolError, match="server 'beta' failed"):
        second.next_event()


def test_reflected_server_mac_is_not_a_proof():
    server = Connection(Role.SERVER, "beta", SECRET, nonce(2))
    server.receive_data(encode_frame(Hello("mallory", nonce(5))))
    server.next_event()
    challenge = decode_payload(server.data_to_send()[LENGTH_PREFIX_BYTES:])
    server.receive_data(encode_frame(Proof(challenge.mac)))
    with pytest.raises(ProtocolError, match="failed to prove"):
        server.next_event()


HANDSHAKE_VIOLATIONS = {
    "request first": (Role.SERVER, [Request(1, "get")]),
    "ping first": (Role.SERVER, [Ping(1)]),
    "proof first": (Role.SERVER, [Proof(bytes(32))]),
    "challenge to a server": (Role.SERVER, [Challenge("x", nonce(5), bytes(32))]),
    "duplicate hello": (Role.SERVER, [Hello("x", nonce(5)), Hello("x", nonce(5))]),
    "request after hello": (Role.SERVER, [Hello("x", nonce(5)), Request(1, "get")]),
    "hello to a client": (Role.CLIENT, [Hello("x", nonce(5))]),
    "reply before challenge": (Role.CLIENT, [Reply(1, True)]),
    "proof to a client": (Role.CLIENT, [Proof(bytes(32))]),
    "other version": (Role.SERVER, [Hello("x", nonce(5), 2)]),
    "our own name": (Role.SERVER, [Hello("me", nonce(5))]),
}


@pytest.mark.parametrize(
    "role, messages", HANDSHAKE_VIOLATIONS.values(), ids=HANDSHAKE_VIOLATIONS.keys()
)
def test_handshake_violations_are_protocol_errors(role, messages):
    conn = Connection(role, "me", SECRET, nonce(1))
    *before, last = messages
    for message in before:
        conn.receive_data(encode_frame(message))
        assert conn.next_event() is NEED_DATA
    conn.receive_data(encode_frame(last))
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert not conn.established


def test_handshake_messages_after_the_handshake_are_protocol_errors():
    client, server = connected_pair()
    server.receive_data(encode_frame(Hello("alpha", nonce(1))))
    with pytest.raises(ProtocolError, match="after the handshake"):
        server.next_event()
    client.receive_data(encode_frame(Challenge("beta", nonce(2), bytes(32))))
    with pytest.raises(ProtocolError, match="after the handshake"):
        client.next_event()


def test_handshake_state_machine_alone():
    client = Handshake(Role.CLIENT, "alpha", SECRET, nonce(1))
    server = Handshake(Role.SERVER, "beta", SECRET, nonce(2))
    with pytest.raises(LocalProtocolError, match="start"):
        client.receive(Challenge("beta", nonce(2), bytes(32)))
    hello = client.start()
    assert server.start() is None
    with pytest.raises(LocalProtocolError, match="already started"):
        client.start()
    challenge = server.receive(hello)
    proof = client.receive(challenge)
    assert client.done and client.peer_name == "beta"
    assert server.receive(proof) is None
    assert server.done and server.peer_name == "alpha"
    with pytest.raises(ProtocolError):
        server.receive(proof)
    with pytest.raises(ProtocolError, match="already failed"):
        server.receive(proof)


# --- fuzzing ---------------------------------------------------------------------------------


def fresh_connections() -> list[Connection]:
    client, server = connected_pair(max_frame_bytes=SMALL_FRAME_BYTES)
    return [
        Connection(Role.SERVER, "beta", SECRET, nonce(2)),
        Connection(Role.CLIENT, "alpha", SECRET, nonce(1)),
        client,
        server,
    ]


def survive(conn: Connection, data: bytes, cuts: list[int], eof: bool) -> None:
    """Feed hostile bytes; only ProtocolError may escape, and buffering must stay bounded."""
    limit = LENGTH_PREFIX_BYTES + max(conn.max_frame_bytes, HANDSHAKE_MAX_FRAME_BYTES)
    bounds = [0, *sorted(set(cuts)), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    try:
        for piece in pieces + ([b""] if eof else []):
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                if event is CLOSED:
                    return
                assert isinstance(event, Request | Reply | Ping | Pong)
                assert decode_payload(encode_frame(event)[LENGTH_PREFIX_BYTES:]) == event
            assert conn.buffered_bytes < limit
    except ProtocolError:
        assert conn.buffered_bytes == 0
        with pytest.raises(ProtocolError):
            conn.next_event()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_fuzz_garbage_bytes(data, cuts, eof):
    for conn in fresh_connections():
        survive(conn, data, cuts, eof)


cbor_tags = st.sampled_from([0, 1, 2, 3, 4, 5, 28, 29, 30, 55799, 999])
cbor_anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=20)
    | st.text(max_size=20)
    | st.just(cbor2.undefined)
    | st.builds(cbor2.CBORSimpleValue, st.sampled_from([0, 19, 32, 255])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.integers() | st.binary(max_size=4), children, max_size=4
        )
        | st.builds(cbor2.CBORTag, cbor_tags, children)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(["type", "id", "method", "body", "ok", "name", "nonce", "mac"])
type_names = st.sampled_from(
    ["request", "reply", "ping", "pong", "hello", "challenge", "proof"]
) | st.text(max_size=8)
field_values = (
    ids | st.integers(-5, 5) | methods | bodies | names | nonces | st.booleans() | cbor_anything
)
message_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    type_names,
    st.dictionaries(field_names, field_values, max_size=5),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cbor_anything | message_like, min_size=1, max_size=4), st.booleans(), st.data())
def test_fuzz_arbitrary_cbor_in_valid_frames(items, indefinite, data):
    payloads = []
    for item in items:
        try:
            payloads.append(cbor2.dumps(item, indefinite_containers=indefinite))
        except (cbor2.CBOREncodeError, ValueError, TypeError):
            continue
    stream = b"".join(frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    for conn in fresh_connections():
        survive(conn, stream, cuts, eof=data.draw(st.booleans()))


# An independent strict decoder to hold ours against: cbor2 with every tag, indefinite length
# and duplicate key refused, then the subset's types checked (depth and item limits have
# tests of their own above; the values drawn here stay far from them).
_REFUSE_EVERY_TAG = dict.fromkeys([*range(300), 1000, 55799, 55800], cbor2.CBORTag)


def _refuse_tag(tag: object, immutable: bool = False) -> object:
    raise ValueError(f"tag {tag!r}")


def _check_subset(value: object) -> None:
    if type(value) is list:
        for item in value:
            _check_subset(item)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str and type(key) is not bytes:
                raise ValueError(f"key {key!r}")
            _check_subset(item)
    elif value is not None and type(value) not in (bool, int, bytes, str):
        raise ValueError(f"value {value!r}")


def reference_decode(payload: bytes) -> object:
    decoder = cbor2.CBORDecoder(
        io.BytesIO(payload),
        semantic_decoders={tag: _refuse_tag for tag in _REFUSE_EVERY_TAG},
        tag_hook=_refuse_tag,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )
    value = decoder.decode()
    if decoder.fp.tell() != len(payload):
        raise ValueError("stray bytes")
    _check_subset(value)
    return value


def same_value(a: object, b: object) -> bool:
    """Equal, with the same type at every level (True == 1 and 1 == 1.0 do not count)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(map(same_value, a, b))  # type: ignore[arg-type]
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)  # type: ignore[union-attr,index]
    return a == b


def cbor_head(major: int, count: int) -> bytes:
    return bytes([major << 5 | count]) if count < 24 else bytes([major << 5 | 24, count])


# Raw CBOR built item by item, so maps can hold a key twice and strings cross every length
# form (1-byte, 2-byte and 4-byte lengths).
raw_scalars = st.builds(
    cbor2.dumps,
    scalars
    | st.text(min_size=20, max_size=300)
    | st.binary(min_size=20, max_size=600)
    | st.sampled_from([23, 24, 255, 256, 300, 4200, 65535, 65536]).flatmap(
        lambda n: st.sampled_from([b"v" * n, "t" * n])
    ),
)
raw_keys = st.builds(
    cbor2.dumps, st.sampled_from(["type", "id", "b", ""]) | keys | st.integers(-3, 30)
)


def raw_maps(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.tuples(raw_keys, children), max_size=4).map(
        lambda pairs: cbor_head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    )


raw_cbor = st.recursive(
    raw_scalars,
    lambda children: (
        st.lists(children, max_size=4).map(lambda xs: cbor_head(4, len(xs)) + b"".join(xs))
        | raw_maps(children)
    ),
    max_leaves=12,
)


def assert_decoders_agree(payload: bytes) -> None:
    try:
        expected = reference_decode(payload)
    except Exception:
        expected = ProtocolError
    try:
        decoder = Decoder(memoryview(payload))
        got = decoder.decode(0)
        if decoder.pos != len(payload):
            raise ProtocolError("stray bytes")
    except ProtocolError:
        got = ProtocolError
    assert got is expected if expected is ProtocolError else same_value(got, expected)


def mutated(payload: bytes, data: st.DataObject) -> bytes:
    """`payload` with up to three bytes overwritten or inserted."""
    result = bytearray(payload)
    for _ in range(data.draw(st.integers(0, 3))):
        position = data.draw(st.integers(0, len(result)))
        if position < len(result) and data.draw(st.booleans()):
            result[position] = data.draw(st.integers(0, 255))
        else:
            result.insert(position, data.draw(st.integers(0, 255)))
    return bytes(result)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_maps(raw_cbor), st.data())  # messages are maps: their values take a fast path
def test_the_decoder_agrees_with_an_independent_strict_decoder_on_raw_cbor(payload, data):
    assert_decoders_agree(mutated(payload, data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_anything | message_like | application_messages, st.booleans(), st.data())
def test_the_decoder_agrees_with_an_independent_strict_decoder_on_values(item, indefinite, data):
    if isinstance(item, Request | Reply | Ping | Pong):
        payload = encode_frame(item)[LENGTH_PREFIX_BYTES:]
    else:
        try:
            payload = cbor2.dumps(item, indefinite_containers=indefinite)
        except (cbor2.CBOREncodeError, ValueError, TypeError):
            return
    assert_decoders_agree(mutated(payload, data))


@settings(max_examples=100, deadline=None)
@given(st.lists(application_messages, min_size=1, max_size=3), st.data())
def test_fuzz_mutated_valid_frames(messages, data):
    stream = bytearray(b"".join(encode_frame(m) for m in messages))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            stream[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            stream.insert(position, data.draw(st.integers(0, 255)))
        elif len(stream) > 1:
            del stream[position]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    for conn in fresh_connections()[2:]:
        survive(conn, bytes(stream), cuts, eof=True)


# --- one real peer ---------------------------------------------------------------------------


async def drive_handshake(stream: trio.abc.Stream, conn: Connection) -> None:
    """The driver loop from the module comment."""
    await stream.send_all(conn.data_to_send())
    while True:
        event = conn.next_event()
        await stream.send_all(conn.data_to_send())
        if event is NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, Established):
            return


async def next_message(stream: trio.abc.Stream, conn: Connection) -> object:
    while (event := conn.next_event()) is NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


async def test_a_real_tcp_peer():
    async def serve(stream: trio.SocketStream) -> None:
        conn = Connection(Role.SERVER, "beta", SECRET, nonce(2))
        async with stream:
            await drive_handshake(stream, conn)
            while (request := await next_message(stream, conn)) is not CLOSED:
                reply = Reply(request.id, True, {"echo": request.body["data"], "from": "beta"})
                await stream.send_all(conn.send(reply))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve_tcp = functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            listeners = await nursery.start(serve_tcp)
            port = listeners[0].socket.getsockname()[1]
            conn = Connection(Role.CLIENT, "alpha", SECRET, nonce(1))
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await drive_handshake(stream, conn)
                assert conn.peer_name == "beta"
                blob = random.Random(3).randbytes(1 << 20)
                await stream.send_all(conn.send(Request(1, "echo", {"data": blob})))
                await stream.send_all(conn.send(Request(2, "echo", {"data": b"small"})))
                assert await next_message(stream, conn) == Reply(
                    1, True, {"echo": blob, "from": "beta"}
                )
                assert (await next_message(stream, conn)).body["echo"] == b"small"
                await stream.send_eof()
                assert await next_message(stream, conn) is CLOSED
            nursery.cancel_scope.cancel()


def test_messages_for_sending_check_their_head_now_and_their_body_when_encoded():
    body = {"b": b"bucket", "k": b"key", "n": [1, "two", None, True, {"x": b""}]}
    for checked, for_sending in [
        (Request(7, "replica.get", body), Request.for_sending(7, "replica.get", body)),
        (Reply(7, True, body), Reply.for_sending(7, True, body)),
    ]:
        assert for_sending == checked
        assert encode_frame(for_sending) == encode_frame(checked)
    bad_heads = [
        lambda: Request.for_sending(-1, "replica.get", {}),
        lambda: Request.for_sending(1, "no spaces allowed", {}),
        lambda: Request.for_sending(1, "replica.get", "not a dict"),
        lambda: Reply.for_sending(MAX_ID + 1, True, {}),
        lambda: Reply.for_sending(1, "yes", {}),
        lambda: Reply.for_sending(1, True, ["not", "a", "dict"]),
    ]
    for make in bad_heads:
        with pytest.raises(LocalProtocolError):
            make()
    too_deep: dict = {}
    for _ in range(MAX_DEPTH + 1):
        too_deep = {"d": too_deep}
    for bad_body in [{"value": 1.5}, {"set": {1, 2}}, too_deep, {1: "int key"}]:
        with pytest.raises(LocalProtocolError):
            Request(1, "replica.get", bad_body)
        unsent = Request.for_sending(1, "replica.get", bad_body)  # built, but never encoded
        with pytest.raises(LocalProtocolError):
            encode_frame(unsent)
        with pytest.raises(LocalProtocolError):
            encode_frame(Reply.for_sending(1, False, bad_body))
