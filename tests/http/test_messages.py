"""Request headers as handlers see them: names matched case-insensitively, repeated fields
joined in arrival order, every name kept as the client spelled it."""

from __future__ import annotations

from ringstore.http.messages import Headers

RAW = [
    (b"Host", b"t"),
    (b"Accept", b"text/plain"),
    (b"X-Riak-Meta-Color", b"blue"),
    (b"accept", b"*/*"),
    (b"x-riak-meta-Shape", b"r\xf6und"),
    (b"X-Empty", b""),
]


def test_lookups_ignore_case_and_join_repeated_fields_in_order() -> None:
    headers = Headers.from_h11(RAW)
    assert headers.get("ACCEPT") == "text/plain, */*"
    assert headers.get_all("Accept") == ["text/plain", "*/*"]
    assert headers.get("host") == "t"
    assert headers.get("x-empty") == ""
    assert headers.get("missing") is None
    assert headers.get_all("missing") == []


def test_membership_ignores_case_and_takes_only_names() -> None:
    headers = Headers.from_h11(RAW)
    assert "HOST" in headers and "x-empty" in headers
    assert "missing" not in headers
    assert b"host" not in headers


def test_items_and_prefixed_keep_the_client_spelling_and_order() -> None:
    headers = Headers.from_h11(RAW)
    assert headers.items()[3] == ("accept", "*/*")
    assert headers.prefixed("x-riak-meta-") == [
        ("X-Riak-Meta-Color", "blue"),
        ("x-riak-meta-Shape", "r\xf6und"),  # latin-1: every byte survives
    ]
    assert headers.prefixed("x-none-") == []
