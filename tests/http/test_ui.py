"""The web page's routes on a node's site over in-memory connections to a real KV: the static
files, /ui/status.json, and the multipart/form-data upload, including raw malformed forms
that must answer 400 and store nothing."""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import pytest
from rawclient import RawClient

from ringstore.coord.api import ClusterStatus, MemberStatus, WorkerStatus
from ringstore.http.server import HttpServer, build_server
from ringstore.http.ui import MAX_FIELD_BYTES
from tests.http.conftest import CHUNK_BYTES, assert_nothing_stored, wait_settled

if TYPE_CHECKING:
    from ringstore.coord.kv import Coordinator
    from tests.http.conftest import Connect, OneNode

BOUNDARY = "----ringstoreTestBoundary7MA4YWxk"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def cluster_status() -> ClusterStatus:
    return ClusterStatus(
        node="n1",
        ring_version=2,
        owners=("n1", "n2", "n3") * 2 + ("n1", "n2"),
        members=(
            MemberStatus("n1", True, 3),
            MemberStatus("n2", True, 3),
            MemberStatus("n3", False, 2),
        ),
        workers=(WorkerStatus("scrubber", "0 passes"),),
    )


@pytest.fixture
def server(kv: Coordinator) -> HttpServer:
    return build_server(kv, node_name="n1", rng=random.Random(3), cluster_status=cluster_status)


def part(name: str, data: bytes, filename: str | bytes | None = None, ctype: str | None = None):
    head = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        raw = filename.encode() if isinstance(filename, str) else filename
        head += b'; filename="' + raw + b'"'
    if ctype is not None:
        head += f"\r\nContent-Type: {ctype}".encode()
    return head, data


def form(*parts: tuple[bytes, bytes], end: bool = True) -> bytes:
    body = b""
    for head, data in parts:
        body += f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + data + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


async def post_form(
    client: RawClient, body: bytes, *, accept: str = "application/json", ctype: str = FORM_TYPE
):
    headers = {"Content-Type": ctype, "Accept": accept}
    return await client.request("POST", "/ui/upload", headers, body)


# -- the page ----------------------------------------------------------------------------------


async def test_the_page_and_its_files(client: RawClient) -> None:
    page = await client.request("GET", "/ui")
    assert page.status == 200
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert b'<script src="/ui/ui.js"' in page.body
    assert "default-src 'self'" in page.header("Content-Security-Policy")
    assert page.header("X-Content-Type-Options") == "nosniff"
    assert (await client.request("GET", "/ui/")).body == page.body
    for name, ctype in (("ui.js", "text/javascript"), ("ui.css", "text/css")):
        reply = await client.request("GET", f"/ui/{name}")
        assert reply.status == 200 and reply.body
        assert reply.header("Content-Type") == f"{ctype}; charset=utf-8"
    etag = page.header("ETag")
    again = await client.request("GET", "/ui", {"If-None-Match": etag})
    assert (again.status, again.body) == (304, b"")
    assert (await client.request("GET", "/ui", {"If-None-Match": '"other"'})).status == 200
    assert (await client.request("GET", "/ui/index.html.bak")).status == 404
    assert (await client.request("GET", "/ui/../stats")).status == 404
    assert (await client.request("DELETE", "/ui")).status == 405


async def test_status_document(client: RawClient) -> None:
    assert (await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "a/b"}, b"v")).status
    reply = await client.request("GET", "/ui/status.json")
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    status = json.loads(reply.body)
    assert status["node"] == "n1"
    assert isinstance(status["time_s"], float)
    assert status["requests"] == {"put": 1}  # this request is counted once it is answered
    assert status["open_connections"] == 1
    assert status["stats"]["node_puts_total"] == 1
    cluster = status["cluster"]
    assert cluster["ring_version"] == 2
    assert cluster["owners"][:3] == ["n1", "n2", "n3"]
    assert cluster["members"][2] == {"name": "n3", "up": False, "partitions": 2}
    assert cluster["handoffs"] == []
    assert cluster["workers"] == [{"name": "scrubber", "status": "0 passes"}]
    later = json.loads((await client.request("GET", "/ui/status.json")).body)
    assert later["requests"] == {"put": 1, "ui_status": 1}
    assert later["time_s"] >= status["time_s"]


# -- uploads -----------------------------------------------------------------------------------


async def test_upload_stores_the_file_and_answers_json(client: RawClient) -> None:
    data = bytes(range(256)) * 800  # 200 KiB: several chunks, streamed as they arrive
    assert len(data) > 3 * CHUNK_BYTES
    body = form(
        part("bucket", b"photos"),
        part("key", b"cat.jpg"),
        part("file", data, "IMG_0001.JPG", 'image/jpeg; profile="a b"; charset=x'),
    )
    reply = await post_form(client, body)
    assert reply.status == 201, reply.body
    assert reply.header("Location") == "/buckets/photos/keys/cat.jpg"
    assert json.loads(reply.body) == {
        "bucket": "photos",
        "key": "cat.jpg",
        "location": "/buckets/photos/keys/cat.jpg",
        "size": len(data),
    }
    stored = await client.request("GET", "/buckets/photos/keys/cat.jpg")
    assert stored.status == 200
    assert stored.header("Content-Type") == 'image/jpeg; profile="a b"; charset=x'
    assert stored.body == data


async def test_a_browser_without_javascript_is_sent_back_to_the_page(client: RawClient) -> None:
    body = form(part("bucket", b"my docs"), part("key", b""), part("file", b"hello", "a+b.txt"))
    reply = await post_form(client, body, accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert reply.status == 303
    assert reply.header("Location") == "/ui#bucket=my+docs&key=a%2Bb.txt"
    stored = await client.request("GET", "/buckets/my+docs/keys/a%2Bb.txt")
    assert (stored.status, stored.body) == (200, b"hello")
    assert stored.header("Content-Type") == "application/octet-stream"  # no type was sent


async def test_the_key_defaults_to_the_files_own_name(client: RawClient) -> None:
    windows = form(part("bucket", b"b"), part("file", b"1", "C:\\Users\\me\\report.pdf"))
    assert (await post_form(client, windows)).status == 201
    assert (await client.request("GET", "/buckets/b/keys/report.pdf")).body == b"1"
    raw = form(part("bucket", b"b"), part("file", b"2", b"\xff\xfe name.bin"))
    reply = await post_form(client, raw)
    assert reply.status == 201
    assert json.loads(reply.body)["key"] == "\udcff\udcfe name.bin"
    assert (await client.request("GET", "/buckets/b/keys/%FF%FE+name.bin")).body == b"2"


async def test_an_upload_to_an_existing_key_adds_a_sibling(client: RawClient) -> None:
    for value in (b"one", b"two"):
        body = form(part("bucket", b"b"), part("key", b"k"), part("file", value, "f.txt"))
        assert (await post_form(client, body)).status == 201
    reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "text/plain"})
    assert reply.status == 300
    assert reply.body.count(b"\n") == 3  # "Siblings:" and two vtags


async def test_a_chunked_upload(client: RawClient) -> None:
    body = form(part("bucket", b"b"), part("file", b"z" * 100_000, "z.bin"))
    pieces = [body[i : i + 7000] for i in range(0, len(body), 7000)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    headers = {"Content-Type": FORM_TYPE, "Accept": "application/json"}
    reply = await client.request(
        "POST", "/ui/upload", {**headers, "Transfer-Encoding": "chunked"}, chunked
    )
    assert reply.status == 201, reply.body
    assert (await client.request("GET", "/buckets/b/keys/z.bin")).body == b"z" * 100_000


FILE = part("file", b"x" * 5000, "f.bin")
BAD_UPLOADS = {
    "not a form": (b"plain", "text/plain"),
    "no boundary": (form(part("bucket", b"b"), FILE), "multipart/form-data"),
    "another boundary": (form(part("bucket", b"b"), FILE), "multipart/form-data; boundary=zz"),
    "no file field": (form(part("bucket", b"b"), part("key", b"k")), FORM_TYPE),
    "no bucket": (form(part("key", b"k"), FILE), FORM_TYPE),
    "empty bucket": (form(part("bucket", b""), FILE), FORM_TYPE),
    "no file chosen": (form(part("bucket", b"b"), part("file", b"", "")), FORM_TYPE),
    "file as text field": (form(part("bucket", b"b"), part("file", b"x")), FORM_TYPE),
    "file under another name": (form(part("bucket", b"b"), part("doc", b"x", "f")), FORM_TYPE),
    "unknown field": (form(part("bucket", b"b"), part("owner", b"me"), FILE), FORM_TYPE),
    "bucket twice": (form(part("bucket", b"b"), part("bucket", b"c"), FILE), FORM_TYPE),
    "field too long": (form(part("bucket", b"b" * (MAX_FIELD_BYTES + 1)), FILE), FORM_TYPE),
    "bad file type": (form(part("bucket", b"b"), part("file", b"x", "f", "no type")), FORM_TYPE),
    "a field after the file": (form(part("bucket", b"b"), FILE, part("key", b"k")), FORM_TYPE),
    "two files": (form(part("bucket", b"b"), FILE, FILE), FORM_TYPE),
    "no closing boundary": (form(part("bucket", b"b"), FILE, end=False), FORM_TYPE),
    "cut inside the file": (form(part("bucket", b"b"), FILE)[:-2000], FORM_TYPE),
    "garbage part headers": (form(part("bucket", b"b"), (b"nonsense", b"x")), FORM_TYPE),
}


@pytest.mark.parametrize(("body", "ctype"), BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
async def test_bad_uploads_are_400_and_store_nothing(
    connect: Connect, server: HttpServer, node: OneNode, body: bytes, ctype: str
) -> None:
    client = await connect()
    reply = await post_form(client, body, ctype=ctype)
    assert reply.status == 400, reply.body
    assert reply.header("Content-Type") == "text/plain"
    assert reply.body.strip()
    await client.stream.aclose()
    await wait_settled(server)
    await assert_nothing_stored(node)


async def test_a_client_gone_mid_upload_stores_nothing(
    connect: Connect, server: HttpServer, node: OneNode
) -> None:
    client = await connect()
    body = form(part("bucket", b"b"), part("file", b"y" * 300_000, "big.bin"))
    head = (
        "POST /ui/upload HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {FORM_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await client.send(head.encode() + body[: len(body) // 2])
    await client.stream.aclose()
    await wait_settled(server)
    await assert_nothing_stored(node)
