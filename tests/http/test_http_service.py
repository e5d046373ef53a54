"""Riak's service resources over in-memory connections: discovery, ping, stats, bucket and
key listings, bucket properties, routing errors."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from ringstore.errors import QuorumError
from ringstore.http import riak

if TYPE_CHECKING:
    from conftest import Connect, DictKV, RawClient, Reply

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
    assert stats["nodename"] == "stub@127.0.0.1"
    assert stats["riak_kv_version"] == "ringstore-test"
    assert stats["node_puts"] == 1
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


async def test_list_keys(client: RawClient, kv: DictKV) -> None:
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
    kv.fail_with = QuorumError("list", 0, 1)  # a HEAD must not start a listing
    head = await client.request("HEAD", "/buckets/b/keys?keys=true")
    assert head.status == 200
    assert head.header("Content-Type") == "application/json"


async def test_keys_true_streams_one_object_in_pieces(
    client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(riak, "LIST_BATCH_BYTES", 8)
    keys = [f"key{i:02}" for i in range(9)]
    await store(client, "b", *keys)
    reply = await client.request("GET", "/buckets/b/keys?keys=true")
    assert len(reply.chunks) > 3
    assert sorted(json.loads(reply.body)["keys"]) == keys


async def test_listing_failing_at_once_gets_an_error_status(client: RawClient, kv: DictKV) -> None:
    kv.fail_with = QuorumError("list", 0, 1)
    reply = await client.request("GET", "/buckets/b/keys?keys=stream")
    assert reply.status == 503
    kv.fail_with = QuorumError("list", 0, 1)
    assert (await client.request("GET", "/buckets?buckets=true")).status == 503


async def test_stream_listing_failing_later_ends_with_riaks_error_object(
    client: RawClient, kv: DictKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store(client, "b", "k1", "k2", "k3")
    original = kv.list_keys

    async def failing(bucket: bytes):
        async for batch in original(bucket):
            yield batch
            raise QuorumError("list", 0, 1, "request timed out")

    monkeypatch.setattr(kv, "list_keys", failing)
    reply = await client.request("GET", "/buckets/b/keys?keys=stream")
    assert reply.status == 200
    assert [json.loads(chunk) for chunk in reply.chunks] == [
        {"keys": ["k1", "k2"]},
        {"error": "timeout"},
    ]


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
