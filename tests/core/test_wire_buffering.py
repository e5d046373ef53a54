"""How `core.wire.Connection` buffers what it receives: large frames in many reads, in place.

The codec keeps reads as pieces until a frame is whole and decodes it from the joined buffer
without copying the frame again; `send_parts` hands out a frame without joining it.
"""

from __future__ import annotations

import random

import cbor2
import pytest

from ringstore.core import wire
from ringstore.core.wire import (
    LENGTH_PREFIX_BYTES,
    NEED_DATA,
    NONCE_BYTES,
    Connection,
    Ping,
    Reply,
    Request,
    Role,
    _messages,
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


def test_send_parts_is_the_frame_in_pieces_a_large_value_uncopied() -> None:
    client, server = connected_pair()
    chunk = b"q" * 100_000
    message = Request(9, "replica.write_chunk", {"d": chunk, "h": b"h" * 32})
    parts = client.send_parts(message)
    assert parts[0][:LENGTH_PREFIX_BYTES] == len(b"".join(parts)[LENGTH_PREFIX_BYTES:]).to_bytes(
        LENGTH_PREFIX_BYTES, "big"
    )
    assert any(part is chunk for part in parts)  # sent as it is, not copied into the frame
    assert b"".join(parts) == client.send(message) == encode_frame(message)
    assert encode_frame_parts(message) == parts
    server.receive_data(b"".join(parts))
    assert server.next_event() == message
    small = Request(10, "replica.get", {"b": b"b", "k": b"k"})
    prefix, payload = client.send_parts(small)
    assert prefix == len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big")
    # The stand-in for the large value appearing elsewhere in the message: encoded whole.
    tricky = Request(11, "m", {"d": chunk, "e": _messages._SPLICE_MARK})
    assert not any(part is chunk for part in client.send_parts(tricky))
    server.receive_data(client.send(tricky))
    assert server.next_event() == tricky
    with pytest.raises(LocalProtocolError):
        client.send_parts(Request(10, "m", {"d": b"q" * (client.max_frame_bytes + 1)}))


@pytest.mark.parametrize(
    "size", [wire.SPLICE_MIN_BYTES - 1, wire.SPLICE_MIN_BYTES, 1 << 20, (1 << 20) + 7]
)
def test_frames_in_pieces_are_byte_for_byte_the_whole_encoding(size: int) -> None:
    """Splicing a large value in is invisible on the wire: same bytes as cbor2 encoding the
    whole message, whatever comes before and after the value in the body."""
    value = random.Random(size).randbytes(size)
    body = {"a": 1, "d": value, "h": b"h" * 32, "z": ["tail", None]}
    message = Request(12, "replica.write_chunk", body)
    whole = cbor2.dumps({"type": "request", "id": 12, "method": message.method, "body": body})
    assert b"".join(encode_frame_parts(message)) == (
        len(whole).to_bytes(LENGTH_PREFIX_BYTES, "big") + whole
    )


def test_bytes_missing_tells_a_driver_how_much_of_a_frame_is_still_to_come() -> None:
    client, server = connected_pair()
    frame = client.send(Request(13, "replica.write_chunk", {"d": b"c" * 300_000}))
    assert server.bytes_missing == 0  # nothing yet: the length is not known
    server.receive_data(frame[:2])
    assert server.next_event() is NEED_DATA
    assert server.bytes_missing == 0  # half a length prefix
    server.receive_data(frame[2:1000])
    assert server.next_event() is NEED_DATA
    assert server.bytes_missing == len(frame) - 1000
    server.receive_data(frame[1000:5000])  # fed but not yet looked at: still counted
    assert server.bytes_missing == len(frame) - 5000
    server.receive_data(frame[5000:])
    assert server.bytes_missing == 0
    assert server.next_event().id == 13
    assert server.bytes_missing == 0
