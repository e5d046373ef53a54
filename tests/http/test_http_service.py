"""Riak's service resources over in-memory connections to a real KV: discovery, ping, stats,
bucket and key listings (and their failures, on a real in-memory cluster), bucket properties,
routing errors."""

from __future__ import annotations

import json
import random
import re
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from rawclient import RawClient

import ringstore
from ringstore.http import riak
from ringstore.http.riak import RiakApp
from ringstore.http.server import HttpServer
from ringstore.net.memnet import LinkFaults, MemoryNetwork
from tests.integration.cluster import Cluster, memory_stores

if TYPE_CHECKING:
    from rawclient import Reply

    from tests.http.conftest import Connect, OneNode

TEXT = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}


async def store(client: RawClient, bucket: str, *keys: str) -> None:
    for key in keys:
        reply = await client.request("PUT", f"/buckets/{bucket}/keys/{key}", TEXT, b"v")
        assert reply.status == 204


# -- discovery, ping, stats --------------------------------------------------------------------


async def test_discovery_html_json_and_link(client: RawClient) -> None:
    html = await client.request("GET", "/")
    assert html.status == 200
    assert html.header("Content-Type") == "text/html"
    assert b'<a href="/buckets">riak_kv_wm_buckets</a>' in html.body
    assert '</buckets>; rel="riak_kv_wm_buckets"' in (html.header("Link") or "")
    assert '</ping>; rel="riak_kv_wm_ping"' in (html.header("Link") or "")
    as_json = await client.request("GET", "/", {"Accept": "application/json"})
    assert as_json.header("Content-Type") == "application/json"
    resources = json.loads(as_json.body)
    assert resources["riak_kv_wm_buckets"] == "/buckets"
    assert resources["riak_kv_wm_stats"] == "/stats"
    assert (await client.request("GET", "/", {"Accept": "image/png"})).status == 406


async def test_ping(client: RawClient) -> None:
    reply = await client.request("GET", "/ping")
    assert (reply.status, reply.body, reply.header("Content-Type")) == (200, b"OK", "text/html")
    assert (await client.request("HEAD", "/ping")).status == 200


async def test_stats(client: RawClient) -> None:
    await store(client, "b", "k")
    reply = await client.request("GET", "/stats")
    assert reply.header("Content-Type") == "application/json"
    stats = json.loads(reply.body)
    assert stats["nodename"] == "n1"
    assert stats["riak_kv_version"] == ringstore.__version__
    assert (stats["node_puts"], stats["node_gets"]) == (1, 0)
    for name in ("mean", "median", "95", "99", "100"):
        assert isinstance(stats[f"node_put_fsm_time_{name}"], int)
    pretty = await client.request("GET", "/stats", {"Accept": "text/plain"})
    assert pretty.header("Content-Type") == "text/plain"
    assert json.loads(pretty.body) == json.loads(reply.body)
    assert b"\n" in pretty.body
    assert (await client.request("GET", "/stats", {"Accept": "text/html"})).status == 406


# -- listings ----------------------------------------------------------------------------------


def streamed_names(reply: Reply, field: str) -> list[str]:
    """The names of a `?...=stream` answer: Riak's series of objects, the last one empty."""
    objects = [json.loads(chunk) for chunk in reply.chunks]
    assert objects[-1] == {field: []}
    assert all(set(obj) == {field} and obj[field] for obj in objects[:-1])
    return sorted(name for obj in objects for name in obj[field])


async def test_list_buckets(client: RawClient) -> None:
    await store(client, "b1", "k")
    await store(client, "b2", "k")
    await store(client, "b3", "k")
    reply = await client.request("GET", "/buckets?buckets=true")
    assert sorted(json.loads(reply.body)["buckets"]) == ["b1", "b2", "b3"]
    reply = await client.request("GET", "/buckets?buckets=stream")
    assert reply.header("Transfer-Encoding") == "chunked"
    assert streamed_names(reply, "buckets") == ["b1", "b2", "b3"]
    reply = await client.request("GET", "/buckets")
    assert json.loads(reply.body) == {"buckets": []}


async def test_list_keys(client: RawClient, node: OneNode) -> None:
    await store(client, "b", "k1", "k2", "k3")
    await store(client, "other", "x")
    reply = await client.request("GET", "/buckets/b/keys?keys=true")
    assert re.fullmatch(rb'\{"keys":\["k\d","k\d","k\d"\]\}', reply.body)  # compact, as Riak
    assert sorted(json.loads(reply.body)["keys"]) == ["k1", "k2", "k3"]
    reply = await client.request("GET", "/buckets/b/keys?keys=stream")
    assert streamed_names(reply, "keys") == ["k1", "k2", "k3"]
    assert json.loads((await client.request("GET", "/buckets/b/keys")).body) == {}
    reply = await client.request("GET", "/buckets/empty/keys?keys=true")
    assert json.loads(reply.body) == {"keys": []}
    await client.request("DELETE", "/buckets/b/keys/k2")
    reply = await client.request("GET", "/buckets/b/keys?keys=true")
    assert sorted(json.loads(reply.body)["keys"]) == ["k1", "k3"]  # tombstones are not listed


async def test_listing_with_the_storage_gone(client: RawClient, node: OneNode) -> None:
    """A listing that fails at once gets an error status; a HEAD starts no listing at all."""
    await store(client, "b", "k1")
    await node.storage.aclose()
    head = await client.request("HEAD", "/buckets/b/keys?keys=true")
    assert head.status == 200
    assert head.header("Content-Type") == "application/json"
    for mode in ("true", "stream"):
        reply = await client.request("GET", f"/buckets/b/keys?keys={mode}")
        assert reply.status == 500
        assert b"storage engine is not running" in reply.body
    assert (await client.request("GET", "/buckets?buckets=true")).status == 500


async def test_keys_true_streams_one_object_in_pieces(
    client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(riak, "LIST_BATCH_BYTES", 8)
    keys = [f"key{i:02}" for i in range(9)]
    await store(client, "b", *keys)
    reply = await client.request("GET", "/buckets/b/keys?keys=true")
    assert len(reply.chunks) > 3
    assert sorted(json.loads(reply.body)["keys"]) == keys


# -- listing failures on a real cluster (in memory, on a mock clock) ---------------------------


@pytest.fixture
async def cluster3(nursery, tmp_path, autojump_clock):
    """Three real nodes on the in-memory network, each with an in-memory engine."""
    network = MemoryNetwork(random.Random(0), default_faults=LinkFaults(delay_s=0.001))
    cluster = Cluster(nursery, tmp_path, 3, network=network, storage_factory=memory_stores())
    for name in cluster.names:  # the nodes' admin sockets live there, even without LMDB
        (tmp_path / name).mkdir()
    await cluster.start()
    yield cluster
    cluster.stop_all()


def connect_to(nursery: trio.Nursery, node) -> RawClient:
    """An in-memory connection to the Riak API of a cluster node's KV handle."""
    server = HttpServer(RiakApp(node.coordinator, rng=random.Random(2)), node_name=node.name)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    return RawClient(client_stream)


async def test_listing_with_a_partition_unreachable_fails_at_once(
    cluster3, nursery: trio.Nursery
) -> None:
    client = connect_to(nursery, cluster3.nodes["n1"])
    body = json.dumps({"props": {"n_val": 1}}).encode()  # one replica: n3 alone holds some keys
    assert (await client.request("PUT", "/buckets/b/props", JSON, body)).status == 204
    await store(client, "b", *(f"k{i}" for i in range(10)))
    await cluster3.stop_node("n3")
    await cluster3.wait_down("n3")
    reply = await client.request("GET", "/buckets/b/keys?keys=stream")
    assert reply.status == 503
    assert b"r quorum not met: got 0, needed 1" in reply.body
    assert (await client.request("GET", "/buckets/b/keys?keys=true")).status == 503


async def test_stream_listing_failing_later_ends_with_riaks_error_object(
    cluster3, nursery: trio.Nursery
) -> None:
    client = connect_to(nursery, cluster3.nodes["n1"])
    await store(client, "b", *(f"k{i}" for i in range(10)))
    # n3 still counts as up (no ping has failed yet) but will not answer within the timeout:
    # the listing gets n1's (and n2's) keys, then gives up on n3's.
    cluster3.network.set_faults("n1", "n3", LinkFaults(delay_s=30.0))
    start = trio.current_time()
    reply = await client.request("GET", "/buckets/b/keys?keys=stream&timeout=500")
    assert reply.status == 200
    objects = [json.loads(chunk) for chunk in reply.chunks]
    assert objects[-1] == {"error": "timeout"}
    assert objects[:-1] and all(set(obj) == {"keys"} and obj["keys"] for obj in objects[:-1])
    listed = [key for obj in objects[:-1] for key in obj["keys"]]
    assert set(listed) < {f"k{i}" for i in range(10)}
    assert 0.5 <= trio.current_time() - start < 1


async def test_listing_timeout_is_validated(client: RawClient) -> None:
    reply = await client.request("GET", "/buckets/b/keys?keys=true&timeout=soon")
    assert reply.status == 400
    assert b"Bad timeout value" in reply.body
    assert (await client.request("GET", "/buckets/b/keys?keys=true&timeout=5000")).status == 200


async def test_non_utf8_names_in_listings(client: RawClient) -> None:
    await client.request("PUT", "/buckets/b/keys/%FF%FE", TEXT, b"v")
    reply = await client.request("GET", "/buckets/b/keys?keys=true")
    assert b"\\udcff\\udcfe" in reply.body
    (name,) = json.loads(reply.body)["keys"]
    assert name.encode("utf-8", "surrogateescape") == b"\xff\xfe"


# -- bucket properties -------------------------------------------------------------------------


async def test_props_get_set_reset(client: RawClient) -> None:
    reply = await client.request("GET", "/buckets/b/props")
    assert reply.header("Content-Type") == "application/json"
    defaults = json.loads(reply.body)["props"]
    assert defaults["name"] == "b"
    assert {"n_val", "allow_mult", "r", "w", "last_write_wins"} <= set(defaults)
    body = json.dumps({"props": {"n_val": 5, "allow_mult": False}}).encode()
    assert (await client.request("PUT", "/buckets/b/props", JSON, body)).status == 204
    props = json.loads((await client.request("GET", "/buckets/b/props")).body)["props"]
    assert (props["n_val"], props["allow_mult"]) == (5, False)
    assert (await client.request("DELETE", "/buckets/b/props")).status == 204
    props = json.loads((await client.request("GET", "/buckets/b/props")).body)["props"]
    assert props == defaults


async def test_props_change_what_a_write_does(client: RawClient) -> None:
    body = json.dumps({"props": {"allow_mult": False}}).encode()
    await client.request("PUT", "/buckets/b/props", JSON, body)
    await store(client, "b", "k")
    await client.request("PUT", "/buckets/b/keys/k", TEXT, b"second")
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"second")


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        (TEXT, b'{"props":{}}', 415),
        ({}, b'{"props":{}}', 415),
        (JSON, b"{not json", 400),
        (JSON, b'{"n_val": 3}', 400),
        (JSON, b'{"props": [1]}', 400),
        (JSON, b"[]", 400),
        (JSON, b'{"props": {"n_val": 0}}', 400),
        (JSON, b'{"props": {"no_such_prop": 1}}', 400),
        (JSON, b'{"props": {"allow_mult": "yes"}}', 400),
        (JSON, b'{"props": {"n_val": 3}}' + b" " * 70_000, 413),
    ],
)
async def test_bad_props_are_refused_and_change_nothing(
    connect: Connect, headers: dict[str, str], body: bytes, status: int, autojump_clock
) -> None:
    client = await connect()
    before = await client.request("GET", "/buckets/b/props")
    reply = await client.request("PUT", "/buckets/b/props", headers, body)
    assert reply.status == status
    assert reply.header("Content-Type") == "text/plain"
    if status == 413:  # the rest of the body was never read: that connection is over
        assert await client.closed_by_server()
        client = await connect()
    after = await client.request("GET", "/buckets/b/props")
    assert after.body == before.body


# -- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/buckets/b/keys/k", "DELETE, GET, HEAD, POST, PUT"),
        ("DELETE", "/ping", "GET, HEAD"),
        ("PUT", "/buckets/b/keys", "GET, HEAD, POST"),
        ("POST", "/buckets/b/props", "DELETE, GET, HEAD, PUT"),
        ("BREW", "/stats", "GET, HEAD"),
    ],
)
async def test_method_not_allowed_names_the_allowed_ones(
    client: RawClient, method: str, path: str, allow: str
) -> None:
    reply = await client.request(method, path, TEXT, b"")
    assert reply.status == 405
    assert reply.header("Allow") == allow


@pytest.mark.parametrize("path", ["/nope", "/buckets/b", "/buckets/b/keys/k/extra", "/riak/b/k"])
async def test_unknown_paths_are_404(client: RawClient, path: str) -> None:
    assert (await client.request("GET", path)).status == 404
