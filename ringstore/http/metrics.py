"""A node's Prometheus metrics: per-request counts and latencies recorded as the HTTP server
answers, plus the node's own counters and gauges read at scrape time; served as GET /metrics.

Each node has its own `CollectorRegistry` (never prometheus_client's global one), so several
nodes in one process (the integration tests, the simulator) keep separate numbers.

What is exposed, by source:

    recorded per request      ringstore_http_requests_total{operation,status}
                              ringstore_http_request_duration_seconds{operation,status}
    the HTTP server           ringstore_http_open_connections, ..._connections_total,
                              ..._connections_rejected_total
    the node's stats          coordinated gets/puts/deletes, quorum failures, read repairs,
    (KV.info().stats)         chunk fallbacks and repairs, handoff bytes, AAE repairs, scrub
                              passes and chunks by result, storage commits; gauges for
                              objects, chunks, chunk store bytes and the LMDB file size
    the cluster status        ringstore_member_up{member}, ringstore_member_partitions{member},
                              ringstore_ring_version, ringstore_handoffs_running

A counter whose stat the node does not report (yet: handoff and anti-entropy land later) is
exposed as 0, which is true: nothing was counted. A gauge whose stat is missing is left out
rather than shown as a made-up 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest

from ringstore.http.messages import Request, Response
from ringstore.http.router import UNROUTED, PathParams

if TYPE_CHECKING:
    from ringstore.coord.api import KV, ClusterStatusSource

UNPARSED = "unparsed"  # the operation label of a request too broken to route (400/408/431)
# Seconds: from a ping (~1 ms) to a multi-GiB upload on a slow link.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

# (metric name without _total, the KV.info().stats key it reads, help text)
STAT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("ringstore_coordinated_gets", "node_gets_total", "Gets this node coordinated."),
    ("ringstore_coordinated_puts", "node_puts_total", "Puts this node coordinated."),
    ("ringstore_coordinated_deletes", "ringstore_deletes_total", "Deletes this node coordinated."),
    (
        "ringstore_quorum_failures",
        "ringstore_quorum_failures_total",
        "Requests that did not reach their quorum (answered 503).",
    ),
    ("ringstore_read_repairs", "read_repairs_total", "Stale replicas repaired after a read."),
    (
        "ringstore_chunk_fallbacks",
        "ringstore_chunk_fallbacks_total",
        "Chunk reads that had to use another replica.",
    ),
    (
        "ringstore_chunk_repairs",
        "ringstore_chunk_repairs_total",
        "Bad or missing chunks replaced on a replica during reads.",
    ),
    (
        "ringstore_uploads_waited",
        "ringstore_uploads_waited_total",
        "Large values that waited for an upload turn (storage.uploads_in_flight).",
    ),
    (
        "ringstore_handoff_bytes",
        "ringstore_handoff_bytes_total",
        "Bytes sent by hinted and ownership handoff.",
    ),
    (
        "ringstore_aae_repairs",
        "ringstore_aae_repairs_total",
        "Keys repaired by active anti-entropy.",
    ),
    ("ringstore_scrub_passes", "ringstore_scrub_passes_total", "Completed scrub passes."),
    ("ringstore_storage_commits", "ringstore_commits_total", "Storage transactions committed."),
)
# (scrub result label, the stats key it reads)
SCRUB_RESULTS: tuple[tuple[str, str], ...] = (
    ("corrupt", "ringstore_scrub_corrupt_chunks_total"),
    ("repaired", "ringstore_scrub_repaired_chunks_total"),
)
STAT_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("ringstore_objects", "ringstore_objects", "Object records stored on this node."),
    ("ringstore_chunks", "ringstore_chunks", "Chunk files stored on this node."),
    (
        "ringstore_chunk_store_bytes",
        "ringstore_chunk_bytes",
        "Bytes of chunk files stored on this node.",
    ),
    ("ringstore_lmdb_bytes", "ringstore_metadata_bytes", "Size of the LMDB metadata store."),
)
# (metric name, the HTTP server's stats key, help text, counter or not)
SERVER_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    (
        "ringstore_http_open_connections",
        "http_connections_active",
        "Client connections open now.",
        False,
    ),
    ("ringstore_http_connections", "http_connections_total", "Client connections served.", True),
    (
        "ringstore_http_connections_rejected",
        "http_connections_rejected_total",
        "Connections refused with 503 over the connection limit.",
        True,
    ),
)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class NodeCollector:
    """Reads the node's stats, the HTTP server's counters and the cluster status at scrape
    time (a custom prometheus_client collector: nothing is copied between scrapes)."""

    def __init__(
        self,
        node_stats: Callable[[], Mapping[str, object]],
        server_stats: Callable[[], Mapping[str, object]] | None = None,
        cluster_status: ClusterStatusSource | None = None,
    ) -> None:
        self.node_stats = node_stats
        self.server_stats = server_stats
        self.cluster_status = cluster_status

    def describe(self) -> list[Metric]:
        return []  # names vary with the cluster; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        stats = self.node_stats()
        for name, key, help_text in STAT_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=_number(stats.get(key)) or 0.0)
        scrub = CounterMetricFamily(
            "ringstore_scrub_chunks",
            "Chunks the scrubber found corrupt or repaired.",
            labels=["result"],
        )
        for result, key in SCRUB_RESULTS:
            scrub.add_metric([result], _number(stats.get(key)) or 0.0)
        yield scrub
        for name, key, help_text in STAT_GAUGES:
            value = _number(stats.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
        if self.server_stats is not None:
            server = self.server_stats()
            for name, key, help_text, is_counter in SERVER_METRICS:
                value = _number(server.get(key)) or 0.0
                family = CounterMetricFamily if is_counter else GaugeMetricFamily
                yield family(name, help_text, value=value)
        if self.cluster_status is not None:
            yield from self._cluster_metrics()

    def _cluster_metrics(self) -> Iterator[Metric]:
        assert self.cluster_status is not None
        status = self.cluster_status()
        up = GaugeMetricFamily(
            "ringstore_member_up", "1 if this node sees the member up.", labels=["member"]
        )
        owned = GaugeMetricFamily(
            "ringstore_member_partitions",
            "Partitions the member owns in this node's ring.",
            labels=["member"],
        )
        for member in status.members:
            up.add_metric([member.name], 1.0 if member.up else 0.0)
            owned.add_metric([member.name], float(member.partitions))
        yield up
        yield owned
        yield GaugeMetricFamily(
            "ringstore_ring_version", "Version of this node's ring.", value=status.ring_version
        )
        yield GaugeMetricFamily(
            "ringstore_handoffs_running",
            "Partition transfers running on this node.",
            value=len(status.handoffs),
        )


class NodeMetrics:
    """One node's registry: records requests (a `RequestObserver`) and serves GET /metrics.

    `classify(method, path)` names the operation of a request the application did not label
    (`Request.operation`; the router's `operation`);
    `server_stats` is the HTTP server's counters. Both are set by whoever builds the server,
    which exists only after its application does.
    """

    def __init__(
        self,
        kv: KV,
        *,
        cluster_status: ClusterStatusSource | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.classify: Callable[[str, str], str] = lambda method, path: UNROUTED
        self.requests = Counter(
            "ringstore_http_requests",
            "HTTP requests answered, by operation and status.",
            ["operation", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ringstore_http_request_duration_seconds",
            "Time from a request's head to the end of its response, by operation and status.",
            ["operation", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.collector = NodeCollector(lambda: kv.info().stats, cluster_status=cluster_status)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self._by_operation: dict[str, int] = {}
        # The labelled children per (operation, status): a bounded set (operations are the
        # router's handler names, statuses ours), looked up once rather than per request.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    @property
    def server_stats(self) -> Callable[[], Mapping[str, object]] | None:
        return self.collector.server_stats

    @server_stats.setter
    def server_stats(self, source: Callable[[], Mapping[str, object]] | None) -> None:
        self.collector.server_stats = source

    def request_done(self, request: Request | None, status: int, duration_s: float) -> None:
        if request is None:
            operation = UNPARSED
        elif request.operation is not None:
            operation = request.operation
        else:
            operation = self.classify(request.method, request.path)
        children = self._children.get((operation, status))
        if children is None:
            labels = (operation, str(status))
            children = self._children[operation, status] = (
                self.requests.labels(*labels),
                None if request is None else self.latency.labels(*labels),
            )
        children[0].inc()
        if children[1] is not None:
            children[1].observe(duration_s)
        self._by_operation[operation] = self._by_operation.get(operation, 0) + 1

    def requests_by_operation(self) -> dict[str, int]:
        """Requests answered since start, per operation (what the web page turns into rates)."""
        return dict(self._by_operation)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def metrics(self, request: Request, params: PathParams) -> Response:
        """GET /metrics: the registry in Prometheus' text format, or OpenMetrics when the
        scraper's Accept asks for it (the library negotiates, as its own handlers do)."""
        encode, content_type = choose_encoder(request.headers.get("accept") or "")
        return Response(200, [("Content-Type", content_type)], encode(self.registry))
