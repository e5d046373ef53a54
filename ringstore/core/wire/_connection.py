"""One peer connection's protocol state without I/O: the handshake, then framed messages both
ways, with bounded buffering (the package's comment shows a driver)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from ringstore.core.wire._handshake import Handshake, Role
from ringstore.core.wire._messages import (
    _APPLICATION_TYPES,
    _HANDSHAKE_TYPES,
    HANDSHAKE_MAX_FRAME_BYTES,
    LENGTH_PREFIX_BYTES,
    MAX_FRAME_BYTES,
    MAX_LENGTH_PREFIX,
    HandshakeMessage,
    Message,
    decode_payload,
    encode_frame,
    encode_frame_parts,
)
from ringstore.errors import LocalProtocolError, ProtocolError


class Signal(enum.Enum):
    """What `Connection.next_event` returns when it has no message."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    CLOSED = "CLOSED"  # the peer closed cleanly; nothing more will arrive


NEED_DATA = Signal.NEED_DATA
CLOSED = Signal.CLOSED


@dataclass(frozen=True, slots=True)
class Established:
    """Returned once by `Connection.next_event` when the peer has proved the secret."""

    peer_name: str


class Connection:
    """One peer connection's protocol state: handshake, then framed messages both ways.

    `Connection(role, node_name, secret, nonce, *, max_frame_bytes=MAX_FRAME_BYTES)`; see the
    package's comment (`ringstore.core.wire`) for the driver loop. Methods:

    - `receive_data(data)`: buffer bytes from the peer; `b""` means EOF. Call it only when
      `next_event()` returned NEED_DATA (or before the first call); then the buffer never
      holds more than one incomplete frame plus `data`. Feeding while a maximum-size frame
      is already buffered raises LocalProtocolError, so the buffer stays bounded even then.
    - `next_event()`: Established(peer_name) once the peer proved the secret, then the next
      Request / Reply / Ping / Pong, or NEED_DATA, or CLOSED once the peer closed cleanly
      (again on every later call). Handshake frames are consumed here; their answers wait in
      `data_to_send()`. EOF mid-frame or before the handshake completed is a ProtocolError.
    - `data_to_send()`: bytes the handshake wants sent (the Hello, Challenge or Proof);
      empty once established. Send them after each next_event() until Established.
    - `send(message)`: the frame for a Request / Reply / Ping / Pong; LocalProtocolError
      (nothing changes) if the message is invalid, too big, or the handshake is not done.
      `send_parts(message)` is the same frame as pieces, a chunk among them uncopied.

    Anything wrong from the peer raises ProtocolError; the connection is then dead and every
    later call raises ProtocolError again (drop the stream).
    """

    __slots__ = (
        "_handshake",
        "_max_frame_bytes",
        "_buffer",
        "_pieces",
        "_pieces_bytes",
        "_outgoing",
        "_eof",
        "_error",
    )

    def __init__(
        self,
        role: Role,
        node_name: str,
        secret: bytes,
        nonce: bytes,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if (
            not isinstance(max_frame_bytes, int)
            or not HANDSHAKE_MAX_FRAME_BYTES <= max_frame_bytes <= MAX_LENGTH_PREFIX
        ):
            raise LocalProtocolError(
                f"max_frame_bytes must be in {HANDSHAKE_MAX_FRAME_BYTES}..{MAX_LENGTH_PREFIX}"
            )
        self._handshake = Handshake(role, node_name, secret, nonce)
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        # Received bytes not yet joined into _buffer. A large frame arrives in many reads;
        # appending each to a bytearray can reallocate and copy it every time (quadratic in
        # the frame), so the reads wait here until the frame is whole and are joined once.
        self._pieces: list[bytes] = []
        self._pieces_bytes = 0
        self._outgoing = bytearray()
        self._eof = False
        self._error: str | None = None
        hello = self._handshake.start()
        if hello is not None:
            self._outgoing += encode_frame(hello, HANDSHAKE_MAX_FRAME_BYTES)

    @property
    def role(self) -> Role:
        return self._handshake.role

    @property
    def node_name(self) -> str:
        return self._handshake.node_name

    @property
    def established(self) -> bool:
        """True once the peer proved the secret (client: once it verified the server)."""
        return self._handshake.done

    @property
    def peer_name(self) -> str | None:
        """The authenticated peer's name; None until established."""
        return self._handshake.peer_name

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet turned into events."""
        return len(self._buffer) + self._pieces_bytes

    def _frame_limit(self) -> int:
        return self._max_frame_bytes if self.established else HANDSHAKE_MAX_FRAME_BYTES

    def _check_alive(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"connection is dead: {self._error}")

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._check_alive()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise LocalProtocolError(f"receive_data takes bytes, got {type(data).__name__}")
        if self._eof:
            if len(data):
                raise LocalProtocolError("receive_data after EOF")
            return
        if self.buffered_bytes >= LENGTH_PREFIX_BYTES + self._frame_limit():
            raise LocalProtocolError("call next_event() until NEED_DATA before feeding more")
        if not len(data):
            self._eof = True
            return
        # Kept until joined: a caller's bytearray or view could change meanwhile, so copy those.
        piece = data if type(data) is bytes else bytes(data)
        self._pieces.append(piece)
        self._pieces_bytes += len(piece)

    @property
    def bytes_missing(self) -> int:
        """How many more bytes complete the frame being received (0 while its length is not
        known): a driver may read that much at once rather than in small pieces."""
        buffer = self._buffer
        if len(buffer) < LENGTH_PREFIX_BYTES:
            return 0
        end = LENGTH_PREFIX_BYTES + int.from_bytes(buffer[:LENGTH_PREFIX_BYTES], "big")
        return max(0, end - len(buffer) - self._pieces_bytes)

    def next_event(self) -> Message | Established | Literal[Signal.NEED_DATA, Signal.CLOSED]:
        self._check_alive()
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = str(exc)
            self._buffer = bytearray()
            self._pieces.clear()
            self._pieces_bytes = 0
            self._outgoing = bytearray()
            raise

    def _next_event(self) -> Message | Established | Literal[Signal.NEED_DATA, Signal.CLOSED]:
        while True:
            message = self._take_message()
            if message is None:
                if not self._eof:
                    return NEED_DATA
                if self.buffered_bytes:
                    raise ProtocolError(f"peer closed mid-frame ({self.buffered_bytes} bytes)")
                if not self.established:
                    raise ProtocolError("peer closed before the handshake completed")
                return CLOSED
            if self.established:
                if isinstance(message, _HANDSHAKE_TYPES):
                    raise ProtocolError(f"{message.TYPE} after the handshake completed")
                return message
            if not isinstance(message, _HANDSHAKE_TYPES):
                raise ProtocolError(f"{message.TYPE} before the handshake completed")
            answer = self._handshake.receive(message)
            if answer is not None:
                self._outgoing += encode_frame(answer, HANDSHAKE_MAX_FRAME_BYTES)
            if self._handshake.done:
                return Established(self.peer_name)

    def _take_message(self) -> Message | HandshakeMessage | None:
        """The next whole frame's message, decoded straight from the buffer (no copy of the
        frame: a chunk's bytes are copied once, into the value decoded), or None."""
        buffer = self._buffer
        if len(buffer) < LENGTH_PREFIX_BYTES:
            buffer = self._join_pieces()
            if len(buffer) < LENGTH_PREFIX_BYTES:
                return None
        length = int.from_bytes(buffer[:LENGTH_PREFIX_BYTES], "big")
        limit = self._frame_limit()
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes exceeds the {limit}-byte limit")
        end = LENGTH_PREFIX_BYTES + length
        if len(buffer) < end:
            if len(buffer) + self._pieces_bytes < end:
                return None
            buffer = self._join_pieces()
        with memoryview(buffer) as view:
            message = decode_payload(view[LENGTH_PREFIX_BYTES:end])
        # Every view of the buffer is gone by now (the decoder keeps none), so it may shrink.
        del buffer[:end]
        return message

    def _join_pieces(self) -> bytearray:
        """Move the received pieces into the buffer, in one allocation and one copy."""
        if self._pieces:
            self._pieces.insert(0, self._buffer)
            self._buffer = bytearray().join(self._pieces)
            self._pieces.clear()
            self._pieces_bytes = 0
        return self._buffer

    def data_to_send(self) -> bytes:
        self._check_alive()
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def send(self, message: Message) -> bytes:
        return b"".join(self.send_parts(message))

    def send_parts(self, message: Message) -> tuple[bytes, ...]:
        """`send`'s frame as pieces to be written in order (`encode_frame_parts`): a large
        value (a chunk) is a piece of its own, never copied into the frame."""
        self._check_alive()
        if not isinstance(message, _APPLICATION_TYPES):
            raise LocalProtocolError(
                f"send() takes Request, Reply, Ping or Pong, not {type(message).__name__}"
            )
        if not self.established:
            raise LocalProtocolError("cannot send before the handshake completed")
        return encode_frame_parts(message, self._max_frame_bytes)
