"""The Riak object resource over in-memory connections to one node's real KV: representations,
siblings, conditional requests, ranges, digests, URL decoding and the refusal of bad input."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from typing import TYPE_CHECKING

import pytest

from ringstore.core.hashing import chunk_hash
from ringstore.core.httpsem import parse_http_date
from ringstore.storage.engine import MAX_BUCKET_BYTES, MAX_KEY_BYTES
from tests.http.conftest import CHUNK_BYTES, INLINE_MAX_BYTES, assert_nothing_stored

if TYPE_CHECKING:
    from rawclient import RawClient, Reply

    from tests.http.conftest import OneNode

TEXT = {"Content-Type": "text/plain"}
SMALL = b"hello"  # stored inline in the object record
# Three chunks, the last one short: streamed chunk by chunk by read_value.
LARGE = random.Random(3).randbytes(2 * CHUNK_BYTES + 1000)
assert len(SMALL) <= INLINE_MAX_BYTES < len(LARGE)


def multipart_parts(reply: Reply) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, body) of each part of a multipart/mixed answer."""
    match = re.fullmatch(r"multipart/mixed; boundary=(\S+)", reply.header("Content-Type") or "")
    assert match
    delimiter = b"\r\n--" + match[1].encode()
    assert reply.body.endswith(delimiter + b"--\r\n")
    parts = []
    for raw in reply.body[: -len(delimiter) - 4].split(delimiter + b"\r\n")[1:]:
        head, body = raw.split(b"\r\n\r\n", 1)
        parts.append((dict(line.decode().split(": ", 1) for line in head.split(b"\r\n")), body))
    return parts


async def put(client: RawClient, path: str, body: bytes, headers=None, **extra: str):
    merged = {**TEXT, **(headers or {}), **extra}
    return await client.request("PUT", path, merged, body)


def sf(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


# -- plain reads and writes --------------------------------------------------------------------


async def test_put_then_get_round_trips_every_header(client: RawClient) -> None:
    reply = await client.request(
        "PUT",
        "/buckets/b/keys/k",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Encoding", "gzip"),
            ("X-Riak-Meta-Color", "blue"),
            ("x-riak-meta-Shape", "round"),
            ("Link", '</buckets/b>; rel="up", </buckets/other/keys/x>; riaktag="friend"'),
        ],
        SMALL,
    )
    assert reply.status == 204
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert reply.status == 200
    assert reply.body == SMALL
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    assert reply.header("Content-Encoding") == "gzip"
    assert reply.header("X-Riak-Meta-Color") == "blue"
    assert reply.header("X-Riak-Meta-Shape") == "round"
    assert (
        reply.header("Link") == '</buckets/b>; rel="up", </buckets/other/keys/x>; riaktag="friend"'
    )
    assert re.fullmatch(r'"[0-9a-f]+"', reply.header("ETag") or "")
    assert parse_http_date(reply.header("Last-Modified") or "") is not None
    assert reply.header("X-Riak-Vclock")
    assert reply.header("Vary") == "Accept"
    assert reply.header("Content-Length") == str(len(SMALL))


@pytest.mark.parametrize("value", [b"", SMALL, LARGE], ids=["empty", "inline", "chunked"])
async def test_values_round_trip_and_head_matches_get(client: RawClient, value: bytes) -> None:
    assert (await put(client, "/buckets/b/keys/k", value, {"Content-Type": "a/b"})).status == 204
    got = await client.request("GET", "/buckets/b/keys/k")
    assert (got.status, got.body) == (200, value)
    head = await client.request("HEAD", "/buckets/b/keys/k")
    assert head.status == 200
    assert head.header("Content-Length") == str(len(value))
    assert head.header("ETag") == got.header("ETag")
    # the connection is still in step: a HEAD sent no body
    assert (await client.request("GET", "/ping")).body == b"OK"


async def test_missing_key_is_404(client: RawClient) -> None:
    reply = await client.request("GET", "/buckets/b/keys/nothing")
    assert (reply.status, reply.body) == (404, b"not found\n")
    assert reply.header("X-Riak-Deleted") is None


async def test_post_to_bucket_chooses_a_key(client: RawClient) -> None:
    reply = await client.request("POST", "/buckets/b/keys", TEXT, SMALL)
    assert reply.status == 201
    location = reply.header("Location") or ""
    assert re.fullmatch(r"/buckets/b/keys/[0-9A-Za-z]{22}", location)
    assert (await client.request("GET", location)).body == SMALL
    other = await client.request("POST", "/buckets/b/keys", TEXT, SMALL)
    assert other.header("Location") != location


async def test_post_to_key_is_put(client: RawClient) -> None:
    assert (await client.request("POST", "/buckets/b/keys/k", TEXT, SMALL)).status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == SMALL


async def test_returnbody(client: RawClient) -> None:
    reply = await put(client, "/buckets/b/keys/k?returnbody=true", LARGE)
    assert (reply.status, reply.body) == (200, LARGE)
    assert reply.header("X-Riak-Vclock") and reply.header("ETag")
    created = await client.request("POST", "/buckets/b/keys?returnbody=true", TEXT, SMALL)
    assert (created.status, created.body) == (201, SMALL)
    assert created.header("Location")
    # only the exact string "true" turns it on, as in Riak
    assert (await put(client, "/buckets/b/keys/k?returnbody=TRUE", SMALL)).status == 204


# -- siblings ----------------------------------------------------------------------------------


async def make_siblings(client: RawClient, first: bytes, second: bytes) -> tuple[str, str]:
    """Two concurrent writes (no context); returns the vtags of `first` and `second`.

    The order siblings are listed in is the KV's business, so nothing here assumes it.
    """
    await put(client, "/buckets/b/keys/k", first)
    vtag1 = ((await client.request("GET", "/buckets/b/keys/k")).header("ETag") or "").strip('"')
    await put(client, "/buckets/b/keys/k", second, {"Content-Type": "application/x-two"})
    text = await client.request("GET", "/buckets/b/keys/k")
    assert text.status == 300
    vtags = text.body.decode().splitlines()[1:]
    assert len(vtags) == 2 and vtag1 in vtags
    vtag2 = next(vtag for vtag in vtags if vtag != vtag1)
    return vtag1, vtag2


async def test_siblings_as_text(client: RawClient) -> None:
    vtag1, vtag2 = await make_siblings(client, b"one", b"two")
    reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "*/*"})
    assert reply.status == 300
    assert reply.header("Content-Type") == "text/plain"
    lines = reply.body.decode().split("\n")
    assert lines[0] == "Siblings:" and lines[-1] == ""
    assert sorted(lines[1:-1]) == sorted([vtag1, vtag2])
    assert reply.header("X-Riak-Vclock") and reply.header("ETag")
    assert (await client.request("GET", f"/buckets/b/keys/k?vtag={vtag1}")).body == b"one"
    reply = await client.request("GET", f"/buckets/b/keys/k?vtag={vtag2}")
    assert (reply.body, reply.header("Content-Type")) == (b"two", "application/x-two")
    assert reply.header("ETag") == f'"{vtag2}"'
    assert (await client.request("GET", "/buckets/b/keys/k?vtag=nope")).status == 404
    assert (await client.request("GET", "/buckets/b/keys/k", {"Accept": "image/png"})).status == 406


@pytest.mark.parametrize(("first", "second"), [(b"one", b"two"), (LARGE, LARGE[::-1])])
async def test_siblings_as_multipart_in_riaks_layout(
    client: RawClient, first: bytes, second: bytes
) -> None:
    vtag1, vtag2 = await make_siblings(client, first, second)
    expected = {vtag1: (first, "text/plain"), vtag2: (second, "application/x-two")}
    reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "multipart/mixed"})
    assert reply.status == 300
    content_type = reply.header("Content-Type") or ""
    match = re.fullmatch(r"multipart/mixed; boundary=([0-9A-Za-z]+)", content_type)
    assert match
    boundary = match[1].encode()
    assert int(reply.header("Content-Length") or -1) == len(reply.body)
    assert reply.body.startswith(b"\r\n--" + boundary + b"\r\n")  # Riak's leading CRLF
    assert reply.body.endswith(b"\r\n--" + boundary + b"--\r\n")
    parts = reply.body[: -len(boundary) - 8].split(b"\r\n--" + boundary + b"\r\n")[1:]
    assert len(parts) == 2
    for part in parts:
        head, body = part.split(b"\r\n\r\n", 1)
        fields = [line.decode().split(": ", 1) for line in head.split(b"\r\n")]
        assert [name for name, _ in fields] == ["Content-Type", "Link", "Etag", "Last-Modified"]
        headers = dict(fields)
        value, ctype = expected.pop(headers["Etag"])
        assert (body, headers["Content-Type"]) == (value, ctype)
        assert headers["Link"] == '</buckets/b>; rel="up"'
        assert parse_http_date(headers["Last-Modified"]) is not None
    assert expected == {}


async def test_resolving_siblings_with_the_vclock(client: RawClient) -> None:
    await make_siblings(client, b"one", b"two")
    vclock = (await client.request("GET", "/buckets/b/keys/k")).header("X-Riak-Vclock") or ""
    reply = await put(client, "/buckets/b/keys/k", b"merged", {"X-Riak-Vclock": vclock})
    assert reply.status == 204
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"merged")


async def test_returnbody_with_siblings(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", b"one")
    reply = await put(client, "/buckets/b/keys/k?returnbody=true", b"two")
    assert reply.status == 300
    assert reply.body.startswith(b"Siblings:\n")
    reply = await put(
        client, "/buckets/b/keys/k?returnbody=true", b"three", {"Accept": "multipart/mixed"}
    )
    assert reply.status == 300
    assert b"\r\n\r\nthree\r\n" in reply.body and b"\r\n\r\none\r\n" in reply.body
    # no 406 on a write: Riak falls back to text
    reply = await put(client, "/buckets/b/keys/k?returnbody=true", b"four", {"Accept": "a/b"})
    assert reply.status == 300


async def test_tombstone_is_404_with_deleted_and_vclock(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", SMALL)
    assert (await client.request("DELETE", "/buckets/b/keys/k")).status == 204
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert reply.status == 404
    assert reply.header("X-Riak-Deleted") == "true"
    vclock = reply.header("X-Riak-Vclock")
    assert vclock
    reply = await put(client, "/buckets/b/keys/k", b"again", {"X-Riak-Vclock": vclock})
    assert reply.status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == b"again"


async def test_blind_write_over_a_tombstone_is_its_sibling_as_in_riak(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", SMALL)
    assert (await client.request("DELETE", "/buckets/b/keys/k")).status == 204
    assert (await put(client, "/buckets/b/keys/k", b"again")).status == 204  # no context
    reply = await client.request("GET", "/buckets/b/keys/k", {"Accept": "multipart/mixed"})
    assert reply.status == 300
    parts = sorted(multipart_parts(reply), key=lambda part: part[1])
    assert [(headers.get("X-Riak-Deleted"), body) for headers, body in parts] == [
        ("true", b""),
        (None, b"again"),
    ]
    vclock = reply.header("X-Riak-Vclock") or ""
    assert (
        await put(client, "/buckets/b/keys/k", b"resolved", {"X-Riak-Vclock": vclock})
    ).status == 204
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"resolved")


async def test_a_vclock_of_another_key_is_400(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", SMALL)
    vclock = (await client.request("GET", "/buckets/b/keys/k")).header("X-Riak-Vclock") or ""
    reply = await put(client, "/buckets/b/keys/other", SMALL, {"X-Riak-Vclock": vclock})
    assert reply.status == 400
    assert b"the context was not issued for this object" in reply.body
    assert (await client.request("GET", "/buckets/b/keys/other")).status == 404
    reply = await client.request("DELETE", "/buckets/b/keys/other", {"X-Riak-Vclock": vclock})
    assert reply.status == 400


# -- conditional requests ----------------------------------------------------------------------


async def test_conditional_get_and_head(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", LARGE)
    first = await client.request("GET", "/buckets/b/keys/k")
    etag, modified = first.header("ETag") or "", first.header("Last-Modified") or ""
    for method in ("GET", "HEAD"):
        reply = await client.request(method, "/buckets/b/keys/k", {"If-None-Match": etag})
        assert (reply.status, reply.body) == (304, b"")
        assert reply.header("ETag") == etag
    reply = await client.request("GET", "/buckets/b/keys/k", {"If-Modified-Since": modified})
    assert reply.status == 304
    reply = await client.request("GET", "/buckets/b/keys/k", {"If-Match": '"other"'})
    assert reply.status == 412
    reply = await client.request("GET", "/buckets/b/keys/k", {"If-Match": etag})
    assert (reply.status, reply.body) == (200, LARGE)
    reply = await client.request(
        "GET", "/buckets/b/keys/k", {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert reply.status == 412
    # preconditions are ignored where the answer would be 404 anyway
    reply = await client.request("GET", "/buckets/b/keys/none", {"If-Match": "*"})
    assert reply.status == 404


async def test_if_none_match_star_makes_a_create_only_write(client: RawClient) -> None:
    assert (await put(client, "/buckets/b/keys/k", b"first", {"If-None-Match": "*"})).status == 204
    assert (await put(client, "/buckets/b/keys/k", b"second", {"If-None-Match": "*"})).status == 412
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert (reply.status, reply.body) == (200, b"first")


async def test_put_if_match(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", b"first")
    current = await client.request("GET", "/buckets/b/keys/k")
    etag, vclock = current.header("ETag") or "", current.header("X-Riak-Vclock") or ""
    assert (await put(client, "/buckets/b/keys/k", b"x", {"If-Match": '"nope"'})).status == 412
    assert (await put(client, "/buckets/new/keys/k", b"x", {"If-Match": "*"})).status == 412
    assert (await client.request("GET", "/buckets/new/keys/k")).status == 404
    reply = await put(
        client, "/buckets/b/keys/k", b"second", {"If-Match": etag, "X-Riak-Vclock": vclock}
    )
    assert reply.status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == b"second"


async def test_delete_preconditions(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", SMALL)
    reply = await client.request("DELETE", "/buckets/b/keys/k", {"If-Match": '"nope"'})
    assert reply.status == 412
    reply = await client.request(
        "DELETE", "/buckets/b/keys/k", {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert reply.status == 412
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 200
    etag = (await client.request("GET", "/buckets/b/keys/k")).header("ETag") or ""
    assert (await client.request("DELETE", "/buckets/b/keys/k", {"If-Match": etag})).status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404


async def test_malformed_if_match_is_400(client: RawClient) -> None:
    await put(client, "/buckets/b/keys/k", SMALL)
    reply = await client.request("GET", "/buckets/b/keys/k", {"If-Match": '"unterminated'})
    assert reply.status == 400
    reply = await put(client, "/buckets/b/keys/k", b"new", {"If-None-Match": '"a" "b"'})
    assert reply.status == 400
    assert (await client.request("GET", "/buckets/b/keys/k")).body == SMALL


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"0123456789", LARGE], ids=["inline", "chunked"])
async def test_single_byte_ranges(client: RawClient, value: bytes) -> None:
    await put(client, "/buckets/b/keys/k", value)
    size = len(value)
    cases = {"bytes=2-5": (2, 6), "bytes=3-": (3, size), "bytes=-4": (size - 4, size)}
    if size > 2 * CHUNK_BYTES:  # ranges that start and end inside different chunks
        cases[f"bytes={CHUNK_BYTES - 2}-{2 * CHUNK_BYTES + 1}"] = (
            CHUNK_BYTES - 2,
            2 * CHUNK_BYTES + 2,
        )
        cases[f"bytes={CHUNK_BYTES}-{CHUNK_BYTES}"] = (CHUNK_BYTES, CHUNK_BYTES + 1)
    for spec, (start, end) in cases.items():
        reply = await client.request("GET", "/buckets/b/keys/k", {"Range": spec})
        assert reply.status == 206, spec
        assert reply.body == value[start:end]
        assert reply.header("Content-Range") == f"bytes {start}-{end - 1}/{size}"
    reply = await client.request("GET", "/buckets/b/keys/k", {"Range": f"bytes={size}-"})
    assert reply.status == 416
    assert reply.header("Content-Range") == f"bytes */{size}"
    reply = await client.request("GET", "/buckets/b/keys/k", {"Range": "bytes=0-1,4-5"})
    assert (reply.status, reply.body) == (200, value)  # several ranges: whole value
    reply = await client.request(
        "GET", "/buckets/b/keys/k", {"Range": "bytes=0-1", "If-Range": '"stale"'}
    )
    assert (reply.status, reply.body) == (200, value)
    etag = reply.header("ETag") or ""
    reply = await client.request(
        "GET", "/buckets/b/keys/k", {"Range": "bytes=0-1", "If-Range": etag}
    )
    assert (reply.status, reply.body) == (206, value[:2])


# -- digests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["inline", "chunked"])
async def test_matching_digests_are_accepted(client: RawClient, value: bytes) -> None:
    md5 = base64.b64encode(hashlib.md5(value).digest()).decode()
    headers = {
        "Content-Digest": f"{sf('sha-256', value)}, {sf('sha-512', value)}",
        "Content-MD5": md5,
    }
    assert (await put(client, "/buckets/b/keys/k", value, headers)).status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == value


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Digest": sf("sha-256", b"something else")},
        {"Content-Digest": sf("sha-512", b"something else")},
        {"Content-MD5": base64.b64encode(hashlib.md5(b"else").digest()).decode()},
    ],
)
async def test_digest_mismatch_is_400_and_stores_nothing(
    client: RawClient, node: OneNode, headers: dict[str, str]
) -> None:
    reply = await put(client, "/buckets/b/keys/k", LARGE, headers)
    assert reply.status == 400
    assert b"does not match the request body" in reply.body
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404
    # the chunks reached the disk before the digest could be checked: unreferenced, swept
    assert node.storage.statistics().chunks == 3
    await assert_nothing_stored(node)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Digest": "sha-256=:not-base64:"},
        {"Content-MD5": "x"},
        {"Content-Digest": "sha-256"},
    ],
)
async def test_malformed_digest_headers_are_400(client: RawClient, node: OneNode, headers) -> None:
    assert (await put(client, "/buckets/b/keys/k", LARGE, headers)).status == 400
    assert node.storage.statistics().chunks == 0  # refused before the body was read
    await assert_nothing_stored(node)


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["inline", "chunked"])
async def test_repr_digest_on_request(client: RawClient, value: bytes) -> None:
    await put(client, "/buckets/b/keys/k", value)
    reply = await client.request("GET", "/buckets/b/keys/k")
    assert reply.header("Repr-Digest") is None
    reply = await client.request("GET", "/buckets/b/keys/k", {"Want-Repr-Digest": "sha-256=5"})
    assert reply.header("Repr-Digest") == sf("sha-256", value)
    reply = await client.request(
        "GET",
        "/buckets/b/keys/k",
        {"Want-Repr-Digest": "sha-256=1, sha-512=9", "Range": "bytes=0-1"},
    )
    assert reply.status == 206
    assert reply.header("Repr-Digest") == sf("sha-512", value)  # of the whole representation
    reply = await client.request("HEAD", "/buckets/b/keys/k", {"Want-Repr-Digest": "sha-256=1"})
    assert reply.header("Repr-Digest") == sf("sha-256", value)


# -- bad input ---------------------------------------------------------------------------------


async def test_missing_content_type_is_400(client: RawClient, node: OneNode) -> None:
    reply = await client.request("PUT", "/buckets/b/keys/k", {}, SMALL)
    assert (reply.status, reply.body) == (400, b"Missing Content-Type request header\n")
    # the small unread body was drained: the connection goes on
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404
    await assert_nothing_stored(node)


async def test_invalid_content_type_is_415(client: RawClient, node: OneNode) -> None:
    reply = await client.request("PUT", "/buckets/b/keys/k", {"Content-Type": "nonsense"}, LARGE)
    assert reply.status == 415
    assert b"is not a valid media type" in reply.body
    assert node.storage.statistics().chunks == 0  # refused before the body was read
    await assert_nothing_stored(node)


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        (
            "Application/X-Thing; Charset=UTF-8; level=1",
            "application/x-thing; level=1; charset=UTF-8",
        ),
        ('a/b; p="x y"', 'a/b; p="x y"'),
        # Longer than the Content-Types whose parse is remembered: parsed anew each time.
        ("a/b; p=" + "v" * 300 + "; charset=utf-8", "a/b; p=" + "v" * 300 + "; charset=utf-8"),
    ],
)
async def test_content_type_is_stored_alike_every_time(
    client: RawClient, sent: str, shown: str
) -> None:
    for key in ("k1", "k2"):
        reply = await put(client, f"/buckets/b/keys/{key}", SMALL, {"Content-Type": sent})
        assert reply.status == 204
        reply = await client.request("GET", f"/buckets/b/keys/{key}")
        assert reply.header("Content-Type") == shown


async def test_invalid_content_type_is_415_every_time(client: RawClient) -> None:
    for _ in range(2):
        reply = await put(client, "/buckets/b/keys/k", SMALL, {"Content-Type": "nonsense"})
        assert reply.status == 415
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404


@pytest.mark.parametrize(
    "link",
    [
        "garbage",
        '</buckets/other>; rel="up"',  # the only bucket link allowed is our own bucket's up
        '</buckets/b/keys/k>; rel="next"',
        '</buckets/b/keys/k; riaktag="unterminated',
    ],
)
async def test_bad_link_header_is_400(client: RawClient, node: OneNode, link: str) -> None:
    reply = await put(client, "/buckets/b/keys/k", LARGE, {"Link": link})
    assert reply.status == 400
    assert reply.body.startswith(b"Invalid Link header")
    assert node.storage.statistics().chunks == 0  # refused before the body was read
    await assert_nothing_stored(node)


async def test_malformed_vclock_is_400(client: RawClient) -> None:
    reply = await put(client, "/buckets/b/keys/k", SMALL, {"X-Riak-Vclock": "%%%not base64"})
    assert reply.status == 400
    assert (await client.request("GET", "/buckets/b/keys/k")).status == 404


async def test_empty_user_meta_name_is_400(client: RawClient) -> None:
    reply = await put(client, "/buckets/b/keys/k", SMALL, {"X-Riak-Meta-": "v"})
    assert reply.status == 400


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("r=bogus", "r query parameter must be an integer or one of the following words"),
        ("w=7", "n_val_violation"),
        ("notfound_ok=maybe", "notfound_ok query parameter must be true or false"),
        ("timeout=soon", "Bad timeout value"),
    ],
)
async def test_bad_query_parameters_are_400_with_riaks_text(
    client: RawClient, query: str, message: str
) -> None:
    method = "GET" if query.startswith(("r=", "notfound")) else "PUT"
    reply = await client.request(method, f"/buckets/b/keys/k?{query}", TEXT, SMALL)
    assert reply.status == 400
    assert message.encode() in reply.body


# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "raw"),
    [
        ("a%20b", b"a b"),
        ("a+b", b"a b"),  # + is a space, as mochiweb_util:unquote
        ("a%2Bb", b"a+b"),
        ("dir%2Ffile", b"dir/file"),
        ("%00%FF%C3%A9", b"\x00\xff\xc3\xa9"),
    ],
)
async def test_keys_are_url_decoded_to_raw_bytes(
    client: RawClient, encoded: str, raw: bytes
) -> None:
    assert (await put(client, f"/buckets/b%2Fx/keys/{encoded}", SMALL)).status == 204
    listing = await client.request("GET", "/buckets/b%2Fx/keys?keys=true")
    names = json.loads(listing.body)["keys"]
    assert [name.encode("utf-8", "surrogateescape") for name in names] == [raw]
    reply = await client.request("POST", "/buckets/b%2Fx/keys/" + encoded, TEXT, b"v2")
    assert reply.status == 204


async def test_location_is_url_encoded(client: RawClient) -> None:
    reply = await client.request("POST", "/buckets/a%20b%2F/keys", TEXT, SMALL)
    assert (reply.header("Location") or "").startswith("/buckets/a+b%2F/keys/")


@pytest.mark.parametrize("path", ["/buckets/b/keys/%zz", "/buckets/b/keys/%4", "/buckets//keys/k"])
async def test_bad_urls_are_400(client: RawClient, path: str) -> None:
    assert (await client.request("GET", path)).status == 400


async def test_default_bucket_type_path(client: RawClient) -> None:
    reply = await put(client, "/types/default/buckets/b/keys/k", SMALL)
    assert reply.status == 204
    assert (await client.request("GET", "/buckets/b/keys/k")).body == SMALL
    reply = await client.request("POST", "/types/default/buckets/b/keys", TEXT, SMALL)
    assert (reply.header("Location") or "").startswith("/types/default/buckets/b/keys/")
    reply = await client.request("GET", "/types/maps/buckets/b/keys/k")
    assert reply.status == 404
    assert b"Unknown bucket type" in reply.body


# -- errors from the KV ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("DELETE", "/buckets/b/keys/never-written", 404, b"not found"),
        ("GET", "/buckets/b/keys/k?r=2", 400, b"n_val_violation"),
        ("PUT", "/buckets/b/keys/k?w=all&dw=2", 400, b"n_val_violation"),
        ("PUT", "/buckets/b/keys/" + "k" * 401, 400, b"key is 401 bytes; the limit is 400"),
    ],
)
async def test_kv_errors_map_to_statuses(
    client: RawClient, node: OneNode, method: str, path: str, status: int, text: bytes
) -> None:
    reply = await client.request(method, path, TEXT, SMALL if method == "PUT" else None)
    assert reply.status == status
    assert reply.header("Content-Type") == "text/plain"
    assert text in reply.body
    assert (await client.request("GET", "/ping")).status == 200  # connection still fine
    await assert_nothing_stored(node)


LONGEST_BUCKET = "b" * MAX_BUCKET_BYTES
LONGEST_KEY = "k" * MAX_KEY_BYTES


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", f"/buckets/b/keys/{LONGEST_KEY}k", 400, b"key is 401 bytes; the limit is 400"),
        ("GET", f"/buckets/{LONGEST_BUCKET}b/keys/k", 400, b"bucket name is 101 bytes"),
        ("PUT", f"/buckets/{LONGEST_BUCKET}b/keys/k", 400, b"bucket name is 101 bytes"),
        ("PUT", f"/buckets/{LONGEST_BUCKET}/keys/{LONGEST_KEY}", 204, b""),
        ("GET", f"/buckets/{LONGEST_BUCKET}/props", 200, LONGEST_BUCKET.encode()),
    ],
)
async def test_names_at_and_over_the_limits(
    client: RawClient, method: str, path: str, status: int, text: bytes
) -> None:
    reply = await client.request(method, path, TEXT, SMALL if method == "PUT" else None)
    assert (reply.status, text in reply.body) == (status, True)


async def test_value_read_failing_at_once_gets_an_error_status(
    client: RawClient, node: OneNode
) -> None:
    await put(client, "/buckets/b/keys/k", LARGE)
    node.storage.corrupt_chunk(chunk_hash(LARGE[:CHUNK_BYTES]))  # bit rot on the only replica
    reply = await client.request("GET", "/buckets/b/keys/k")
    # The first piece is read before the status line: an honest error, not a 200 cut short.
    assert reply.status >= 500
    assert b"no replica has a good copy of chunk" in reply.body
    assert node.storage.statistics().corrupt_chunks_found == 1
    assert (await client.request("GET", "/ping")).status == 200  # connection still fine


async def test_value_read_failing_mid_body_cuts_the_connection(
    client: RawClient, node: OneNode
) -> None:
    await put(client, "/buckets/b/keys/k", LARGE)
    node.storage.corrupt_chunk(chunk_hash(LARGE[2 * CHUNK_BYTES :]))
    await client.send(b"GET /buckets/b/keys/k HTTP/1.1\r\nHost: t\r\n\r\n")
    with pytest.raises(EOFError):
        await client.read_reply()  # 200 and the first two chunks, then the connection ends
    assert bytes(client.buffer) == LARGE[: 2 * CHUNK_BYTES]
