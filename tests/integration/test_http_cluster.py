"""The HTTP API of a real 3-node cluster: nodes over TCP on 127.0.0.1 with LMDB, clients over
real sockets (our raw client, and curl). Writes on one node are read on the others; siblings,
deletes, listings, bucket props and quorum failures are seen through HTTP only; a GET never
shows a PUT that is still streaming."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from ringstore.config import StorageConfig
from ringstore.core.httpsem import parse_http_date
from ringstore.storage.engine import MAX_KEY_BYTES
from tests.http.rawclient import RawClient, Reply
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration

CHUNK_BYTES = 64 * 1024
INLINE_MAX_BYTES = 1024
TEXT = {"Content-Type": "text/plain"}
BINARY = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}
SMALL = b"a small value"
LARGE = random.Random(1).randbytes(3 * CHUNK_BYTES + 17)  # four distinct chunks


def value_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
async def cluster3(nursery, tmp_path) -> AsyncIterator[Cluster]:
    storage = StorageConfig(inline_max=INLINE_MAX_BYTES, chunk_size=CHUNK_BYTES)
    cluster = Cluster(nursery, tmp_path, 3, storage=storage)
    await cluster.start()
    yield cluster
    cluster.stop_all()


@pytest.fixture
async def connect() -> AsyncIterator:
    """`await connect(node)`: a raw HTTP/1.1 client on the node's HTTP port, closed at the end."""
    opened: list[RawClient] = []

    async def open_(node) -> RawClient:
        host, port = node.http_address
        client = RawClient(await trio.open_tcp_stream(host, port))
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.aclose()


def multipart(reply: Reply) -> list[tuple[dict[str, str], bytes]]:
    """The parts (headers, body) of a multipart/mixed answer, in Riak's layout."""
    match = re.fullmatch(r"multipart/mixed; boundary=(\S+)", reply.header("Content-Type") or "")
    assert match, reply.header("Content-Type")
    delimiter = b"\r\n--" + match[1].encode()
    body = reply.body
    assert body.startswith(delimiter + b"\r\n") and body.endswith(delimiter + b"--\r\n")
    parts = []
    for raw in body[: -len(delimiter) - 4].split(delimiter + b"\r\n")[1:]:
        head, value = raw.split(b"\r\n\r\n", 1)
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        parts.append((headers, value))
    return parts


# -- replication as a client sees it -----------------------------------------------------------


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["inline", "chunked"])
async def test_put_on_one_node_get_on_every_other(cluster3, connect, value: bytes) -> None:
    n1, n2, n3 = (cluster3.nodes[name] for name in ("n1", "n2", "n3"))
    writer = await connect(n1)
    headers = {**BINARY, "X-Riak-Meta-Origin": "n1"}
    assert (await writer.request("PUT", "/buckets/b/keys/k", headers, value)).status == 204
    etags = set()
    for node in (n2, n3):
        reader = await connect(node)
        reply = await reader.request("GET", "/buckets/b/keys/k")
        assert (reply.status, reply.body) == (200, value)
        assert reply.header("Content-Type") == "application/octet-stream"
        assert reply.header("X-Riak-Meta-Origin") == "n1"
        assert parse_http_date(reply.header("Last-Modified") or "") is not None
        etags.add(reply.header("ETag"))
        head = await reader.request("HEAD", "/buckets/b/keys/k")
        assert head.header("Content-Length") == str(len(value))
        ranged = await reader.request("GET", "/buckets/b/keys/k", {"Range": "bytes=5-"})
        assert (ranged.status, ranged.body) == (206, value[5:])
    assert len(etags) == 1


async def test_concurrent_blind_puts_via_different_nodes_are_siblings_until_resolved(
    cluster3, connect
) -> None:
    values = {"n1": b"from n1", "n2": value_of(2, 2 * CHUNK_BYTES + 5), "n3": b""}

    async def blind_put(name: str) -> None:
        client = await connect(cluster3.nodes[name])
        reply = await client.request("PUT", "/buckets/b/keys/k?w=3", BINARY, values[name])
        assert reply.status == 204

    async with trio.open_nursery() as nursery:
        for name in values:
            nursery.start_soon(blind_put, name)

    vclocks = set()
    for node in cluster3.running():
        client = await connect(node)
        text = await client.request("GET", "/buckets/b/keys/k")
        assert text.status == 300
        lines = text.body.decode().split("\n")
        assert lines[0] == "Siblings:" and len(lines) == 5 and lines[-1] == ""
        reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "multipart/mixed"})
        assert reply.status == 300
        assert int(reply.header("Content-Length") or -1) == len(reply.body)
        assert sorted(body for _, body in multipart(reply)) == sorted(values.values())
        assert sorted(headers["Etag"] for headers, _ in multipart(reply)) == sorted(lines[1:-1])
        vclocks.add(reply.header("X-Riak-Vclock"))
    (vclock,) = vclocks  # every node shows the same siblings under the same context

    resolver = await connect(cluster3.nodes["n3"])
    headers = {**TEXT, "X-Riak-Vclock": vclock or ""}
    reply = await resolver.request("PUT", "/buckets/b/keys/k?w=3&returnbody=true", headers, b"one")
    assert (reply.status, reply.body) == (200, b"one")
    for node in cluster3.running():
        client = await connect(node)
        reply = await client.request("GET", "/buckets/b/keys/k?r=3")
        assert (reply.status, reply.body) == (200, b"one")


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["inline", "chunked"])
async def test_delete_then_404_with_x_riak_deleted_on_every_node(
    cluster3, connect, value: bytes
) -> None:
    n1, n2 = cluster3.nodes["n1"], cluster3.nodes["n2"]
    writer = await connect(n1)
    await writer.request("PUT", "/buckets/b/keys/k?w=3", TEXT, value)
    vclock = (await writer.request("GET", "/buckets/b/keys/k")).header("X-Riak-Vclock")
    deleter = await connect(n2)
    headers = {"X-Riak-Vclock": vclock or ""}
    assert (await deleter.request("DELETE", "/buckets/b/keys/k?w=3", headers)).status == 204
    for node in cluster3.running():
        client = await connect(node)
        reply = await client.request("GET", "/buckets/b/keys/k")
        assert reply.status == 404
        assert reply.header("X-Riak-Deleted") == "true"
        assert reply.header("X-Riak-Vclock")
        listing = await client.request("GET", "/buckets/b/keys?keys=true")
        assert json.loads(listing.body) == {"keys": []}
    # a write over the tombstone with its context brings the key back, without siblings
    tombstone_vclock = (await writer.request("GET", "/buckets/b/keys/k")).header("X-Riak-Vclock")
    headers = {**TEXT, "X-Riak-Vclock": tombstone_vclock or ""}
    assert (await writer.request("PUT", "/buckets/b/keys/k?w=3", headers, b"back")).status == 204
    reply = await (await connect(cluster3.nodes["n3"])).request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"back")
    # deleting what is not there is a 404 from any node
    missing = await deleter.request("DELETE", "/buckets/b/keys/never")
    assert missing.status == 404


async def test_key_and_bucket_listings_cover_every_node(cluster3, connect) -> None:
    names = [f"key-{i:02}" for i in range(24)]
    nodes = cluster3.running()
    for i, key in enumerate(names):
        client = await connect(nodes[i % 3])
        assert (await client.request("PUT", f"/buckets/b/keys/{key}", TEXT, SMALL)).status == 204
    for bucket in ("other", "third%20one"):
        client = await connect(nodes[0])
        assert (await client.request("PUT", f"/buckets/{bucket}/keys/k", TEXT, b"v")).status == 204
    for node in nodes:
        client = await connect(node)
        reply = await client.request("GET", "/buckets/b/keys?keys=true")
        assert sorted(json.loads(reply.body)["keys"]) == names
        reply = await client.request("GET", "/buckets/b/keys?keys=stream")
        objects = [json.loads(chunk) for chunk in reply.chunks]
        assert objects[-1] == {"keys": []}
        assert sorted(key for obj in objects for key in obj["keys"]) == names
        reply = await client.request("GET", "/buckets?buckets=true")
        assert sorted(json.loads(reply.body)["buckets"]) == ["b", "other", "third one"]
        reply = await client.request("GET", "/buckets?buckets=stream")
        objects = [json.loads(chunk) for chunk in reply.chunks]
        assert objects[-1] == {"buckets": []}
        listed = sorted(name for obj in objects for name in obj["buckets"])
        assert listed == ["b", "other", "third one"]


async def test_bucket_props_set_on_one_node_are_seen_by_the_others(cluster3, connect) -> None:
    n1, n2, n3 = (cluster3.nodes[name] for name in ("n1", "n2", "n3"))
    setter = await connect(n1)
    body = json.dumps({"props": {"allow_mult": False, "last_write_wins": True, "r": 1}})
    reply = await setter.request("PUT", "/buckets/p/props", JSON, body.encode())
    assert reply.status == 204
    for node in (n2, n3):
        client = await connect(node)
        props = json.loads((await client.request("GET", "/buckets/p/props")).body)["props"]
        assert (props["allow_mult"], props["last_write_wins"], props["r"]) == (False, True, 1)
    # and they act there: blind writes via two nodes leave one value, not siblings
    for node, value in ((n2, b"first"), (n3, b"second")):
        client = await connect(node)
        await client.request("PUT", "/buckets/p/keys/k?w=3", TEXT, value)
    reply = await (await connect(n1)).request("GET", "/buckets/p/keys/k")
    assert (reply.status, reply.body) == (200, b"second")

    assert (await (await connect(n3)).request("DELETE", "/buckets/p/props")).status == 204
    for node in (n1, n2):
        client = await connect(node)
        props = json.loads((await client.request("GET", "/buckets/p/props")).body)["props"]
        assert (props["allow_mult"], props["last_write_wins"]) == (True, False)


async def test_pr_3_with_a_node_stopped_is_503_naming_got_and_needed(cluster3, connect) -> None:
    n1 = cluster3.nodes["n1"]
    client = await connect(n1)
    assert (await client.request("PUT", "/buckets/b/keys/k?w=3", TEXT, SMALL)).status == 204
    await cluster3.stop_node("n3")
    await cluster3.wait_down("n3")
    client = await connect(n1)
    reply = await client.request("GET", "/buckets/b/keys/k?pr=3")
    assert reply.status == 503
    assert reply.header("Content-Type") == "text/plain"
    assert re.search(rb"pr quorum not met: got [0-2], needed 3", reply.body), reply.body
    reply = await client.request("PUT", "/buckets/b/keys/k?pw=3", TEXT, SMALL)
    assert reply.status == 503
    assert b"pw quorum not met: got 2, needed 3" in reply.body
    # the two nodes left still answer the default quorum, with the value intact
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, SMALL)


async def test_a_lone_node_configured_with_n_val_1_takes_writes(nursery, tmp_path, connect) -> None:
    cluster = Cluster(nursery, tmp_path, 1)
    cluster.configs["n1"] = replace(cluster.configs["n1"], n_val=1)
    await cluster.start()
    client = await connect(cluster.nodes["n1"])
    try:
        props = json.loads((await client.request("GET", "/buckets/b/props")).body)["props"]
        assert props["n_val"] == 1
        assert (await client.request("PUT", "/buckets/b/keys/k", TEXT, SMALL)).status == 204
    finally:
        cluster.stop_all()


async def test_an_over_long_key_is_400_from_every_node(cluster3, connect) -> None:
    body = json.dumps({"props": {"n_val": 1}}).encode()  # the only replica is remote from two
    client = await connect(cluster3.nodes["n1"])
    assert (await client.request("PUT", "/buckets/one/props", JSON, body)).status == 204
    key = "k" * (MAX_KEY_BYTES + 1)
    for node in cluster3.running():
        client = await connect(node)
        for method in ("PUT", "GET", "DELETE"):
            reply = await client.request(method, f"/buckets/one/keys/{key}", TEXT, SMALL)
            assert (reply.status, method) == (400, method), reply.body


# -- concurrency (issue 4) ---------------------------------------------------------------------


@pytest.mark.parametrize("previous", [None, SMALL, LARGE], ids=["absent", "inline", "chunked"])
async def test_gets_during_a_streaming_put_see_the_previous_version(
    cluster3, connect, previous: bytes | None
) -> None:
    """While a large PUT is still streaming, GETs on every node see the previous complete
    version (or 404), never part of the new one."""
    nodes = cluster3.running()
    writer = await connect(nodes[0])
    context = b""
    if previous is not None:
        reply = await writer.request(
            "PUT", "/buckets/b/keys/k?w=3&returnbody=true", BINARY, previous
        )
        context = b"X-Riak-Vclock: %s\r\n" % (reply.header("X-Riak-Vclock") or "").encode()
    new = value_of(7, 12 * CHUNK_BYTES + 3)
    readers = [await connect(node) for node in nodes]
    seen: list[int] = []

    async def read_everywhere() -> None:
        for reader in readers:
            reply = await reader.request("GET", "/buckets/b/keys/k")
            if previous is None:
                assert reply.status == 404
            else:
                assert (reply.status, reply.body) == (200, previous)
            seen.append(reply.status)

    head = b"PUT /buckets/b/keys/k?w=3 HTTP/1.1\r\nHost: t\r\nContent-Type: a/b\r\n"
    await writer.send(head + context + b"Content-Length: %d\r\n\r\n" % len(new))
    piece = 3 * CHUNK_BYTES // 2
    for start in range(0, len(new) - 1, piece):
        # all but the last byte: the upload cannot complete while we read
        await writer.send(new[start : min(start + piece, len(new) - 1)])
        await read_everywhere()
    await writer.send(new[-1:])
    assert (await writer.read_reply()).status == 204
    assert len(seen) == 3 * len(range(0, len(new) - 1, piece))
    for reader in readers:
        reply = await reader.request("GET", "/buckets/b/keys/k")
        assert (reply.status, reply.body) == (200, new)


async def test_concurrent_puts_without_context_all_survive_as_siblings(cluster3, connect) -> None:
    nodes = cluster3.running()
    values = [value_of(i, size) for i, size in enumerate([5, 900, 2000, 70_000, 200_000, 1])]

    async def blind_put(i: int) -> None:
        client = await connect(nodes[i % 3])
        head = b"PUT /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\nContent-Type: a/b\r\n"
        await client.send(head + b"Content-Length: %d\r\n\r\n" % len(values[i]))
        for start in range(0, len(values[i]), 10_000):  # interleave the uploads
            await client.send(values[i][start : start + 10_000])
            await trio.lowlevel.checkpoint()
        assert (await client.read_reply()).status == 204

    async with trio.open_nursery() as nursery:
        for i in range(len(values)):
            nursery.start_soon(blind_put, i)
    for node in nodes:
        client = await connect(node)
        reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "multipart/mixed"})
        assert reply.status == 300
        assert sorted(body for _, body in multipart(reply)) == sorted(values)


# -- a client no one here wrote ----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_against_the_cluster(cluster3, tmp_path: Path) -> None:
    bases = {
        name: "http://{}:{}".format(*node.http_address) for name, node in cluster3.nodes.items()
    }
    value = value_of(9, 2 * 1024 * 1024 + 123)  # over 1 MiB: curl sends Expect: 100-continue
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(value)

    async def curl(*args: str) -> bytes:
        result = await trio.run_process(
            ["curl", "-sS", "--max-time", "30", *args], capture_stdout=True, capture_stderr=True
        )
        return result.stdout

    status = await curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
        "-H", "Content-Type: application/octet-stream", "-H", "X-Riak-Meta-Tool: curl",
        "--data-binary", f"@{source}", f"{bases['n1']}/buckets/files/keys/in%20bin?w=3",
    )  # fmt: skip
    assert status == b"204"
    await curl("-o", str(target), f"{bases['n2']}/buckets/files/keys/in+bin")
    assert target.read_bytes() == value
    partial = await curl("-r", "70000-70099", "-o", "-", f"{bases['n3']}/buckets/files/keys/in+bin")
    assert partial == value[70000:70100]
    headers = await curl("-I", f"{bases['n3']}/buckets/files/keys/in%20bin")
    assert b"X-Riak-Meta-Tool: curl" in headers
    assert f"Content-Length: {len(value)}".encode() in headers
    keys = await curl(f"{bases['n2']}/buckets/files/keys?keys=true")
    assert json.loads(keys) == {"keys": ["in bin"]}
