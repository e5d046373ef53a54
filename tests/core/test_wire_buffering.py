"""How `core.wire.Connection` buffers what it receives: large frames in many reads, in place.

The codec keeps reads as pieces until a frame is whole and decodes it from the joined buffer
without copying the frame again; `send_parts` hands out a frame without joining it.
"""

from __future__ import annotations

import random

import pytest

from ringstore.core.wire import (
    LENGTH_PREFIX_BYTES,
    NEED_DATA,
    NONCE_BYTES,
    Connection,
    Ping,
    Reply,
    Request,
    Role,
    encode_frame,
    encode_frame_parts,
)
from ringstore.errors import LocalProtocolError, ProtocolError

SECRET = b"the cluster secret used in tests"
READ_BYTES = 64 * 1024  # what the net driver reads at a time


def connected_pair(max_frame_bytes: int = 4 * 1024 * 1024) -> tuple[Connection, Connection]:
    rng = random.Random(7)
    client = Connection(
        Role.CLIENT, "alpha", SECRET, rng.randbytes(NONCE_BYTES), max_frame_bytes=max_frame_bytes
    )
    server = Connection(
        Role.SERVER, "beta", SECRET, rng.randbytes(NONCE_BYTES), max_frame_bytes=max_frame_bytes
    )
    for _ in range(3):
        for sender, receiver in ((client, server), (server, client)):
            data = sender.data_to_send()
            if data:
                receiver.receive_data(data)
            while receiver.next_event() is not NEED_DATA:
                pass
    assert client.established and server.established
    return client, server


def drain(conn: Connection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_large_frames_in_many_reads_decode_to_plain_bytes() -> None:
    client, server = connected_pair()
    rng = random.Random(1)
    messages = [
        Request(1, "replica.write_chunk", {"d": rng.randbytes(1024 * 1024), "h": b"h" * 32}),
        Ping(2),
        Reply(3, True, {"d": rng.randbytes(300 * 1024), "s": "text ✓"}),
        Request(4, "replica.get", {"b": b"bucket", "k": b""}),
    ]
    stream = b"".join(client.send(m) for m in messages)
    events: list[object] = []
    for start in range(0, len(stream), READ_BYTES):
        server.receive_data(stream[start : start + READ_BYTES])
        assert server.buffered_bytes <= LENGTH_PREFIX_BYTES + server.max_frame_bytes + READ_BYTES
        events.extend(drain(server))
    assert events == messages
    assert type(events[0].body["d"]) is bytes  # not a view of the receive buffer
    assert server.buffered_bytes == 0


def test_buffered_bytes_counts_pieces_not_yet_joined() -> None:
    client, server = connected_pair()
    frame = client.send(Request(1, "m", {"d": b"x" * 10_000}))
    server.receive_data(frame[:3])
    assert drain(server) == [] and server.buffered_bytes == 3
    server.receive_data(frame[3:5000])
    assert drain(server) == [] and server.buffered_bytes == 5000
    server.receive_data(frame[5000:])
    assert [e.id for e in drain(server)] == [1]
    assert server.buffered_bytes == 0


def test_a_fed_bytearray_may_change_afterwards() -> None:
    client, server = connected_pair()
    frame = bytearray(client.send(Request(1, "m", {"d": b"abc" * 1000})))
    server.receive_data(frame[:100])
    assert drain(server) == []
    middle = frame[100:2000]
    server.receive_data(middle)
    assert drain(server) == []  # the frame is incomplete: `middle` waits as a piece
    middle[:] = bytes(len(middle))  # the caller reuses its buffer
    server.receive_data(memoryview(frame)[2000:])
    assert drain(server)[0].body == {"d": b"abc" * 1000}


def test_an_oversized_frame_is_refused_when_its_length_arrives_in_pieces() -> None:
    _, server = connected_pair(max_frame_bytes=8192)
    server.receive_data((8193).to_bytes(LENGTH_PREFIX_BYTES, "big")[:2])
    assert server.next_event() is NEED_DATA
    server.receive_data((8193).to_bytes(LENGTH_PREFIX_BYTES, "big")[2:])
    with pytest.raises(ProtocolError, match="exceeds"):
        server.next_event()
    with pytest.raises(ProtocolError):
        server.next_event()  # dead from now on


def test_end_of_stream_inside_a_frame_held_as_pieces_is_an_error() -> None:
    client, server = connected_pair()
    frame = client.send(Request(1, "m", {"d": b"y" * 50_000}))
    server.receive_data(frame[:100])
    assert drain(server) == []
    server.receive_data(frame[100:40_000])
    assert drain(server) == []
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="mid-frame"):
        server.next_event()


def test_a_garbled_frame_kills_the_connection_and_drops_what_was_buffered() -> None:
    _, server = connected_pair()
    payload = b"\xff" * 20  # an indefinite-length break: refused
    server.receive_data(len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big") + payload)
    with pytest.raises(ProtocolError):
        server.next_event()
    assert server.buffered_bytes == 0


def test_feeding_past_a_whole_frame_without_draining_is_refused() -> None:
    client, server = connected_pair(max_frame_bytes=8192)
    frames = client.send(Request(1, "m", {"d": b"z" * 8000})) + client.send(Ping(2))
    server.receive_data(frames + frames)
    with pytest.raises(LocalProtocolError, match="next_event"):
        server.receive_data(b"more")
    assert [e.id for e in drain(server)] == [1, 2, 1, 2]
    server.receive_data(b"")  # drained, so it may be fed again


def test_send_parts_is_the_frame_in_two_pieces() -> None:
    client, _ = connected_pair()
    message = Request(9, "replica.read_chunk", {"h": b"h" * 32, "d": b"q" * 100_000})
    prefix, payload = client.send_parts(message)
    assert len(prefix) == LENGTH_PREFIX_BYTES
    assert int.from_bytes(prefix, "big") == len(payload)
    assert prefix + payload == client.send(message) == encode_frame(message)
    assert encode_frame_parts(message) == (prefix, payload)
    with pytest.raises(LocalProtocolError):
        client.send_parts(Request(10, "m", {"d": b"q" * (client.max_frame_bytes + 1)}))
