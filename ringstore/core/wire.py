"""The peer protocol without I/O: message types, a strict CBOR frame codec and the handshake."""

# The machine
# ===========
#
# Frames. Every message travels as one frame: a 4-byte big-endian length, then that many
# bytes holding one CBOR map `{"type": str, "id": int, ...fields}`. The length counts the
# CBOR payload only and may not exceed the connection's `max_frame_bytes` (default
# MAX_FRAME_BYTES), or HANDSHAKE_MAX_FRAME_BYTES until the peer has proved the secret; a
# larger length is a ProtocolError as soon as its 4 bytes arrive, before any of it is kept.
#
# Messages (wire type -> fields besides "type" and "id"):
#     "request"   Request(id, method, body)     a call; the peer answers with one Reply(id)
#     "reply"     Reply(id, ok, body)           the answer to the Request with the same id
#     "ping"      Ping(id)                      liveness probe; answered by Pong(id)
#     "pong"      Pong(id)
#     "hello"     Hello(name, nonce, version)   handshake, client -> server  (wire id 0)
#     "challenge" Challenge(name, nonce, mac)   handshake, server -> client  (wire id 0)
#     "proof"     Proof(mac)                    handshake, client -> server  (wire id 0)
# A map with a missing or an extra key, a field of the wrong type or out of range, or a
# type not in this table is a ProtocolError. Bodies hold only None, bool, int (CBOR's native
# -2**64 .. 2**64-1), bytes (bytearray is sent as bytes), str, list and dict with str or
# bytes keys, exactly those types, within the limits of core/strict_cbor.py, which parses
# what arrives and checks what leaves (why we parse CBOR ourselves is told there).
#
# Handshake. The dialling side is the CLIENT. Both sides prove they know the cluster secret
# with HMAC-SHA256 over a transcript holding BOTH fresh nonces and both names, so a proof
# recorded on one connection is worthless on the next (the other side's nonce differs):
#
#     client                                         server
#     START --start()--> Hello(name_c, nonce_c) -->  AWAIT_HELLO
#     AWAIT_CHALLENGE <-- Challenge(name_s, nonce_s, mac_s) <-- AWAIT_PROOF
#       verify mac_s; DONE --> Proof(mac_c) -->      verify mac_c; DONE
#
#     mac_s = HMAC(secret, transcript("server")), mac_c = HMAC(secret, transcript("client")),
#     transcript(label) = each of (label, version, nonce_c, nonce_s, name_c, name_s) with a
#     4-byte length prefix, so no field can bleed into its neighbour.
# The labels stop a peer from reflecting our own MAC back at us. Any message the table
# below (_TRANSITIONS) does not expect, a wrong MAC, an unknown version, or a peer naming
# itself with our own name fails the handshake with ProtocolError.
#
# Connection. `Connection` runs the handshake itself (its frames never reach the caller;
# its answers wait in data_to_send()), says Established(peer_name) once, and then carries
# Request, Reply, Ping and Pong both ways:
#     HANDSHAKING --peer proven: Established--> ESTABLISHED --peer EOF at a frame boundary-->
#     CLOSED; any state --anything wrong from the peer--> DEAD (every call raises ProtocolError)
# A sketch of its driver (net/ owns the real one, with timeouts):
#
#     conn = Connection(Role.CLIENT, "node-a", secret, os.urandom(NONCE_BYTES))
#     await stream.send_all(conn.data_to_send())          # the Hello; b"" for a server
#     while True:
#         event = conn.next_event()                       # runs the handshake internally
#         await stream.send_all(conn.data_to_send())      # Challenge / Proof when due
#         if event is NEED_DATA:
#             conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
#         elif isinstance(event, Established):
#             break                                       # event.peer_name is authenticated
#     event = conn.next_event()       # Request | Reply | Ping | Pong | NEED_DATA | CLOSED
#     await stream.send_all(conn.send(Reply(event.id, True, {...})))
# (Stop reading at Established: the client has nothing to wait for then, and the server may
# already hold the client's first requests, which the following next_event() calls return.)
#
# Errors. Anything wrong the peer sends raises ProtocolError and nothing else; the connection
# is then dead. Anything wrong we try to send raises LocalProtocolError and changes nothing.

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar

import cbor2

from ringstore.core.strict_cbor import (
    Decoder,
    Tally,
    bytes_head,
    check_value,
    quote,
)
from ringstore.errors import LocalProtocolError, ProtocolError

PROTOCOL_VERSION = 1  # bumped on any incompatible change; a mismatch fails the handshake
LENGTH_PREFIX_BYTES = 4  # big-endian frame length in front of every CBOR payload
MAX_FRAME_BYTES = 4 * 1024 * 1024 + 64 * 1024  # room for 1 MiB chunk pieces plus their fields
HANDSHAKE_MAX_FRAME_BYTES = 4096  # a Hello is < 1.2 KiB; unauthenticated peers get no more
MAX_LENGTH_PREFIX = 2**32 - 1  # the largest length 4 bytes can say
MAX_ID = 2**63 - 1  # ids fit a signed 64-bit integer in whatever language a peer is in
METHOD_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}", re.ASCII)  # short and log-safe
NODE_NAME_MAX_CHARS = 255  # names appear in logs, rings and every handshake
NONCE_BYTES = 32  # 256 random bits never repeat by chance
MAC_BYTES = 32  # HMAC-SHA256
SECRET_MIN_BYTES = 16  # a shorter secret falls to offline guessing from one sniffed handshake
_TRANSCRIPT_DOMAIN = b"ringstore-peer-handshake"  # keeps these MACs apart from any other use

Body: TypeAlias = dict[Any, Any]  # str | bytes keys; values as listed in the comment above


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


class Role(enum.Enum):
    CLIENT = "client"  # dialled the connection and speaks first
    SERVER = "server"  # accepted the connection


_ITEMS_OUTSIDE_BODY = 8  # a Request/Reply map, its 4 keys and its 3 values besides the body


# ---------------------------------------------------------------------------------------------
# Messages. Constructors validate (exact types, like bodies) and raise LocalProtocolError; when
# the peer sent the fields, the decoder turns that into ProtocolError.


def _check_id(value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise LocalProtocolError(f"id must be an int in 0..2**63-1, got {quote(value)}")


def _check_body(body: object) -> None:
    """Raise LocalProtocolError unless `body` fits a frame's type, depth and item limits."""
    _check_is_body(body)
    check_value(body, 1, Tally(_ITEMS_OUTSIDE_BODY))


def _check_is_body(body: object) -> None:
    if type(body) is not dict:
        raise LocalProtocolError(f"body must be a dict, got {type(body).__name__}")


def _check_name(name: object) -> None:
    if type(name) is not str or not 0 < len(name) <= NODE_NAME_MAX_CHARS or not name.isprintable():
        raise LocalProtocolError(
            f"node name must be 1..{NODE_NAME_MAX_CHARS} printable characters, got {quote(name)}"
        )


def _check_fixed_bytes(what: str, value: object, length: int) -> None:
    if type(value) is not bytes or len(value) != length:
        raise LocalProtocolError(f"{what} must be {length} bytes, got {quote(value)}")


@dataclass(frozen=True, slots=True)
class Request:
    """A call of `method` with arguments in `body`; the peer answers with Reply(id=self.id).

    Ids are the caller's to choose (unique among its calls in flight on this connection);
    the codec does not track them. Treat `body` as immutable once built.
    """

    TYPE: ClassVar[str] = "request"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "method", "body")
    id: int
    method: str
    body: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_head()
        _check_body(self.body)

    def _check_head(self) -> None:
        _check_id(self.id)
        if type(self.method) is not str or not METHOD_PATTERN.fullmatch(self.method):
            raise LocalProtocolError(
                f"method must match {METHOD_PATTERN.pattern}, got {quote(self.method)}"
            )

    @classmethod
    def for_sending(cls, id: int, method: str, body: Body) -> Request:
        """A Request whose body is checked only when it is encoded, as every send does before
        a byte is written: one walk of the body instead of two on the hot paths. The head is
        checked here, and that the body is a dict (encoding checks what the values are, not
        the method's form or the body's type)."""
        message = _unchecked(cls, (id, method, body))
        message._check_head()
        _check_is_body(body)
        return message

    def with_id(self, message_id: int) -> Request:
        """This request under another id, without checking the body again (it was checked
        when this one was built; `encode_frame` checks it once more when it is sent)."""
        _check_id(message_id)
        return _unchecked(Request, (message_id, self.method, self.body))


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the Request with the same id: `ok` says success; `body` the details."""

    TYPE: ClassVar[str] = "reply"
    FIELDS: ClassVar[tuple[str, ...]] = ("id", "ok", "body")
    id: int
    ok: bool
    body: Body = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_head()
        _check_body(self.body)

    def _check_head(self) -> None:
        _check_id(self.id)
        if type(self.ok) is not bool:
            raise LocalProtocolError(f"ok must be a bool, got {quote(self.ok)}")

    @classmethod
    def for_sending(cls, id: int, ok: bool, body: Body) -> Reply:
        """A Reply whose body is checked only when it is encoded (see Request.for_sending)."""
        message = _unchecked(cls, (id, ok, body))
        message._check_head()
        _check_is_body(body)
        return message


@dataclass(frozen=True, slots=True)
class Ping:
    """A liveness probe; the peer answers Pong(id=self.id)."""

    TYPE: ClassVar[str] = "ping"
    FIELDS: ClassVar[tuple[str, ...]] = ("id",)
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to Ping(id)."""

    TYPE: ClassVar[str] = "pong"
    FIELDS: ClassVar[tuple[str, ...]] = ("id",)
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)


@dataclass(frozen=True, slots=True)
class Hello:
    """Handshake step 1, client -> server: who the client is and its fresh nonce."""

    TYPE: ClassVar[str] = "hello"
    FIELDS: ClassVar[tuple[str, ...]] = ("name", "nonce", "version")
    name: str
    nonce: bytes
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_fixed_bytes("nonce", self.nonce, NONCE_BYTES)
        version = self.version
        if type(version) is not int or not 0 <= version <= 0xFFFF:
            raise LocalProtocolError(f"version must be an int in 0..65535, got {quote(version)}")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Handshake step 2, server -> client: the server's name, fresh nonce and proof."""

    TYPE: ClassVar[str] = "challenge"
    FIELDS: ClassVar[tuple[str, ...]] = ("name", "nonce", "mac")
    name: str
    nonce: bytes
    mac: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_fixed_bytes("nonce", self.nonce, NONCE_BYTES)
        _check_fixed_bytes("mac", self.mac, MAC_BYTES)


@dataclass(frozen=True, slots=True)
class Proof:
    """Handshake step 3, client -> server: the client's proof over both nonces."""

    TYPE: ClassVar[str] = "proof"
    FIELDS: ClassVar[tuple[str, ...]] = ("mac",)
    mac: bytes

    def __post_init__(self) -> None:
        _check_fixed_bytes("mac", self.mac, MAC_BYTES)


Message: TypeAlias = Request | Reply | Ping | Pong
HandshakeMessage: TypeAlias = Hello | Challenge | Proof
_APPLICATION_TYPES = (Request, Reply, Ping, Pong)
_HANDSHAKE_TYPES = (Hello, Challenge, Proof)
_MESSAGE_TYPES: dict[str, type[Message | HandshakeMessage]] = {
    cls.TYPE: cls for cls in _APPLICATION_TYPES + _HANDSHAKE_TYPES
}
_HANDSHAKE_WIRE_ID = 0  # handshake messages have no id of their own


def encode_frame(
    message: Message | HandshakeMessage, max_frame_bytes: int = MAX_FRAME_BYTES
) -> bytes:
    """One whole frame (length prefix + CBOR) for any message; LocalProtocolError if too big.

    Low level, for tests and tools: `Connection.send` is the checked way to send.
    """
    return b"".join(encode_frame_parts(message, max_frame_bytes))


# A body value of bytes this large (a chunk) is not copied into the encoded frame: the frame
# goes out as pieces around it (see encode_frame_parts).
SPLICE_MIN_BYTES = 64 * 1024
# Stands in for the large value while the rest of the message is encoded. If these bytes
# turn up elsewhere in the same message, the frame is encoded whole instead.
_SPLICE_MARK = b"\x00ringstore:wire:large-value-goes-here\x00"
_SPLICE_MARK_CBOR = cbor2.dumps(_SPLICE_MARK)


def encode_frame_parts(
    message: Message | HandshakeMessage, max_frame_bytes: int = MAX_FRAME_BYTES
) -> tuple[bytes, ...]:
    """`encode_frame` as pieces to be written in order: the length prefix first, and the
    first body value of at least SPLICE_MIN_BYTES bytes (a chunk) as a piece of its own,
    the very object given, so it is never copied into the frame.
    """
    wire: dict[str, Any] = {"type": message.TYPE, "id": getattr(message, "id", _HANDSHAKE_WIRE_ID)}
    for name in message.FIELDS:
        wire[name] = getattr(message, name)
    # Bodies are plain dicts and may have changed since the message was built: check again.
    tally = Tally()
    check_value(wire, 0, tally)
    if tally.min_bytes > max_frame_bytes:
        raise _too_big(max_frame_bytes)
    body = wire.get("body")
    large = None
    if type(body) is dict and tally.min_bytes >= SPLICE_MIN_BYTES:
        for name, value in body.items():
            if type(value) is bytes and len(value) >= SPLICE_MIN_BYTES:
                large = name
                break
    if large is not None:
        assert isinstance(body, dict)
        value = body[large]
        wire["body"] = {**body, large: _SPLICE_MARK}
        skeleton = cbor2.dumps(wire)
        at = skeleton.find(_SPLICE_MARK_CBOR)
        if at >= 0 and skeleton.find(_SPLICE_MARK_CBOR, at + 1) < 0:
            head = skeleton[:at] + bytes_head(len(value))
            tail = skeleton[at + len(_SPLICE_MARK_CBOR) :]
            length = len(head) + len(value) + len(tail)
            if length > max_frame_bytes:
                raise _too_big(max_frame_bytes)
            return length.to_bytes(LENGTH_PREFIX_BYTES, "big") + head, value, tail
        wire["body"] = body
    payload = cbor2.dumps(wire)
    if len(payload) > max_frame_bytes:
        raise _too_big(max_frame_bytes)
    return len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big"), payload


def _too_big(max_frame_bytes: int) -> LocalProtocolError:
    return LocalProtocolError(f"message exceeds the {max_frame_bytes}-byte frame limit")


def decode_payload(payload: bytes | memoryview) -> Message | HandshakeMessage:
    """The message in one frame's CBOR payload (no length prefix); ProtocolError if invalid.

    A memoryview is read in place: only the values decoded from it are copied out.
    """
    decoder = Decoder(payload)
    wire = decoder.decode(0)
    if decoder.pos != len(payload):
        raise ProtocolError(f"{len(payload) - decoder.pos} stray bytes after the CBOR item")
    if not isinstance(wire, dict):
        raise ProtocolError(f"a frame must hold a CBOR map, not {type(wire).__name__}")
    kind = wire.get("type")
    cls = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {quote(kind)}")
    expected = {"type", "id", *cls.FIELDS}
    if wire.keys() != expected:
        missing = sorted(expected - wire.keys())
        extra = sorted(map(quote, wire.keys() - expected))
        raise ProtocolError(f"{kind} message: missing keys {missing}, unexpected keys {extra}")
    if cls in _HANDSHAKE_TYPES and (
        type(wire["id"]) is not int or wire["id"] != _HANDSHAKE_WIRE_ID
    ):
        raise ProtocolError(f"{kind} message must carry id 0, got {quote(wire['id'])}")
    try:
        if cls is Request or cls is Reply:
            return _decoded_call(cls, wire)
        return cls(**{name: wire[name] for name in cls.FIELDS})
    except LocalProtocolError as exc:
        raise ProtocolError(f"bad {kind} message: {exc}") from None


_Unchecked = TypeVar("_Unchecked", "Request", "Reply")


def _decoded_call(cls: type[Request] | type[Reply], wire: dict[str, Any]) -> Request | Reply:
    """A Request or Reply from a decoded frame. Its body is not walked again: the decoder
    has enforced the types, depth and item limits a constructed body is checked for."""
    if type(wire["body"]) is not dict:
        raise LocalProtocolError(f"body must be a dict, got {type(wire['body']).__name__}")
    message = _unchecked(cls, [wire[name] for name in cls.FIELDS])
    message._check_head()
    return message


def _unchecked(cls: type[_Unchecked], values: Sequence[Any]) -> _Unchecked:
    """A message of `cls` with `values` for its FIELDS, bypassing __post_init__'s checks:
    only for values already checked (the caller says how)."""
    message = object.__new__(cls)
    for name, value in zip(cls.FIELDS, values, strict=True):
        object.__setattr__(message, name, value)
    return message


# ---------------------------------------------------------------------------------------------
# Handshake


class HandshakeState(enum.Enum):
    START = "start"  # start() not called yet
    AWAIT_HELLO = "await hello"  # server
    AWAIT_CHALLENGE = "await challenge"  # client, Hello sent
    AWAIT_PROOF = "await proof"  # server, Challenge sent
    DONE = "done"  # the peer proved the secret; peer_name is trustworthy
    FAILED = "failed"  # a ProtocolError happened; every later receive() raises again


class Handshake:
    """The pure mutual-authentication state machine (Connection drives one for you).

    `Handshake(role, node_name, secret, nonce)`: `nonce` must be NONCE_BYTES fresh random
    bytes, never reused (os.urandom in production, the node's seeded Random in the
    simulator): the server's fresh nonce is what makes a replayed Proof fail. `start()`
    returns the client's Hello (None for a server); `receive(message)` returns the message
    to send back or None, and raises ProtocolError for anything unexpected or unproven.
    """

    __slots__ = (
        "role",
        "node_name",
        "_secret",
        "_nonce",
        "state",
        "_peer_name",
        "_peer_nonce",
    )

    def __init__(self, role: Role, node_name: str, secret: bytes, nonce: bytes) -> None:
        if not isinstance(role, Role):
            raise LocalProtocolError(f"role must be a Role, got {role!r}")
        _check_name(node_name)
        if not isinstance(secret, bytes) or len(secret) < SECRET_MIN_BYTES:
            raise LocalProtocolError(f"cluster secret must be at least {SECRET_MIN_BYTES} bytes")
        _check_fixed_bytes("nonce", nonce, NONCE_BYTES)
        self.role = role
        self.node_name = node_name
        self._secret = secret
        self._nonce = nonce
        self.state = HandshakeState.START
        self._peer_name: str | None = None
        self._peer_nonce = b""

    @property
    def done(self) -> bool:
        return self.state is HandshakeState.DONE

    @property
    def peer_name(self) -> str | None:
        """The peer's name, once it has proved the secret; None before."""
        return self._peer_name if self.done else None

    def start(self) -> Hello | None:
        if self.state is not HandshakeState.START:
            raise LocalProtocolError("handshake already started")
        if self.role is Role.SERVER:
            self.state = HandshakeState.AWAIT_HELLO
            return None
        self.state = HandshakeState.AWAIT_CHALLENGE
        return Hello(self.node_name, self._nonce)

    def receive(self, message: object) -> Challenge | Proof | None:
        if self.state is HandshakeState.START:
            raise LocalProtocolError("call start() before receive()")
        if self.state is HandshakeState.FAILED:
            raise ProtocolError("the handshake already failed")
        handler = _TRANSITIONS.get((self.state, type(message)))
        try:
            if handler is None:
                raise ProtocolError(
                    f"unexpected {type(message).__name__} in handshake state {self.state.value}"
                )
            return handler(self, message)
        except ProtocolError:
            self.state = HandshakeState.FAILED
            raise

    def _mac(self, label: bytes, client: tuple[str, bytes], server: tuple[str, bytes]) -> bytes:
        fields = (
            _TRANSCRIPT_DOMAIN,
            label,
            PROTOCOL_VERSION.to_bytes(2, "big"),
            client[1],
            server[1],
            client[0].encode(),
            server[0].encode(),
        )
        transcript = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
        return hmac.digest(self._secret, transcript, hashlib.sha256)

    def _check_peer_name(self, name: str) -> None:
        if name == self.node_name:
            raise ProtocolError(f"peer claims our own name {quote(name)}")

    def _on_hello(self, hello: Hello) -> Challenge:
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"peer speaks protocol version {hello.version}; we speak {PROTOCOL_VERSION}"
            )
        self._check_peer_name(hello.name)
        self._peer_name, self._peer_nonce = hello.name, hello.nonce
        mac = self._mac(b"server", (hello.name, hello.nonce), (self.node_name, self._nonce))
        self.state = HandshakeState.AWAIT_PROOF
        return Challenge(self.node_name, self._nonce, mac)

    def _on_challenge(self, challenge: Challenge) -> Proof:
        self._check_peer_name(challenge.name)
        client = (self.node_name, self._nonce)
        server = (challenge.name, challenge.nonce)
        if not hmac.compare_digest(challenge.mac, self._mac(b"server", client, server)):
            raise ProtocolError(f"server {quote(challenge.name)} failed to prove the secret")
        self._peer_name = challenge.name
        self.state = HandshakeState.DONE
        return Proof(self._mac(b"client", client, server))

    def _on_proof(self, proof: Proof) -> None:
        assert self._peer_name is not None  # set by _on_hello, the only way into AWAIT_PROOF
        client = (self._peer_name, self._peer_nonce)
        expected = self._mac(b"client", client, (self.node_name, self._nonce))
        if not hmac.compare_digest(proof.mac, expected):
            raise ProtocolError(f"client {quote(self._peer_name)} failed to prove the secret")
        self.state = HandshakeState.DONE


_TRANSITIONS: dict[tuple[HandshakeState, type], Any] = {
    (HandshakeState.AWAIT_HELLO, Hello): Handshake._on_hello,
    (HandshakeState.AWAIT_CHALLENGE, Challenge): Handshake._on_challenge,
    (HandshakeState.AWAIT_PROOF, Proof): Handshake._on_proof,
}


# ---------------------------------------------------------------------------------------------
# Connection


class Connection:
    """One peer connection's protocol state: handshake, then framed messages both ways.

    `Connection(role, node_name, secret, nonce, *, max_frame_bytes=MAX_FRAME_BYTES)`; see the
    comment at the top of this module for the driver loop. Methods:

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
