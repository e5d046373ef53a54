"""The peer protocol's messages and their frames: the message types and their checks, and the
frame codec over core/strict_cbor.py (the package's comment tells the machine)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, TypeVar

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

Body: TypeAlias = dict[Any, Any]  # str | bytes keys; values as the package comment lists them

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
