"""The peer handshake: both sides prove the cluster secret over both fresh nonces (the
package's comment shows the exchange)."""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import Any

from ringstore.core.strict_cbor import quote
from ringstore.core.wire._messages import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SECRET_MIN_BYTES,
    Challenge,
    Hello,
    Proof,
    _check_fixed_bytes,
    _check_name,
)
from ringstore.errors import LocalProtocolError, ProtocolError

_TRANSCRIPT_DOMAIN = b"ringstore-peer-handshake"  # keeps these MACs apart from any other use


class Role(enum.Enum):
    CLIENT = "client"  # dialled the connection and speaks first
    SERVER = "server"  # accepted the connection


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
