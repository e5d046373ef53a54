"""The HTTP server: listens (TCP, optionally TLS), caps concurrent connections and serves each
on a `Connection`; `serve_http` runs a node's site this way: the Riak API of a KV handle,
/metrics and the web page at /ui.

Over `max_connections`, a new connection gets an immediate 503 and is closed, so a flood of
clients can slow the node down but never make it hang or run out of file descriptors.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ringstore.core.httpsem import format_http_date
from ringstore.http.connection import (
    SERVER_HEADER,
    App,
    Connection,
    ConnectionLost,
    HttpLimits,
    RequestObserver,
    close_stream,
    linger,
)
from ringstore.http.metrics import NodeMetrics
from ringstore.http.riak import RiakApp
from ringstore.http.router import Route
from ringstore.http.ui import WebUi

if TYPE_CHECKING:
    from ringstore.coord.api import KV, ClusterStatusSource

log = logging.getLogger(__name__)

BUSY_REPLY_TIMEOUT_S = 2.0  # the whole life of an over-the-limit connection


@dataclass(frozen=True, slots=True)
class ServerStats:
    active_connections: int
    connections_total: int
    rejected_busy_total: int
    requests_total: int


class HttpServer:
    """Serves one application on any number of streams (`handle_stream` per connection)."""

    def __init__(
        self,
        app: App,
        *,
        limits: HttpLimits | None = None,
        node_name: str = "",
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.observer = observer  # told of every request answered (the node's metrics)
        self.limits = limits or HttpLimits()
        self.node_name = node_name
        self.wall_clock = wall_clock
        self._id_prefix = f"{(rng or random.SystemRandom()).getrandbits(32):08x}"
        self._request_count = 0
        self._active = 0
        self._connections_total = 0
        self._rejected_busy = 0

    def statistics(self) -> ServerStats:
        return ServerStats(
            active_connections=self._active,
            connections_total=self._connections_total,
            rejected_busy_total=self._rejected_busy,
            requests_total=self._request_count,
        )

    def stats_json(self) -> dict[str, object]:
        """The server's counters under the names /stats shows them."""
        stats = self.statistics()
        return {
            "http_connections_active": stats.active_connections,
            "http_connections_total": stats.connections_total,
            "http_connections_rejected_total": stats.rejected_busy_total,
            "http_requests_total": stats.requests_total,
        }

    def next_request_id(self) -> str:
        self._request_count += 1
        return f"{self._id_prefix}-{self._request_count:x}"

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes; never raises but Cancelled."""
        if self._active >= self.limits.max_connections:
            self._rejected_busy += 1
            await self._reject_busy(stream)
            return
        self._active += 1
        self._connections_total += 1
        connection = Connection(
            self.app,
            stream,
            limits=self.limits,
            node_name=self.node_name,
            wall_clock=self.wall_clock,
            next_request_id=self.next_request_id,
            observer=self.observer,
        )
        try:
            await connection.run()
        except ConnectionLost:
            pass
        except Exception:
            log.exception("node=%s connection handler failed", self.node_name)
        finally:
            self._active -= 1
            await connection.close()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[list[trio.abc.Listener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (TLS if `ssl_context`) and serve until cancelled.

        `task_status.started` receives the listeners, as `trio.serve_tcp` does; with port 0
        read the chosen port with `listener_port`.
        """
        listeners: list[trio.abc.Listener] = list(await trio.open_tcp_listeners(port, host=host))
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True)
                for listener in listeners
            ]
        log.info(
            "node=%s http listening on %s:%d%s",
            self.node_name,
            host,
            listener_port(listeners[0]),
            " (tls)" if ssl_context is not None else "",
        )
        await trio.serve_listeners(self.handle_stream, listeners, task_status=task_status)

    async def _reject_busy(self, stream: trio.abc.Stream) -> None:
        body = b"Too many connections; try again later\n"
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"Server: {SERVER_HEADER}\r\n"
            f"Date: {format_http_date(self.wall_clock())}\r\n"
            "Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        )
        log.debug("node=%s connection refused: %d open", self.node_name, self._active)
        with trio.move_on_after(BUSY_REPLY_TIMEOUT_S):
            try:
                await stream.send_all(head.encode("ascii") + body)
                await linger(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await close_stream(stream)


def listener_port(listener: trio.abc.Listener) -> int:
    """The TCP port a listener from `serve`/`serve_http` is bound to (TLS or not)."""
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    return int(listener.socket.getsockname()[1])


def build_server(
    kv: KV,
    *,
    limits: HttpLimits | None = None,
    node_name: str = "",
    wall_clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    cluster_status: ClusterStatusSource | None = None,
) -> HttpServer:
    """A node's whole site on `kv`, not yet listening: the Riak API, GET /metrics (a registry
    of its own, recording every request) and the web page under /ui.

    `cluster_status` is the node's view of members, ring, handoffs and workers, for the page
    and the member metrics; without it they are left out.
    """
    rng = rng or random.SystemRandom()
    metrics = NodeMetrics(kv, cluster_status=cluster_status)
    ui = WebUi(kv, metrics, cluster_status=cluster_status)
    app = RiakApp(
        kv,
        rng=rng,
        wall_clock=wall_clock,
        extra_routes=(Route(("metrics",), {"GET": metrics.metrics}), *ui.routes()),
    )
    server = HttpServer(
        app, limits=limits, node_name=node_name, wall_clock=wall_clock, rng=rng, observer=metrics
    )
    app.extra_stats = server.stats_json
    metrics.classify = app.router.operation
    metrics.server_stats = server.stats_json
    return server


async def serve_http(
    kv: KV,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    limits: HttpLimits | None = None,
    node_name: str = "",
    wall_clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    cluster_status: ClusterStatusSource | None = None,
    task_status: trio.TaskStatus[list[trio.abc.Listener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a node's site (see `build_server`) for `kv` on host:port until cancelled.

    Start it with `listeners = await nursery.start(serve_http, kv, host, port, ...)`.
    `rng` picks server-chosen keys, multipart boundaries and request-id prefixes (default:
    the OS's randomness; the simulator passes a seeded one); `wall_clock` gives Date headers.
    """
    server = build_server(
        kv,
        limits=limits,
        node_name=node_name,
        wall_clock=wall_clock,
        rng=rng,
        cluster_status=cluster_status,
    )
    await server.serve(host, port, ssl_context=ssl_context, task_status=task_status)
