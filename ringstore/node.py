"""The composition root: config -> storage -> ring -> peers -> coordinator -> HTTP, in order."""

from __future__ import annotations

import functools
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio

import ringstore
from ringstore.config import ConfigError, NodeConfig
from ringstore.coord.api import ClusterStatus, MemberStatus, WorkerStatus
from ringstore.coord.bucket_props import PropsStore
from ringstore.coord.kv import Coordinator
from ringstore.coord.remote import RemoteReplica, replica_handlers
from ringstore.coord.replica import LocalReplica, ReplicaClient
from ringstore.core import versions
from ringstore.core.props import BucketProps
from ringstore.core.ring import Ring
from ringstore.errors import ProtocolError, RingstoreError
from ringstore.http.server import HttpLimits, listener_port, serve_http
from ringstore.net.liveness import Liveness
from ringstore.net.rpc import PeerService
from ringstore.net.transport import (
    TcpTransport,
    Transport,
    client_ssl_context,
    server_ssl_context,
)
from ringstore.repair.workers import Scrubber, Sweeper, Worker, run_workers
from ringstore.storage.engine import StorageEngine
from ringstore.storage.lmdb_store import LmdbStore

log = logging.getLogger(__name__)

PROPS_CALL_TIMEOUT_S = 5.0  # pushing a bucket's properties to one peer


class Node:
    """One ringstore node. `await nursery.start(node.run)` returns once it serves everything.

    Production builds everything from the config; tests and the simulator may inject the
    transport, the storage engine, the secret, the wall clock and the random source.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        secret: bytes | None = None,
        transport: Transport | None = None,
        storage: StorageEngine | None = None,
        addresses: dict[str, Any] | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        serve_http: bool = True,
    ) -> None:
        self.config = config
        self.name = config.name
        if secret is None:
            if config.secret_file is None:
                raise ConfigError("a node needs the cluster secret (node.secret_file)")
            try:
                secret = config.secret_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the cluster secret: {exc}") from None
        if not secret:
            raise ConfigError("the cluster secret is empty")
        self._secret = secret
        self.transport = transport or _tcp_transport(config)
        self.storage = storage or LmdbStore(
            config.data_dir / "store",
            ring_size=config.ring_size,
            inline_max=config.storage.inline_max,
            chunk_size=config.storage.chunk_size,
            map_size=config.storage.map_size,
            wall_clock=wall_clock,
        )
        members = sorted({m.name for m in config.members} | {config.name})
        self.addresses: dict[str, Any] = (
            addresses
            if addresses is not None
            else {m.name: (m.host, m.port) for m in config.members if m.name != config.name}
        )
        self.ring = Ring.initial(members, config.ring_size, config.n_val)
        self._rng = rng or random.SystemRandom()
        self._wall_clock = wall_clock
        self._serve_http = serve_http
        self.http_address: tuple[str, int] | None = None
        self.peer_address: Any = None
        self._cancel = trio.CancelScope()
        self.coordinator: Coordinator
        self.peers: PeerService
        self.liveness: Liveness
        self.replica: LocalReplica
        self.workers: list[Worker] = []

    def stop(self) -> None:
        """Ask the node to shut down; `run` returns once everything has stopped."""
        self._cancel.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await self._start(nursery)
                log.info(
                    "%s: serving (http %s, peers %s)",
                    self.name,
                    self.http_address,
                    self.peer_address,
                )
                task_status.started(self)
        log.info("%s: stopped", self.name)

    async def _start(self, nursery: trio.Nursery) -> None:
        log.info("%s: opening storage", self.name)
        await nursery.start(self.storage.run)
        nursery.start_soon(_close_on_cancel, self.storage)
        actor = versions.make_actor(self.name, await self._epoch())
        self.replica = LocalReplica(self.name, actor, self.storage)
        props = PropsStore(
            self.storage.get_meta, self._save_props, BucketProps(n_val=self.config.n_val)
        )

        handlers = replica_handlers(self.replica)
        handlers["props.set"] = self._receive_props
        self.peers = PeerService(
            self.name,
            self._secret,
            self.transport,
            self.addresses,
            handlers,
            random.Random(self._rng.getrandbits(64)),
        )
        log.info("%s: starting peer service", self.name)
        self.peer_address = await nursery.start(self.peers.run)
        self.liveness = Liveness(self.peers, peers=lambda: list(self.addresses))
        await nursery.start(self.liveness.run)

        self.coordinator = Coordinator(
            node=self.name,
            secret=self._secret,
            clients=self._client,
            ring=lambda: self.ring,
            up_nodes=self.liveness.up_nodes,
            props=props,
            broadcast_props=self._broadcast_props,
            chunk_size=self.config.storage.chunk_size,
            inline_max=self.config.storage.inline_max,
            uploads_in_flight=self.config.storage.uploads_in_flight,
            wall_clock=self._wall_clock,
            version=ringstore.__version__,
            extra_stats=self._stats,
            round_trip_s=self._round_trip_s,
        )
        await nursery.start(self.coordinator.run)
        self.workers = [
            Sweeper(self.storage, self.config.storage.sweep_grace_s),
            Scrubber(
                self.storage,
                self.config.storage.scrub_bytes_per_s,
                self.coordinator.fetch_from_peers,
            ),
        ]
        await nursery.start(run_workers, self.workers)
        if self._serve_http:
            log.info("%s: starting HTTP", self.name)
            listeners = await nursery.start(
                functools.partial(
                    serve_http,
                    self.coordinator,
                    self.config.http_host,
                    self.config.http_port,
                    node_name=self.name,
                    wall_clock=self._wall_clock,
                    rng=random.Random(self._rng.getrandbits(64)),
                    cluster_status=self._cluster_status,  # web page and /metrics (issue 5)
                    limits=_http_limits(self.config),
                    ssl_context=_https_context(self.config),
                )
            )
            self.http_address = (self.config.http_host, listener_port(listeners[0]))
        # ---- admin console (ringstore/admin, issue 5): the `ringstore attach` socket ----------
        # Like HTTP it is a client-facing socket, so it runs exactly when HTTP does (not in the
        # simulator). It sees the node only through this handle.
        if self._serve_http:
            from ringstore.admin import ADMIN_SOCKET_NAME
            from ringstore.admin.commands import AdminHandle
            from ringstore.admin.server import serve_admin

            admin = AdminHandle(
                kv=self.coordinator,
                ring=lambda: self.ring,
                members=self._admin_members,
                stop=self.stop,
                status=self._admin_status,
                workers=lambda: {w.name: w.status() for w in self.workers},
                run_worker=self._run_worker,
            )
            log.info("%s: starting admin console", self.name)
            self.admin_socket = await nursery.start(
                serve_admin, admin, self.config.data_dir / ADMIN_SOCKET_NAME
            )
        # ---- end admin console -------------------------------------------------------------

    # ---- admin console accessors (ringstore/admin, issue 5) -----------------------------------

    def _admin_members(self) -> dict[str, bool]:
        """Every member, this node included, and whether this node sees it up."""
        up = self.liveness.up_nodes()
        names = set(self.ring.members) | set(self.addresses) | {self.name}
        return {name: name in up for name in names}

    def _admin_status(self) -> dict[str, str]:
        """Node facts for the console's `status`, as text."""

        def text(address: Any) -> str:
            if isinstance(address, tuple) and len(address) >= 2:
                return f"{address[0]}:{address[1]}"
            return str(address)

        return {
            "pid": str(os.getpid()),
            "http": text(self.http_address),
            "peer": text(self.peer_address),
            "data_dir": str(self.config.data_dir),
        }

    # ---- end admin console accessors -------------------------------------------------------

    async def _epoch(self) -> bytes:
        """This data directory's epoch: new whenever the node starts without its data (KV679)."""
        epoch = await self.storage.get_meta("epoch")
        if epoch is None:
            epoch = versions.new_epoch(random.SystemRandom())
            await self.storage.put_meta("epoch", epoch)
            log.info("%s: new data directory, epoch %s", self.name, epoch.hex())
        return epoch

    async def _run_worker(self, name: str) -> None:
        """One round of a background worker now (the console's `workers run NAME`)."""
        await next(w for w in self.workers if w.name == name).run_once()

    def _round_trip_s(self, node: str) -> float | None:
        health = self.liveness.health().get(node)
        return None if health is None or not health.up else health.last_rtt_s

    def _client(self, node: str) -> ReplicaClient:
        if node == self.name:
            return self.replica
        return RemoteReplica(node, self._call, self.peers.start_call)

    async def _call(self, peer: str, method: str, body: dict, timeout_s: float) -> dict:
        return await self.peers.call(peer, method, body, timeout_s=timeout_s)

    async def _save_props(self, name: str, value: bytes) -> None:
        await self.storage.put_meta(name, value)

    async def _broadcast_props(self, bucket: bytes, props: BucketProps | None) -> None:
        body = {"b": bucket, "p": None if props is None else props.encode()}

        async def push(peer: str) -> None:
            try:
                await self.peers.call(peer, "props.set", body, timeout_s=PROPS_CALL_TIMEOUT_S)
            except RingstoreError as exc:
                log.warning("%s: bucket props not pushed to %s: %s", self.name, peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in self.liveness.up_nodes() - {self.name}:
                nursery.start_soon(push, peer)

    async def _receive_props(self, peer: str, body: dict) -> dict:
        bucket, raw = body.get("b"), body.get("p")
        if not isinstance(bucket, bytes) or not (raw is None or isinstance(raw, bytes)):
            raise ProtocolError("props.set needs b (bytes) and p (bytes or nil)")
        if raw is not None:
            BucketProps.decode(raw)
        await self.storage.put_meta("props:" + bucket.hex(), raw or b"")
        return {}

    def _stats(self) -> dict[str, object]:
        engine = self.storage.statistics()
        up = self.liveness.up_nodes()
        return {
            "nodename": self.name,
            "ring_members": list(self.ring.members),
            "ring_num_partitions": self.ring.size,
            "ring_creation_size": self.ring.size,
            "connected_nodes": sorted(up - {self.name}),
            "storage_backend": "ringstore_lmdb",
            "ringstore_objects": engine.objects,
            "ringstore_chunks": engine.chunks,
            "ringstore_chunk_bytes": engine.chunk_bytes,
            "ringstore_metadata_bytes": engine.metadata_bytes,
            "ringstore_commits_total": engine.commits,
            "ringstore_corrupt_chunks_found": engine.corrupt_chunks_found,
            **self._worker_stats(),
        }

    # ---- web page and /metrics (ringstore/http, issue 5) ---------------------------------------

    def _cluster_status(self) -> ClusterStatus:
        """This node's view of the cluster, for the web page and the member metrics."""
        ring = self.ring
        up = self.liveness.up_nodes() | {self.name}
        names = sorted(set(ring.members) | set(self.addresses) | {self.name})
        return ClusterStatus(
            node=self.name,
            ring_version=ring.version,
            owners=ring.owners,
            members=tuple(MemberStatus(n, n in up, len(ring.owned_by(n))) for n in names),
            handoffs=(),  # running transfers join here when handoff lands
            workers=tuple(WorkerStatus(w.name, w.status()) for w in self.workers),
        )

    def _worker_stats(self) -> dict[str, int]:
        """The background workers' counters under the names /stats and /metrics show."""
        stats: dict[str, int] = {}
        for worker in self.workers:
            if isinstance(worker, Scrubber):
                stats["ringstore_scrub_passes_total"] = worker.rounds
                stats["ringstore_scrub_corrupt_chunks_total"] = worker.corrupt_total
                stats["ringstore_scrub_repaired_chunks_total"] = worker.repaired_total
            elif isinstance(worker, Sweeper):
                stats["ringstore_sweep_removed_chunks_total"] = worker.removed_total
        return stats

    # ---- end web page and /metrics -------------------------------------------------------------


def _http_limits(config: NodeConfig) -> HttpLimits:
    http = config.http
    return HttpLimits(
        max_connections=http.max_connections,
        max_header_bytes=http.max_header_bytes,
        max_object_bytes=http.max_object_bytes,
        idle_timeout_s=http.idle_timeout_s,
        header_timeout_s=http.header_timeout_s,
        body_idle_timeout_s=http.body_idle_timeout_s,
        send_timeout_s=http.send_timeout_s,
    )


def _https_context(config: NodeConfig) -> ssl.SSLContext | None:
    http = config.http
    if http.tls_cert_file is None or http.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[http] TLS certificate: {exc}") from None
    return context


def _tcp_transport(config: NodeConfig) -> TcpTransport:
    if config.tls is None:
        return TcpTransport(config.peer_host, config.peer_port)
    files = (str(config.tls.ca_file), str(config.tls.cert_file), str(config.tls.key_file))
    try:
        server, client = server_ssl_context(*files), client_ssl_context(*files)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[tls]: {exc}") from None
    return TcpTransport(
        config.peer_host, config.peer_port, server_ssl_context=server, client_ssl_context=client
    )


async def _close_on_cancel(storage: StorageEngine) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()
