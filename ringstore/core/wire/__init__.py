"""The peer protocol without I/O: message types, a strict CBOR frame codec and the handshake.

`_messages` holds the message types and the frame codec, `_handshake` the mutual proof of
the cluster secret, `_connection` the state of one connection; this module is their public
face, as h11's is.
"""

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
# in _handshake (_TRANSITIONS) does not expect, a wrong MAC, an unknown version, or a peer naming
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

from ringstore.core.wire._connection import CLOSED, NEED_DATA, Connection, Established, Signal
from ringstore.core.wire._handshake import Handshake, HandshakeState, Role
from ringstore.core.wire._messages import (
    HANDSHAKE_MAX_FRAME_BYTES,
    LENGTH_PREFIX_BYTES,
    MAC_BYTES,
    MAX_FRAME_BYTES,
    MAX_ID,
    MAX_LENGTH_PREFIX,
    METHOD_PATTERN,
    NODE_NAME_MAX_CHARS,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SECRET_MIN_BYTES,
    SPLICE_MIN_BYTES,
    Body,
    Challenge,
    HandshakeMessage,
    Hello,
    Message,
    Ping,
    Pong,
    Proof,
    Reply,
    Request,
    decode_payload,
    encode_frame,
    encode_frame_parts,
)

__all__ = [
    "CLOSED",
    "HANDSHAKE_MAX_FRAME_BYTES",
    "LENGTH_PREFIX_BYTES",
    "MAC_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_ID",
    "MAX_LENGTH_PREFIX",
    "METHOD_PATTERN",
    "NEED_DATA",
    "NODE_NAME_MAX_CHARS",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SECRET_MIN_BYTES",
    "SPLICE_MIN_BYTES",
    "Body",
    "Challenge",
    "Connection",
    "Established",
    "Handshake",
    "HandshakeMessage",
    "HandshakeState",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Proof",
    "Reply",
    "Request",
    "Role",
    "Signal",
    "decode_payload",
    "encode_frame",
    "encode_frame_parts",
]
