"""GET /metrics on a node's whole site (`build_server`) over in-memory connections to a real KV:
Prometheus text as prometheus_client parses it, request counts and latencies that move with
requests, one registry per node, and the node's stats read at scrape time."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rawclient import RawClient

from ringstore.coord.api import ClusterStatus, HandoffStatus, MemberStatus
from ringstore.http.metrics import NodeCollector, NodeMetrics
from ringstore.http.server import HttpServer, build_server

if TYPE_CHECKING:
    from ringstore.coord.kv import Coordinator
    from tests.http.conftest import Connect

TEXT = {"Content-Type": "text/plain"}


def cluster_status() -> ClusterStatus:
    return ClusterStatus(
        node="n1",
        ring_version=3,
        owners=("n1", "n2") * 4,
        members=(MemberStatus("n1", True, 4), MemberStatus("n2", False, 4)),
        handoffs=(HandoffStatus(5, "hinted", "n1", "n2", 2, 100),),
    )


@pytest.fixture
def server(kv: Coordinator) -> HttpServer:
    """The node's site, as `serve_http` builds it (overrides conftest's Riak-only server)."""
    return build_server(kv, node_name="n1", rng=random.Random(1), cluster_status=cluster_status)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: RawClient) -> tuple[set[str], Samples]:
    """The family names and every sample of one GET /metrics, parsed by prometheus_client."""
    reply = await client.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(reply.body.decode("utf-8")))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return {family.name for family in families}, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_exposition_names_everything_an_operator_watches(client: RawClient) -> None:
    names, samples = await scrape(client)
    assert {
        "ringstore_http_requests",
        "ringstore_http_request_duration_seconds",
        "ringstore_http_open_connections",
        "ringstore_http_connections",
        "ringstore_coordinated_gets",
        "ringstore_coordinated_puts",
        "ringstore_quorum_failures",
        "ringstore_read_repairs",
        "ringstore_handoff_bytes",
        "ringstore_aae_repairs",
        "ringstore_scrub_passes",
        "ringstore_scrub_chunks",
        "ringstore_member_up",
        "ringstore_member_partitions",
        "ringstore_ring_version",
        "ringstore_handoffs_running",
    } <= names
    # Features that have not run yet are counted as 0, not left out.
    assert sample(samples, "ringstore_handoff_bytes_total") == 0
    assert sample(samples, "ringstore_aae_repairs_total") == 0
    assert sample(samples, "ringstore_scrub_chunks_total", result="corrupt") == 0
    assert sample(samples, "ringstore_member_up", member="n1") == 1
    assert sample(samples, "ringstore_member_up", member="n2") == 0
    assert sample(samples, "ringstore_member_partitions", member="n2") == 4
    assert sample(samples, "ringstore_ring_version") == 3
    assert sample(samples, "ringstore_handoffs_running") == 1
    # The scraping connection itself is open.
    assert sample(samples, "ringstore_http_open_connections") == 1


async def test_openmetrics_when_the_scraper_asks_for_it(client: RawClient) -> None:
    reply = await client.request(
        "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("application/openmetrics-text; version=1.0.0")
    assert reply.body.endswith(b"# EOF\n")
    assert b"# TYPE ringstore_http_requests counter" in reply.body


async def test_request_counts_and_latencies_move_with_requests(client: RawClient) -> None:
    _, before = await scrape(client)
    assert sample(before, "ringstore_http_requests_total", operation="put", status="204") == 0
    assert (await client.request("PUT", "/buckets/b/keys/k", TEXT, b"v")).status == 204
    for _ in range(2):
        assert (await client.request("GET", "/buckets/b/keys/k")).status == 200
    assert (await client.request("GET", "/buckets/b/keys/missing")).status == 404
    assert (await client.request("HEAD", "/buckets/b/keys/k")).status == 200
    assert (await client.request("GET", "/no/such/resource")).status == 404
    _, after = await scrape(client)

    def count(operation: str, status: str) -> float:
        return sample(after, "ringstore_http_requests_total", operation=operation, status=status)

    assert count("put", "204") == 1
    assert count("get", "200") == 2
    assert count("get", "404") == 1
    assert count("head", "200") == 1
    assert count("unrouted", "404") == 1
    assert count("metrics", "200") == 1  # the first scrape, counted once it was answered
    latency = "ringstore_http_request_duration_seconds"
    assert sample(after, latency + "_count", operation="get", status="200") == 2
    assert sample(after, latency + "_bucket", operation="get", status="200", le="+Inf") == 2
    assert sample(after, latency + "_sum", operation="get", status="200") > 0
    # The coordinator's own counters, read at scrape time.
    assert sample(after, "ringstore_coordinated_puts_total") == 1
    assert sample(after, "ringstore_coordinated_gets_total") == 4  # HEAD is a get too


async def test_unparseable_requests_are_counted(connect: Connect) -> None:
    bad = await connect()
    await bad.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await bad.read_reply()).status == 400
    _, samples = await scrape(await connect())
    assert sample(samples, "ringstore_http_requests_total", operation="unparsed", status="400") == 1


async def test_requests_are_labelled_by_their_route_or_as_unrouted(
    server: HttpServer, connect: Connect
) -> None:
    """The application labels what it routed; only a request it never saw (a framing error)
    is classified by metrics itself, and gets the operation its route would have had."""
    metrics = server.observer
    assert isinstance(metrics, NodeMetrics)
    classify = metrics.classify
    classified: list[tuple[str, str]] = []

    def recording_classify(method: str, path: str) -> str:
        classified.append((method, path))
        return classify(method, path)

    metrics.classify = recording_classify
    client = await connect()
    assert (await client.request("DELETE", "/ping")).status == 405
    assert (await client.request("GET", "/buckets/b/keys/%zz")).status == 400
    assert (await client.request("HEAD", "/ping")).status == 200
    unframed = await connect()
    await unframed.send(b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await unframed.read_reply()).status == 411
    _, samples = await scrape(client)

    def count(operation: str, status: str) -> float:
        return sample(samples, "ringstore_http_requests_total", operation=operation, status=status)

    assert count("unrouted", "405") == 1
    assert count("unrouted", "400") == 1
    assert count("ping", "200") == 1  # HEAD on a GET handler other than an object's
    assert count("put", "411") == 1
    assert classified == [("PUT", "/buckets/b/keys/k")]


async def test_each_node_has_its_own_registry(kv: Coordinator, connect: Connect) -> None:
    """Two sites in one process (as the integration tests run nodes) never mix numbers."""
    other = build_server(kv, node_name="other", rng=random.Random(2))
    client = await connect()
    for _ in range(3):
        assert (await client.request("GET", "/ping")).status == 200
    _, mine = await scrape(client)
    assert sample(mine, "ringstore_http_requests_total", operation="ping", status="200") == 3
    theirs = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(_exposition(other))
        for s in family.samples
    }
    assert sample(theirs, "ringstore_http_requests_total", operation="ping", status="200") == 0
    assert "ringstore_member_up" not in {name for name, _ in theirs}  # no cluster status given


def _exposition(server: HttpServer) -> str:
    assert server.observer is not None
    return server.observer.exposition().decode()  # type: ignore[attr-defined]


def test_stats_become_counters_and_gauges() -> None:
    stats = {
        "ringstore_quorum_failures_total": 7,
        "read_repairs_total": 2,
        "ringstore_handoff_bytes_total": 4096,
        "ringstore_scrub_repaired_chunks_total": 1,
        "ringstore_chunk_bytes": 123456,
        "ringstore_metadata_bytes": 65536,
        "ringstore_objects": 9,
        "ringstore_chunks": "not a number",  # ignored rather than crashing a scrape
    }
    server = {"http_connections_active": 4, "http_connections_total": 10}
    collector = NodeCollector(lambda: stats, lambda: server)
    samples = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert samples["ringstore_quorum_failures_total"] == 7
    assert samples["ringstore_read_repairs_total"] == 2
    assert samples["ringstore_handoff_bytes_total"] == 4096
    assert samples["ringstore_aae_repairs_total"] == 0
    assert samples["ringstore_chunk_store_bytes"] == 123456
    assert samples["ringstore_lmdb_bytes"] == 65536
    assert samples["ringstore_objects"] == 9
    assert "ringstore_chunks" not in samples
    assert samples["ringstore_http_open_connections"] == 4
    assert samples["ringstore_http_connections_total"] == 10
    assert samples["ringstore_http_connections_rejected_total"] == 0
