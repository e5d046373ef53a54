"""Request routing: split and decode the URL the way Riak does, pick the handler or answer
404 / 405 / 400.

Riak (mochiweb_util:unquote via riak_kv_wm_utils:maybe_decode_uri) percent-decodes bucket and
key path segments to raw bytes and turns `+` into a space. Segments are split on `/` before
decoding, so `%2F` is a slash inside a key. `/types/default/...` is the same as `/...`: the
only bucket type ringstore has is Riak's default one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ringstore.http.messages import HttpError, Request, Response

MAX_QUERY_FIELDS = 64  # Riak's parameters number about a dozen; more is garbage or an attack
DEFAULT_BUCKET_TYPE = b"default"
UNROUTED = "unrouted"  # the operation label of a request that matched no route
_HEX = frozenset(b"0123456789abcdefABCDEF")
# mochiweb_util:quote_plus leaves these as they are; space becomes "+", the rest %XX
_QUOTE_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")


def riak_unquote(segment: str) -> bytes:
    """Percent-decode a path segment to raw bytes with `+` as space; BadRequest-style 400 on a
    broken escape."""
    raw = segment.encode("latin-1")
    if b"%" not in raw and b"+" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # %
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise HttpError(400, f"malformed percent-encoding in URL segment {segment!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if byte == 0x2B else byte)
        i += 1
    return bytes(out)


def riak_quote(name: bytes) -> str:
    """Encode a bucket or key for a URL (Location, Link) so `riak_unquote` gives it back."""
    if _QUOTE_SAFE.issuperset(name):
        return name.decode("ascii")  # the usual name: no byte-by-byte pass
    return "".join(
        chr(byte) if byte in _QUOTE_SAFE else "+" if byte == 0x20 else f"%{byte:02X}"
        for byte in name
    )


def parse_query(raw: str) -> dict[str, str]:
    """Query parameters, the first occurrence of a name winning (as webmachine's
    get_qs_value); values are decoded as UTF-8 with `+` as space."""
    if not raw:
        return {}  # most requests: skips the parser's setup
    try:
        pairs = urllib.parse.parse_qsl(
            raw, keep_blank_values=True, errors="replace", max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError:
        raise HttpError(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)
    return query


@dataclass(frozen=True, slots=True)
class PathParams:
    """What the URL named: raw bucket and key bytes, and the path prefix the client used."""

    bucket: bytes | None = None
    key: bytes | None = None
    prefix: str = ""  # "" or "/types/default", kept for Location and Link headers

    def object_path(self, bucket: bytes, key: bytes) -> str:
        return f"{self.prefix}/buckets/{riak_quote(bucket)}/keys/{riak_quote(key)}"

    def bucket_path(self, bucket: bytes) -> str:
        return f"{self.prefix}/buckets/{riak_quote(bucket)}"


Handler = Callable[[Request, PathParams], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """A path pattern (literal segments, `{bucket}`, `{key}`) and its handler per method.

    HEAD is served by the GET handler where no HEAD handler is given (the server drops the
    body).
    """

    pattern: tuple[str, ...]
    methods: Mapping[str, Handler]

    @property
    def allowed(self) -> list[str]:
        names = set(self.methods)
        if "GET" in names:
            names.add("HEAD")
        return sorted(names)


def handler_operation(handler: Handler, method: str) -> str:
    """The metrics label of a request `handler` serves (see `Router.operation`)."""
    name = getattr(handler, "__name__", "other")
    return "head" if method == "HEAD" and name == "get" else name


def _split_path(target_path: str) -> list[str]:
    if target_path.startswith(("http://", "https://")):  # absolute-form request-target
        target_path = "/" + target_path.split("://", 1)[1].partition("/")[2]
    if not target_path.startswith("/"):
        raise HttpError(404, "Resource not found")
    segments = target_path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash names the same resource, as in webmachine
    return segments


class Router:
    """Maps (method, path) to a handler and the decoded path parameters."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = list(routes)

    def resolve(self, method: str, path: str) -> tuple[Handler, PathParams]:
        """The handler for a request; HttpError 404, 405 (with Allow) or 400 otherwise."""
        segments = _split_path(path)
        prefix = ""
        if len(segments) >= 3 and segments[0] == "types" and segments[2] == "buckets":
            bucket_type = riak_unquote(segments[1])
            if bucket_type != DEFAULT_BUCKET_TYPE:
                shown = bucket_type.decode("utf-8", "replace")
                raise HttpError(404, f"Unknown bucket type: {shown}")
            prefix = f"/types/{segments[1]}"
            segments = segments[2:]
        for route in self._routes:
            if len(route.pattern) != len(segments):
                continue
            captured: dict[str, str] = {}
            for expected, actual in zip(route.pattern, segments, strict=True):
                if expected.startswith("{"):
                    captured[expected[1:-1]] = actual
                elif expected != actual:
                    break
            else:
                return self._dispatch(route, method, captured, prefix)
        raise HttpError(404, "Resource not found")

    def operation(self, method: str, path: str) -> str:
        """The operation a request asks for, as metrics label it: its handler's name (`get`,
        `put`, `list_keys`, ...), `head` for a HEAD served by a GET handler, `unrouted` for a
        request no route takes (a 404, 405 or bad URL)."""
        try:
            handler, _ = self.resolve(method, path)
        except HttpError:
            return UNROUTED
        return handler_operation(handler, method)

    @staticmethod
    def _dispatch(
        route: Route, method: str, captured: dict[str, str], prefix: str
    ) -> tuple[Handler, PathParams]:
        handler = route.methods.get(method)
        if handler is None and method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            raise HttpError(
                405, f"Method {method} not allowed", headers=[("Allow", ", ".join(route.allowed))]
            )
        decoded: dict[str, bytes] = {}
        for name, raw in captured.items():
            value = riak_unquote(raw)
            if not value:
                raise HttpError(400, f"empty {name} name in URL")
            decoded[name] = value
        return handler, PathParams(decoded.get("bucket"), decoded.get("key"), prefix)
