"""The streaming multipart/form-data parser without sockets: forms as browsers and curl write
them, split at every byte; bounded buffering; every malformed form raises BadFormData."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringstore.errors import BadFormData
from ringstore.http.formdata import (
    MAX_PREAMBLE_BYTES,
    NEED_DATA,
    FormDataParser,
    FormEnd,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
)

BOUNDARY = b"----WebKitFormBoundaryx7H3kq9Zp2"


def form(
    parts: list[tuple[bytes, bytes]], boundary: bytes = BOUNDARY, *, preamble: bytes = b""
) -> bytes:
    """A multipart body from (header block, data) pairs, as RFC 2046 frames it."""
    body = preamble
    for headers, data in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def field(name: str, value: bytes) -> tuple[bytes, bytes]:
    return f'Content-Disposition: form-data; name="{name}"'.encode(), value


def file_part(name: str, filename: str, data: bytes, content_type: str = "text/plain"):
    headers = (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}"
    ).encode()
    return headers, data


def parse(body: bytes, pieces: list[int] | None = None, **limits) -> list[object]:
    """Every event of `body` fed in pieces of the given sizes (default: all at once);
    consecutive PartData joined, since how data is split is the parser's business."""
    parser = FormDataParser(BOUNDARY, **limits)
    events: list[object] = []
    offset = 0
    sizes = list(pieces or [len(body)])
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            size = sizes.pop(0) if sizes else len(body)
            parser.receive_data(body[offset : offset + size])
            offset += size
            continue
        if isinstance(event, PartData) and events and isinstance(events[-1], PartData):
            events[-1] = PartData(events[-1].data + event.data)
        else:
            events.append(event)
        if isinstance(event, FormEnd):
            return events


def test_a_browser_form_with_fields_and_a_file() -> None:
    data = b"line one\r\nline two\r\n--not-the-boundary\r\n"
    body = form([field("bucket", b"photos"), field("key", b""), file_part("file", "a b.txt", data)])
    assert parse(body) == [
        PartStart("bucket"),
        PartData(b"photos"),
        PartEnd(),
        PartStart("key"),
        PartEnd(),
        PartStart("file", "a b.txt", "text/plain"),
        PartData(data),
        PartEnd(),
        FormEnd(),
    ]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_the_same_events_whatever_the_pieces(step: int) -> None:
    data = bytes(range(256)) * 20 + b"\r\n--" + BOUNDARY[:-1]  # a near-delimiter inside
    body = form([field("bucket", b"b"), file_part("file", "x.bin", data)], preamble=b"ignored")
    assert parse(body, [step] * (len(body) // step + 1)) == parse(body)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=60),
)
def test_any_values_round_trip_split_anywhere(values: list[bytes], cuts: list[int]) -> None:
    # A value may hold CRLFs, dashes, even "--" + boundary without the leading CRLF.
    values = [v.replace(b"\r\n--" + BOUNDARY, b"") for v in values]
    body = form([file_part(f"f{i}", f"{i}.bin", v) for i, v in enumerate(values)])
    events = parse(body, cuts)
    got = []
    for event in events:
        if isinstance(event, PartStart):
            got.append(b"")
        elif isinstance(event, PartData):
            got[-1] += event.data
    assert got == values
    assert isinstance(events[-1], FormEnd)


def test_data_is_released_as_it_arrives() -> None:
    """A file part's bytes come out piece by piece: the parser holds back at most a
    delimiter's length, so memory stays bounded however large the file."""
    parser = FormDataParser(BOUNDARY)
    parser.receive_data(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\n')
    assert parser.next_event() == PartStart("f")
    held_back = len(BOUNDARY) + 3
    for _ in range(50):
        parser.receive_data(b"x" * 10_000)
        event = parser.next_event()
        assert isinstance(event, PartData)
        assert parser.next_event() is NEED_DATA
    assert len(parser._buffer) <= held_back


def test_preamble_epilogue_padding_and_a_first_boundary_without_crlf() -> None:
    body = (
        b"This is the preamble.\r\n--" + BOUNDARY + b" \t\r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\n1\r\n--' + BOUNDARY + b"--"
        b"\r\nepilogue, ignored"
    )
    assert parse(body) == [PartStart("a"), PartData(b"1"), PartEnd(), FormEnd()]


def test_html_escapes_and_utf8_in_names() -> None:
    headers = (
        'Content-Disposition: form-data; name="fi%22le"; filename="C:\\Users\\me\\ré;sumé%0A.pdf"'
    ).encode()
    events = parse(form([(headers, b"%")]))
    assert events[0] == PartStart('fi"le', "C:\\Users\\me\\ré;sumé\n.pdf", None)


def test_undecodable_header_bytes_survive() -> None:
    headers = b'Content-Disposition: form-data; name="f"; filename="\xff\xfe.bin"'
    start = parse(form([(headers, b"")]))[0]
    assert isinstance(start, PartStart)
    assert start.filename.encode("utf-8", "surrogateescape") == b"\xff\xfe.bin"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data ; charset=utf-8; BOUNDARY="a b,c"', b"a b,c"),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
    ],
)
def test_boundary_from_content_type(content_type: str, boundary: bytes) -> None:
    assert boundary_from_content_type(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "multipart/mixed; boundary=abc",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "x" * 71,
        'multipart/form-data; boundary="ends in space "',
        "multipart/form-data; boundary=a{b}",
        'multipart/form-data; boundary="a;b"',
        'multipart/form-data; boundary="unterminated',
    ],
)
def test_bad_content_types(content_type: str | None) -> None:
    with pytest.raises(BadFormData):
        boundary_from_content_type(content_type)


DISPOSITION = b'Content-Disposition: form-data; name="f"'
BAD_FORMS = {
    "empty body": b"",
    "no boundary at all": b"just some bytes",
    "only the opening boundary": b"--" + BOUNDARY + b"\r\n",
    "truncated headers": b"--" + BOUNDARY + b"\r\nContent-Disposition: form-da",
    "truncated data": b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\nhalf a fi",
    "no closing boundary": b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\nv\r\n",
    "garbage after a boundary": b"--" + BOUNDARY + b"X\r\n" + DISPOSITION + b"\r\n\r\n",
    "no disposition": form([(b"Content-Type: text/plain", b"v")]),
    "not form-data": form([(b'Content-Disposition: attachment; name="f"', b"v")]),
    "no field name": form([(b'Content-Disposition: form-data; filename="x"', b"v")]),
    "two dispositions": form([(DISPOSITION + b"\r\n" + DISPOSITION, b"v")]),
    "a name twice": form([(b'Content-Disposition: form-data; name="a"; name="b"', b"v")]),
    "malformed header line": form([(DISPOSITION + b"\r\nno colon here", b"v")]),
    "folded header": form([(DISPOSITION + b"\r\n  folded", b"v")]),
    "unterminated quote": form([(b'Content-Disposition: form-data; name="f', b"v")]),
    "parameter without value": form([(b"Content-Disposition: form-data; name", b"v")]),
    "stray quote": form([(b'Content-Disposition: form-data; name=a"b', b"v")]),
}


@pytest.mark.parametrize("body", BAD_FORMS.values(), ids=BAD_FORMS.keys())
def test_malformed_forms_raise_bad_form_data(body: bytes) -> None:
    with pytest.raises(BadFormData):
        parse(body)


def test_an_error_sticks() -> None:
    parser = FormDataParser(BOUNDARY)
    parser.receive_data(b"--" + BOUNDARY + b"X")
    with pytest.raises(BadFormData) as first:
        parser.next_event()
    with pytest.raises(BadFormData) as again:
        parser.next_event()
    assert again.value is first.value


def test_limits() -> None:
    many = form([field(f"f{i}", b"") for i in range(5)])
    assert len(parse(many, max_parts=5)) == 11
    with pytest.raises(BadFormData, match="more than 4 parts"):
        parse(many, max_parts=4)
    big_headers = form([(DISPOSITION + b"\r\nX-Pad: " + b"p" * 300, b"")])
    parse(big_headers, max_header_bytes=400)
    with pytest.raises(BadFormData, match="headers exceed 200 bytes"):
        parse(big_headers, max_header_bytes=200)
    with pytest.raises(BadFormData, match="headers exceed 200 bytes"):
        parse(big_headers, [10] * 100, max_header_bytes=200)  # found before the end arrives
    with pytest.raises(BadFormData, match="no multipart boundary"):
        parse(b"x" * (MAX_PREAMBLE_BYTES + 1000) + form([field("f", b"")]), [4096] * 100)


def test_misuse_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        FormDataParser(b"bad{boundary}")
    parser = FormDataParser(BOUNDARY)
    parser.receive_data(b"")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"more")
