"""/metrics and /ui/status.json on a real 3-node cluster (TCP on 127.0.0.1, LMDB): each node's
view of members and ring, its storage gauges, and the counters a node failure moves."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ringstore.config import StorageConfig
from tests.http.rawclient import RawClient
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration

CHUNK_BYTES = 64 * 1024
RING_SIZE = 16


@pytest.fixture
async def cluster3(nursery, tmp_path) -> AsyncIterator[Cluster]:
    storage = StorageConfig(inline_max=1024, chunk_size=CHUNK_BYTES)
    cluster = Cluster(nursery, tmp_path, 3, storage=storage, ring_size=RING_SIZE)
    await cluster.start()
    yield cluster
    cluster.stop_all()


@pytest.fixture
async def connect() -> AsyncIterator:
    opened: list[RawClient] = []

    async def open_(node) -> RawClient:
        host, port = node.http_address
        client = RawClient(await trio.open_tcp_stream(host, port))
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.stream.aclose()


async def metrics_of(client: RawClient) -> dict[tuple[str, tuple], float]:
    reply = await client.request("GET", "/metrics")
    assert reply.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.body.decode())
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_each_node_shows_members_ring_and_workers(cluster3: Cluster, connect) -> None:
    for node in cluster3.running():
        client = await connect(node)
        status = json.loads((await client.request("GET", "/ui/status.json")).body)
        assert status["node"] == node.name
        cluster = status["cluster"]
        assert [m["name"] for m in cluster["members"]] == ["n1", "n2", "n3"]
        assert all(m["up"] for m in cluster["members"])
        assert sum(m["partitions"] for m in cluster["members"]) == RING_SIZE
        assert len(cluster["owners"]) == RING_SIZE
        assert {w["name"] for w in cluster["workers"]} == {"sweeper", "scrubber"}
        assert cluster["handoffs"] == []


async def test_storage_gauges_and_failure_counters(cluster3: Cluster, connect) -> None:
    n1 = cluster3.nodes["n1"]
    client = await connect(n1)
    before = await metrics_of(client)
    assert value(before, "ringstore_chunk_store_bytes") == 0
    assert value(before, "ringstore_lmdb_bytes") > 0
    assert value(before, "ringstore_scrub_passes_total") == 0
    assert value(before, "ringstore_member_up", member="n3") == 1

    big = random.Random(3).randbytes(4 * CHUNK_BYTES)  # four distinct chunks on every replica
    headers = {"Content-Type": "application/octet-stream"}
    # w=3: every replica, this node included, holds all chunks once the PUT is answered.
    put = await client.request("PUT", "/buckets/b/keys/big?w=3", headers, big)
    assert put.status == 204
    after_put = await metrics_of(client)
    assert value(after_put, "ringstore_chunk_store_bytes") == len(big)
    assert value(after_put, "ringstore_objects") == 1

    await cluster3.stop_node("n3")
    await cluster3.wait_down("n3")
    assert (await client.request("GET", "/buckets/b/keys/big?r=3")).status == 503
    after = await metrics_of(client)
    assert value(after, "ringstore_member_up", member="n3") == 0
    assert value(after, "ringstore_quorum_failures_total") == 1
    assert value(after, "ringstore_http_requests_total", operation="get", status="503") == 1
    assert value(after, "ringstore_http_requests_total", operation="put", status="204") == 1
