"""HTTP semantics as pure functions: dates, media types, entity tags, preconditions, byte ranges,
digest fields and the multipart/mixed layout Riak uses for siblings.

Everything here takes header values (str) and plain numbers and returns decisions; nothing
reads a clock, a socket or the global random. RFC 9110 is the reference for preconditions
(section 13.2.2 fixes their order) and ranges (section 14); RFC 9530 for digest fields;
RFC 8941 for the structured-field syntax those use.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from ringstore.errors import BadRequest, RemoteError

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_ID_CHARS = 22  # 62**22 > 2**130: keys and boundaries that never collide in practice
MAX_RANGE_DIGITS = 19  # positions up to 10**19 - 1 bytes, beyond any object; longer is garbage
MAX_ACCEPT_ELEMENTS = 64  # an Accept header is a handful of types; more is an attack
# RFC 9530 hash algorithms we compute; the order is our preference when a client weighs
# them equally (SHA-256 is the cheaper of the two).
DIGEST_ALGORITHMS: dict[str, str] = {"sha-256": "sha256", "sha-512": "sha512"}
MD5_BYTES = 16

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")


# ---------------------------------------------------------------------------------------------
# HTTP-date (RFC 9110 section 5.6.7)


def format_http_date(seconds: int | float) -> str:
    """IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of a POSIX time in seconds."""
    return _format_http_date(int(seconds))


@functools.lru_cache(maxsize=1024)
def _format_http_date(seconds: int) -> str:
    # Memoised: every response carries a Date and most a Last-Modified, and objects written
    # in the same second share it; formatting showed in a small GET's profile.
    return email.utils.formatdate(float(seconds), usegmt=True)


def format_http_date_us(microseconds: int) -> str:
    """IMF-fixdate of a POSIX time in microseconds (how object timestamps are kept)."""
    return format_http_date(microseconds // 1_000_000)


def parse_http_date(value: str) -> int | None:
    """POSIX seconds of an HTTP-date in any of the three RFC 9110 forms, or None if invalid.

    A date without a zone (asctime form) is UTC, as the RFC says; an explicit numeric
    offset is honoured.
    """
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return int(parsed.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Header list syntax


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header on commas outside quoted strings and `<...>`.

    Empty elements are dropped (RFC 9110 section 5.6.1). An unterminated quoted string or
    angle bracket raises BadRequest.
    """
    parts: list[str] = []
    current: list[str] = []
    in_quotes = in_angle = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<" and not in_angle:
            in_angle = True
        elif char == ">" and in_angle:
            in_angle = False
        elif char == "," and not in_angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if in_quotes or in_angle or escaped:
        raise BadRequest(f"unterminated quoted string or <...> in header value {value[:80]!r}")
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# ---------------------------------------------------------------------------------------------
# Media types and Accept (RFC 9110 sections 8.3 and 12.5.1)


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed `type/subtype; name=value` with lower-cased type, subtype and parameter names."""

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def parse_media_type(value: str) -> MediaType:
    """Parse a Content-Type or Accept element; BadRequest unless it is `token/token[; p=v]*`."""
    head, *raw_params = _split_params(value)
    type_, slash, subtype = head.partition("/")
    type_, subtype = type_.strip(), subtype.strip()
    if not slash or not _TOKEN.fullmatch(type_) or not _TOKEN.fullmatch(subtype):
        raise BadRequest(f'"{head.strip()}" is not a valid media type')
    params = []
    for raw in raw_params:
        name, eq, param_value = raw.partition("=")
        name = name.strip().lower()
        if not eq or not _TOKEN.fullmatch(name):
            raise BadRequest(f"malformed media type parameter {raw.strip()!r}")
        params.append((name, _unquote(param_value.strip())))
    return MediaType(type_.lower(), subtype.lower(), tuple(params))


def _split_params(value: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif in_quotes and char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ";" and not in_quotes:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()] or [""]


def _parse_accept(accept: str) -> list[tuple[MediaType, float]]:
    ranges: list[tuple[MediaType, float]] = []
    try:
        elements = split_header_list(accept)
    except BadRequest:
        return ranges
    for element in elements[:MAX_ACCEPT_ELEMENTS]:
        try:
            media = parse_media_type(element)
        except BadRequest:
            continue  # an element we cannot read matches nothing
        weight = 1.0
        raw_q = media.param("q")
        if raw_q is not None:
            try:
                weight = float(raw_q)
            except ValueError:
                continue
            if not 0.0 <= weight <= 1.0:
                continue
        ranges.append((media, weight))
    return ranges


def choose_media_type(accept: str | None, provided: Sequence[str]) -> str | None:
    """The provided media type the client prefers, or None (406) if it accepts none of them.

    Without an Accept header the first provided type wins (webmachine does the same). Each
    provided type takes the weight of the most specific matching range (`a/b` over `a/*`
    over `*/*`); ties go to the earlier provided type. Provided types are `type/subtype`.
    """
    if not provided:
        return None
    if accept is None or not accept.strip():
        return provided[0]
    ranges = _parse_accept(accept)
    best: tuple[float, str] | None = None
    for candidate in provided:
        cand_type, _, cand_subtype = candidate.lower().partition("/")
        weight: float | None = None
        specificity = -1
        for media, q in ranges:
            if media.type == "*" and media.subtype == "*":
                level = 0
            elif media.type == cand_type and media.subtype == "*":
                level = 1
            elif media.type == cand_type and media.subtype == cand_subtype:
                level = 2
            else:
                continue
            if level > specificity:
                specificity, weight = level, q
        if weight is not None and weight > 0 and (best is None or weight > best[0]):
            best = (weight, candidate)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------
# Entity tags and preconditions (RFC 9110 sections 8.8.3 and 13)


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str
    weak: bool = False


@dataclass(frozen=True, slots=True)
class EtagList:
    """The value of If-Match / If-None-Match / If-Range: `*` (`any_tag`) or entity tags."""

    tags: tuple[EntityTag, ...] = ()
    any_tag: bool = False

    def strong_match(self, current: str) -> bool:
        return any(not tag.weak and tag.opaque == current for tag in self.tags)

    def weak_match(self, current: str) -> bool:
        return any(tag.opaque == current for tag in self.tags)


def quote_etag(opaque: str) -> str:
    """The ETag header value of a strong tag."""
    return f'"{opaque}"'


def parse_etag_list(value: str, header: str) -> EtagList:
    """Parse `*` or a list of entity tags; BadRequest names `header` if malformed.

    Unquoted tags are accepted as their text: some Riak clients send the bare vtag.
    """
    stripped = value.strip()
    if stripped == "*":
        return EtagList(any_tag=True)
    tags = []
    for element in split_header_list(stripped):
        weak = element.startswith("W/")
        body = element[2:] if weak else element
        if body.startswith('"'):
            if len(body) < 2 or not body.endswith('"') or '"' in body[1:-1]:
                raise BadRequest(f"malformed entity tag {element!r} in {header}")
            opaque = body[1:-1]
        elif _TOKEN.fullmatch(body):
            opaque = body
        else:
            raise BadRequest(f"malformed entity tag {element!r} in {header}")
        tags.append(EntityTag(opaque, weak))
    if not tags:
        raise BadRequest(f"empty {header} header")
    return EtagList(tuple(tags))


@dataclass(frozen=True, slots=True)
class Validators:
    """What a current representation offers to compare against: its strong ETag (opaque
    text, unquoted) and its Last-Modified time in whole seconds."""

    etag: str
    last_modified_s: int | None


@dataclass(frozen=True, slots=True)
class Preconditions:
    """The conditional headers of one request, parsed; None where a header is absent.

    Unparseable dates are dropped at parse time, as RFC 9110 says to ignore them.
    """

    if_match: EtagList | None = None
    if_none_match: EtagList | None = None
    if_modified_since_s: int | None = None
    if_unmodified_since_s: int | None = None

    @classmethod
    def from_headers(
        cls,
        if_match: str | None,
        if_none_match: str | None,
        if_modified_since: str | None,
        if_unmodified_since: str | None,
    ) -> Preconditions:
        return cls(
            if_match=None if if_match is None else parse_etag_list(if_match, "If-Match"),
            if_none_match=(
                None if if_none_match is None else parse_etag_list(if_none_match, "If-None-Match")
            ),
            if_modified_since_s=(
                None if if_modified_since is None else parse_http_date(if_modified_since)
            ),
            if_unmodified_since_s=(
                None if if_unmodified_since is None else parse_http_date(if_unmodified_since)
            ),
        )

    @property
    def present(self) -> bool:
        return (
            self.if_match is not None
            or self.if_none_match is not None
            or self.if_modified_since_s is not None
            or self.if_unmodified_since_s is not None
        )


class Decision(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"  # 304
    PRECONDITION_FAILED = "precondition_failed"  # 412


def evaluate_preconditions(
    method: str, pre: Preconditions, current: Validators | None, now_s: int | None = None
) -> Decision:
    """RFC 9110 section 13.2.2, in its order. `current` is None when nothing is stored.

    The caller applies this only where the response would otherwise be 2xx (so not to a GET
    of a missing key). If-Modified-Since dates later than `now_s` are ignored (13.1.3).
    """
    safe = method in ("GET", "HEAD")
    if pre.if_match is not None:
        if current is None:
            return Decision.PRECONDITION_FAILED
        if not pre.if_match.any_tag and not pre.if_match.strong_match(current.etag):
            return Decision.PRECONDITION_FAILED
    elif (
        pre.if_unmodified_since_s is not None
        and current is not None
        and current.last_modified_s is not None
        and current.last_modified_s > pre.if_unmodified_since_s
    ):
        return Decision.PRECONDITION_FAILED
    if pre.if_none_match is not None:
        if current is not None and (
            pre.if_none_match.any_tag or pre.if_none_match.weak_match(current.etag)
        ):
            return Decision.NOT_MODIFIED if safe else Decision.PRECONDITION_FAILED
    elif (
        safe
        and pre.if_modified_since_s is not None
        and current is not None
        and current.last_modified_s is not None
        and (now_s is None or pre.if_modified_since_s <= now_s)
        and current.last_modified_s <= pre.if_modified_since_s
    ):
        return Decision.NOT_MODIFIED
    return Decision.PROCEED


# ---------------------------------------------------------------------------------------------
# Byte ranges (RFC 9110 section 14)


class RangeNotSatisfiable(RemoteError):
    """A valid single byte range that lies beyond the representation (416)."""

    http_status = 416

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"requested range not satisfiable (length {size})")

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, end) of a representation of `size` bytes."""

    start: int
    end: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.size:
            raise ValueError(f"bad byte range {self.start}-{self.end} of {self.size}")

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def _if_range_holds(if_range: str, current: Validators) -> bool:
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        try:
            tags = parse_etag_list(value, "If-Range")
        except BadRequest:
            return False
        return len(tags.tags) == 1 and tags.strong_match(current.etag)
    date = parse_http_date(value)
    return date is not None and date == current.last_modified_s


def select_range(
    range_value: str | None,
    size: int,
    *,
    if_range: str | None = None,
    current: Validators | None = None,
) -> ByteRange | None:
    """The one byte range to send, or None to send the whole representation (200).

    None also for what RFC 9110 lets a server ignore: other units, bad syntax, several
    ranges (we serve single ranges only), ranges of an empty representation, and an
    If-Range that does not match `current`. A well-formed range that starts at or past the
    end raises RangeNotSatisfiable (416).
    """
    if range_value is None:
        return None
    if if_range is not None and (current is None or not _if_range_holds(if_range, current)):
        return None
    unit, eq, spec_list = range_value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in spec_list.split(",") if spec.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first_text, last_text = match.groups()
    if len(first_text) > MAX_RANGE_DIGITS or len(last_text) > MAX_RANGE_DIGITS:
        return None
    if first_text:
        first = int(first_text)
        last = int(last_text) if last_text else None
        if last is not None and last < first:
            return None
        if first >= size:
            raise RangeNotSatisfiable(size)
        end = size if last is None else min(last + 1, size)
        return ByteRange(first, end, size)
    if not last_text:
        return None
    suffix = int(last_text)
    if suffix == 0:
        raise RangeNotSatisfiable(size)
    if size == 0:
        return None
    return ByteRange(max(size - suffix, 0), size, size)


# ---------------------------------------------------------------------------------------------
# Digest fields (RFC 9530) and Content-MD5 (RFC 1864)


def _parse_sf_dictionary(value: str, header: str) -> list[tuple[str, str]]:
    """Members of an RFC 8941 dictionary as (key, raw item text without parameters)."""
    members = []
    for raw in value.split(","):
        member = raw.strip()
        if not member:
            raise BadRequest(f"empty member in {header}")
        key, eq, item = member.partition("=")
        key = key.strip()
        if not _SF_KEY.fullmatch(key):
            raise BadRequest(f"malformed {header} key {key[:40]!r}")
        item = item.strip() if eq else "?1"
        members.append((key, item.split(";", 1)[0].strip()))
    return members


def _decode_sf_bytes(item: str, header: str) -> bytes:
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise BadRequest(f"{header} values must be byte sequences (:base64:)")
    try:
        return base64.b64decode(item[1:-1], validate=True)
    except binascii.Error:
        raise BadRequest(f"{header} holds invalid base64") from None


def parse_content_digest(value: str) -> dict[str, bytes]:
    """The digests in a Content-Digest (or Repr-Digest) header for algorithms we compute.

    Algorithms we do not compute are ignored, as RFC 9530 allows; a malformed field, or a
    digest of the wrong length, raises BadRequest.
    """
    found: dict[str, bytes] = {}
    for key, item in _parse_sf_dictionary(value, "Content-Digest"):
        digest = _decode_sf_bytes(item, "Content-Digest")
        if key in DIGEST_ALGORITHMS:
            expected = hashlib.new(DIGEST_ALGORITHMS[key]).digest_size
            if len(digest) != expected:
                raise BadRequest(f"Content-Digest {key} must be {expected} bytes")
            found[key] = digest
    return found


def parse_content_md5(value: str) -> bytes:
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise BadRequest("Content-MD5 holds invalid base64") from None
    if len(digest) != MD5_BYTES:
        raise BadRequest("Content-MD5 must be the base64 of 16 bytes")
    return digest


def choose_repr_digest(want: str | None) -> str | None:
    """The algorithm to answer a Want-Repr-Digest with, or None.

    The header is a preference: malformed members, unknown algorithms and weight 0 are
    ignored rather than refused. Highest weight wins; ties go to our preference order.
    """
    if want is None:
        return None
    best: tuple[int, int, str] | None = None
    for raw in want.split(","):
        key, eq, weight_text = raw.strip().partition("=")
        key = key.strip()
        if key not in DIGEST_ALGORITHMS:
            continue
        try:
            weight = int(weight_text.split(";", 1)[0].strip()) if eq else 1
        except ValueError:
            continue
        if not 1 <= weight <= 10:
            continue
        rank = -list(DIGEST_ALGORITHMS).index(key)
        if best is None or (weight, rank) > best[:2]:
            best = (weight, rank, key)
    return None if best is None else best[2]


def format_digest_field(algorithm: str, digest: bytes) -> str:
    """A one-member Content-Digest / Repr-Digest value: `sha-256=:<base64>:`."""
    return f"{algorithm}=:{base64.b64encode(digest).decode('ascii')}:"


def digest_hasher(algorithm: str) -> hashlib._Hash:
    """A fresh hasher for an RFC 9530 algorithm name (a key of DIGEST_ALGORITHMS)."""
    return hashlib.new(DIGEST_ALGORITHMS[algorithm])


class BodyDigest:
    """Checks a request body against its Content-Digest and Content-MD5 while it streams.

    `update` every piece as it arrives; `verify` after the last raises BadRequest on any
    mismatch. Memory is the hashers' state only.
    """

    __slots__ = ("_expected", "_hashers")

    def __init__(self, expected: dict[str, bytes]) -> None:
        self._expected = dict(expected)
        self._hashers = {
            name: (hashlib.md5() if name == "md5" else digest_hasher(name)) for name in expected
        }

    @classmethod
    def from_headers(cls, content_digest: str | None, content_md5: str | None) -> BodyDigest | None:
        """None when the request carries no digest we can check; BadRequest if malformed."""
        expected: dict[str, bytes] = {}
        if content_digest is not None:
            expected.update(parse_content_digest(content_digest))
        if content_md5 is not None:
            expected["md5"] = parse_content_md5(content_md5)
        return cls(expected) if expected else None

    def update(self, data: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def verify(self) -> None:
        for name, hasher in self._hashers.items():
            if hasher.digest() != self._expected[name]:
                header = "Content-MD5" if name == "md5" else f"Content-Digest ({name})"
                raise BadRequest(f"{header} does not match the request body")


# ---------------------------------------------------------------------------------------------
# Identifiers and Riak's sibling bodies


def random_id_62(rng: random.Random, length: int = RANDOM_ID_CHARS) -> str:
    """A random base62 identifier (Riak's unique_id_62 alphabet) for keys and boundaries."""
    return "".join(rng.choice(BASE62_ALPHABET) for _ in range(length))


def base62(number: int) -> str:
    if number < 0:
        raise ValueError("base62 of a negative number")
    digits = []
    while True:
        number, digit = divmod(number, 62)
        digits.append(BASE62_ALPHABET[digit])
        if number == 0:
            return "".join(reversed(digits))


def siblings_text(vtags: Sequence[str]) -> bytes:
    """Riak's text/plain 300 body: `Siblings:` then one vtag per line."""
    return ("Siblings:\n" + "".join(f"{vtag}\n" for vtag in vtags)).encode("latin-1")


def multipart_part_head(boundary: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """Everything of one sibling part before its value, in Riak's layout.

    CRLF, `--boundary`, CRLF, the part's headers, a blank line. The leading CRLF is Riak's
    and clients expect it, even before the first part.
    """
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"\r\n--{boundary}\r\n{lines}\r\n".encode("latin-1")


def multipart_tail(boundary: str) -> bytes:
    """The closing delimiter after the last part: CRLF, `--boundary--`, CRLF."""
    return f"\r\n--{boundary}--\r\n".encode("latin-1")
