"""Transports hand the peer layer byte streams: TCP, optionally with mutual TLS.

A transport does two things: `serve(handler)` accepts connections and runs
`handler(stream)` for each one (closing the stream when the handler returns), and
`connect(address)` opens one stream to an address or raises `errors.PeerUnavailable`.
Addresses are opaque to the layers above: `(host, port)` for TCP, a node name for the
in-memory network (`net/memnet.py`). Authentication of the peer's *name* is not the
transport's job: the handshake in `core/wire` proves the cluster secret on every stream;
TLS adds encryption and certificate checks on top when configured.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ringstore.config import ConfigError
from ringstore.errors import PeerUnavailable

log = logging.getLogger(__name__)

# A peer on a working network answers a SYN (and a TLS handshake) in milliseconds; after
# this long it is down or partitioned and the caller should move on to another replica.
CONNECT_TIMEOUT_S = 3.0
# A clean close is one small write; a peer that does not take it in this long is gone.
CLOSE_TIMEOUT_S = 1.0

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
TcpAddress = tuple[str, int]


class Transport(Protocol):
    """What the peer layer needs from a network."""

    async def serve(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[Any] = ...
    ) -> None:
        """Accept connections until cancelled; `task_status.started(bound_address)`."""

    async def connect(self, address: Any) -> trio.abc.Stream:
        """Open a stream to `address`; raise `PeerUnavailable` if that fails."""


async def _run_and_close(handler: StreamHandler, stream: trio.abc.Stream) -> None:
    try:
        await handler(stream)
    finally:
        # Shielded so a TLS peer gets its close_notify even when the node shuts down; aclose
        # closes the socket even if this bound cuts the goodbye short.
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            await stream.aclose()


def server_ssl_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for mutual TLS: our certificate, and client certificates required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client context for mutual TLS: verifies the server, presents our certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context


class TcpTransport:
    """TCP streams, with mutual TLS when both contexts are given.

    `port=0` binds an ephemeral port; `serve` reports the bound address through
    `task_status.started((host, port))` and keeps it in `bound_address`. When connecting
    over TLS the server certificate is checked against the host in the address (issue node
    certificates for their peer addresses, or disable `check_hostname` in the client
    context and rely on the CA alone).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        server_ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if (server_ssl_context is None) != (client_ssl_context is None):
            # A node that serves TLS but dials in clear text (or the reverse) cannot talk
            # to a cluster configured like itself.
            raise ConfigError("TLS needs both a server and a client context, or neither")
        if server_ssl_context is not None and server_ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError("the TLS server context must require client certificates")
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port} is out of range")
        if connect_timeout_s <= 0:
            raise ConfigError("connect_timeout_s must be positive")
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self._server_ssl = server_ssl_context
        self._client_ssl = client_ssl_context
        self.bound_address: TcpAddress | None = None

    async def serve(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[TcpAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners: list[Any]
        if self._server_ssl is None:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            sockets = [listener.socket for listener in listeners]
        else:
            listeners = await trio.open_ssl_over_tcp_listeners(
                self.port, self._server_ssl, host=self.host
            )
            sockets = [listener.transport_listener.socket for listener in listeners]
        port = sockets[0].getsockname()[1]
        self.bound_address = (self.host, port)
        log.info(
            "listening for peers on %s:%d%s", self.host, port, " (TLS)" if self._server_ssl else ""
        )

        async def accepted(stream: trio.abc.Stream) -> None:
            await _run_and_close(handler, stream)

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, accepted, listeners)
                task_status.started(self.bound_address)
        finally:
            self.bound_address = None

    async def connect(self, address: TcpAddress | Any) -> trio.abc.Stream:
        """Connect to `(host, port)` or anything with `.host` and `.port` (config.PeerAddress)."""
        host, port = _host_port(address)
        where = f"{host}:{port}"
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
                if self._client_ssl is not None:
                    tls = trio.SSLStream(stream, self._client_ssl, server_hostname=host)
                    stream = tls
                    await tls.do_handshake()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            cause = exc.__cause__ or exc  # trio wraps TLS failures in BrokenResourceError
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else repr(cause)
            raise PeerUnavailable(where, f"cannot connect: {reason}") from None
        except BaseException:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
        return stream


def _host_port(address: Any) -> TcpAddress:
    if hasattr(address, "host") and hasattr(address, "port"):
        address = (address.host, address.port)
    if (
        not isinstance(address, tuple)
        or len(address) != 2
        or not isinstance(address[0], str)
        or not isinstance(address[1], int)
        or not 0 < address[1] <= 65535
    ):
        raise PeerUnavailable(repr(address)[:100], "not a (host, port) address")
    return address
