"""Tests of the pure HTTP semantics: dates, negotiation, preconditions, ranges, digests,
Riak's sibling bodies."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.core import httpsem
from ringstore.core.httpsem import (
    BodyDigest,
    ByteRange,
    Decision,
    Preconditions,
    RangeNotSatisfiable,
    Validators,
    choose_media_type,
    choose_repr_digest,
    evaluate_preconditions,
    format_http_date,
    parse_content_digest,
    parse_etag_list,
    parse_http_date,
    parse_media_type,
    select_range,
    split_header_list,
)
from ringstore.errors import BadRequest

EPOCH_1994 = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


# -- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime, no zone: UTC
    ],
)
def test_parse_http_date_all_three_forms(text: str) -> None:
    assert parse_http_date(text) == EPOCH_1994


@pytest.mark.parametrize("text", ["", "garbage", "Sun, 32 Nov 1994 08:49:37 GMT", "1994-11-06"])
def test_parse_http_date_invalid_is_none(text: str) -> None:
    assert parse_http_date(text) is None


def test_format_http_date() -> None:
    assert format_http_date(EPOCH_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert httpsem.format_http_date_us(EPOCH_1994 * 1_000_000 + 999_999) == (
        "Sun, 06 Nov 1994 08:49:37 GMT"
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trip(seconds: int) -> None:
    assert parse_http_date(format_http_date(seconds)) == seconds


# -- header lists and media types --------------------------------------------------------------


def test_split_header_list_respects_quotes_and_angles() -> None:
    value = '</a,b>; riaktag="x,y", "q\\"uo,te" , ,last'
    assert split_header_list(value) == ['</a,b>; riaktag="x,y"', '"q\\"uo,te"', "last"]


@pytest.mark.parametrize("value", ['"open', "<open", 'a, "b'])
def test_split_header_list_unterminated_is_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        split_header_list(value)


def test_parse_media_type() -> None:
    media = parse_media_type('Text/Plain; Charset="utf-8"; format=flowed')
    assert media.essence == "text/plain"
    assert media.param("charset") == "utf-8"
    assert media.param("format") == "flowed"


@pytest.mark.parametrize("value", ["", "text", "text/", "/plain", "te xt/plain", "a/b; novalue"])
def test_parse_media_type_rejects_garbage(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_media_type(value)


@pytest.mark.parametrize(
    ("accept", "provided", "expected"),
    [
        (None, ["text/plain", "multipart/mixed"], "text/plain"),
        ("*/*", ["text/plain", "multipart/mixed"], "text/plain"),
        ("multipart/mixed", ["text/plain", "multipart/mixed"], "multipart/mixed"),
        ("multipart/mixed, */*;q=0.5", ["text/plain", "multipart/mixed"], "multipart/mixed"),
        ("text/*;q=0.2, multipart/*", ["text/plain", "multipart/mixed"], "multipart/mixed"),
        ("application/json", ["text/plain", "multipart/mixed"], None),
        ("text/plain;q=0", ["text/plain"], None),
        ("*/*, text/plain;q=0", ["text/plain"], None),  # the more specific range wins
        ("garbage", ["text/plain"], None),
        ("text/plain;q=2", ["text/plain"], None),  # a q outside 0..1 matches nothing
        ("IMAGE/PNG", ["image/png"], "image/png"),
    ],
)
def test_choose_media_type(accept: str | None, provided: list[str], expected: str | None) -> None:
    assert choose_media_type(accept, provided) == expected


# -- entity tags and preconditions -------------------------------------------------------------


def test_parse_etag_list() -> None:
    assert parse_etag_list("*", "If-Match").any_tag
    tags = parse_etag_list('"a", W/"b", bare', "If-Match")
    assert [(t.opaque, t.weak) for t in tags.tags] == [("a", False), ("b", True), ("bare", False)]
    assert tags.strong_match("a") and not tags.strong_match("b") and tags.weak_match("b")


@pytest.mark.parametrize("value", ['"a', 'W/"a', '"a"b"', "", ", ,", "a b"])
def test_parse_etag_list_malformed(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_etag_list(value, "If-Match")


CURRENT = Validators("abc", 1000)


def pre(**headers: str) -> Preconditions:
    return Preconditions.from_headers(
        headers.get("if_match"),
        headers.get("if_none_match"),
        headers.get("if_modified_since"),
        headers.get("if_unmodified_since"),
    )


def date(seconds: int) -> str:
    return format_http_date(seconds)


@pytest.mark.parametrize(
    ("method", "conditions", "current", "expected"),
    [
        ("GET", {}, CURRENT, Decision.PROCEED),
        ("GET", {"if_match": '"abc"'}, CURRENT, Decision.PROCEED),
        ("GET", {"if_match": '"other"'}, CURRENT, Decision.PRECONDITION_FAILED),
        ("GET", {"if_match": 'W/"abc"'}, CURRENT, Decision.PRECONDITION_FAILED),  # strong only
        ("PUT", {"if_match": "*"}, None, Decision.PRECONDITION_FAILED),
        ("PUT", {"if_match": "*"}, CURRENT, Decision.PROCEED),
        ("GET", {"if_none_match": '"abc"'}, CURRENT, Decision.NOT_MODIFIED),
        ("HEAD", {"if_none_match": 'W/"abc"'}, CURRENT, Decision.NOT_MODIFIED),  # weak ok
        ("GET", {"if_none_match": '"x", "y"'}, CURRENT, Decision.PROCEED),
        ("PUT", {"if_none_match": '"abc"'}, CURRENT, Decision.PRECONDITION_FAILED),
        ("PUT", {"if_none_match": "*"}, CURRENT, Decision.PRECONDITION_FAILED),
        ("PUT", {"if_none_match": "*"}, None, Decision.PROCEED),  # create-only write
        ("GET", {"if_modified_since": date(1000)}, CURRENT, Decision.NOT_MODIFIED),
        ("GET", {"if_modified_since": date(999)}, CURRENT, Decision.PROCEED),
        ("PUT", {"if_modified_since": date(5000)}, CURRENT, Decision.PROCEED),  # GET/HEAD only
        ("GET", {"if_modified_since": "bogus"}, CURRENT, Decision.PROCEED),  # ignored
        ("DELETE", {"if_unmodified_since": date(999)}, CURRENT, Decision.PRECONDITION_FAILED),
        ("DELETE", {"if_unmodified_since": date(1000)}, CURRENT, Decision.PROCEED),
        ("PUT", {"if_unmodified_since": date(1)}, None, Decision.PROCEED),  # nothing to compare
        # If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since
        ("PUT", {"if_match": '"abc"', "if_unmodified_since": date(1)}, CURRENT, Decision.PROCEED),
        (
            "GET",
            {"if_none_match": '"zzz"', "if_modified_since": date(5000)},
            CURRENT,
            Decision.PROCEED,
        ),
    ],
)
def test_evaluate_preconditions(
    method: str, conditions: dict[str, str], current: Validators | None, expected: Decision
) -> None:
    assert evaluate_preconditions(method, pre(**conditions), current) == expected


def test_if_modified_since_in_the_future_is_ignored() -> None:
    conditions = pre(if_modified_since=date(9000))
    assert evaluate_preconditions("GET", conditions, CURRENT, now_s=2000) == Decision.PROCEED
    assert evaluate_preconditions("GET", conditions, CURRENT, now_s=9999) == Decision.NOT_MODIFIED


def test_preconditions_present() -> None:
    assert not pre().present
    assert not pre(if_modified_since="bogus").present  # an invalid date is no condition
    assert pre(if_none_match="*").present


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("bytes=9-9", 10, (9, 10)),
        (" BYTES = 1-2 ", 10, (1, 3)),
        ("bytes=5-4", 10, None),  # invalid: ignored
        ("bytes=0-1,3-4", 10, None),  # several ranges: served whole
        ("items=0-1", 10, None),
        ("bytes=abc", 10, None),
        ("bytes=-", 10, None),
        ("bytes=" + "9" * 40 + "-", 10, None),
        ("bytes=-5", 0, None),
    ],
)
def test_select_range(value: str, size: int, expected: tuple[int, int] | None) -> None:
    result = select_range(value, size)
    assert (None if result is None else (result.start, result.end)) == expected


@pytest.mark.parametrize(("value", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_select_range_unsatisfiable(value: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        select_range(value, size)
    assert info.value.content_range == f"bytes */{size}"
    assert info.value.http_status == 416


def test_if_range() -> None:
    current = Validators("abc", 1000)
    assert select_range("bytes=0-1", 10, if_range='"abc"', current=current) is not None
    assert select_range("bytes=0-1", 10, if_range='"old"', current=current) is None
    assert select_range("bytes=0-1", 10, if_range='W/"abc"', current=current) is None
    assert select_range("bytes=0-1", 10, if_range=date(1000), current=current) is not None
    assert select_range("bytes=0-1", 10, if_range=date(999), current=current) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1000), st.text(alphabet="bytes=0123456789-, ", max_size=20))
def test_select_range_only_documented_outcomes(size: int, value: str) -> None:
    try:
        result = select_range(value, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert isinstance(result, ByteRange)
        assert 0 <= result.start < result.end <= size
        assert result.content_range == f"bytes {result.start}-{result.end - 1}/{size}"


# -- digests -----------------------------------------------------------------------------------


def sf(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def test_body_digest_accepts_matching_sha256_sha512_md5() -> None:
    data = b"hello world"
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    digest = BodyDigest.from_headers(f"{sf('sha-256', data)}, {sf('sha-512', data)}", md5)
    assert digest is not None
    digest.update(b"hello ")
    digest.update(b"world")
    digest.verify()


@pytest.mark.parametrize("header", ["content_digest", "content_md5"])
def test_body_digest_mismatch(header: str) -> None:
    wrong = b"other"
    digest = BodyDigest.from_headers(
        sf("sha-256", wrong) if header == "content_digest" else None,
        base64.b64encode(hashlib.md5(wrong).digest()).decode() if header == "content_md5" else None,
    )
    assert digest is not None
    digest.update(b"hello")
    with pytest.raises(BadRequest, match="does not match"):
        digest.verify()


def test_body_digest_none_when_nothing_to_check() -> None:
    assert BodyDigest.from_headers(None, None) is None
    assert BodyDigest.from_headers("unixsum=:AAAA:", None) is None  # unsupported: ignored


@pytest.mark.parametrize(
    "value",
    [
        "sha-256",  # a bare key is a boolean, not bytes
        "sha-256=abc",
        "sha-256=:not base64!:",
        "sha-256=:AAAA:",  # wrong length
        "SHA 256=:AAAA:",
        "sha-256=:" + base64.b64encode(bytes(32)).decode() + ":,",
    ],
)
def test_parse_content_digest_malformed(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_content_digest(value)


@pytest.mark.parametrize("value", ["", "!!", base64.b64encode(b"short").decode()])
def test_content_md5_malformed(value: str) -> None:
    with pytest.raises(BadRequest):
        BodyDigest.from_headers(None, value)


@pytest.mark.parametrize(
    ("want", "expected"),
    [
        (None, None),
        ("sha-256=1", "sha-256"),
        ("sha-512=3, sha-256=1", "sha-512"),
        ("sha-512=1, sha-256=1", "sha-256"),
        ("sha-256=0", None),
        ("md5=9, sha-512=2", "sha-512"),
        ("sha-256=x, sha-512=11", None),
    ],
)
def test_choose_repr_digest(want: str | None, expected: str | None) -> None:
    assert choose_repr_digest(want) == expected


# -- ids and Riak's sibling bodies -------------------------------------------------------------


def test_random_id_62_is_seeded_and_base62() -> None:
    first = httpsem.random_id_62(random.Random(3))
    assert first == httpsem.random_id_62(random.Random(3))
    assert len(first) == httpsem.RANDOM_ID_CHARS
    assert set(first) <= set(httpsem.BASE62_ALPHABET)


def test_base62() -> None:
    assert httpsem.base62(0) == "0"
    assert httpsem.base62(61) == "z"
    assert httpsem.base62(62) == "10"


def test_siblings_text() -> None:
    assert httpsem.siblings_text(["a", "b"]) == b"Siblings:\na\nb\n"


def test_multipart_layout_is_riaks() -> None:
    head = httpsem.multipart_part_head("BND", [("Content-Type", "text/plain"), ("Etag", "v1")])
    assert head == b"\r\n--BND\r\nContent-Type: text/plain\r\nEtag: v1\r\n\r\n"
    assert httpsem.multipart_tail("BND") == b"\r\n--BND--\r\n"
