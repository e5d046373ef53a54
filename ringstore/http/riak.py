"""Riak's HTTP API on a KV handle: the route table, discovery, ping, stats, bucket and key
listings and bucket properties (the object resource itself lives in http/objects.py).

Bucket and key names are arbitrary bytes; JSON carries them as strings, decoded as UTF-8 with
undecodable bytes as lone surrogate escapes (`\\udcXX`), so a Python client that decodes with
"surrogateescape" gets the exact bytes back and every valid UTF-8 name reads naturally.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

import trio

from ringstore.core.httpsem import choose_media_type, parse_media_type
from ringstore.core.props import parse_timeout
from ringstore.errors import BadRequest, QuorumError
from ringstore.http.messages import HttpError, Request, Response, StreamBody, aclose_iterator
from ringstore.http.objects import ObjectResource
from ringstore.http.router import (
    UNROUTED,
    PathParams,
    Route,
    Router,
    handler_operation,
    parse_query,
)

if TYPE_CHECKING:
    from ringstore.coord.api import KV

MAX_PROPS_BODY_BYTES = 64 * 1024  # a props document is a few hundred bytes
LIST_BATCH_BYTES = 64 * 1024  # keys=true output is sent in pieces of about this size
JSON = "application/json"

# Riak's resource names for the paths it serves (riak_core_wm_urlmap), in Riak's order.
RESOURCES: tuple[tuple[str, str], ...] = (
    ("riak_kv_wm_buckets", "/buckets"),
    ("riak_kv_wm_keylist", "/buckets"),
    ("riak_kv_wm_object", "/buckets"),
    ("riak_kv_wm_ping", "/ping"),
    ("riak_kv_wm_props", "/buckets"),
    ("riak_kv_wm_stats", "/stats"),
)


def json_name(name: bytes) -> str:
    """A bucket or key as a JSON string (see the module docstring)."""
    return name.decode("utf-8", "surrogateescape")


def _json_bytes(value: object, *, indent: int | None = None) -> bytes:
    # Compact, as Riak's mochijson2 writes it, unless pretty-printing was asked for.
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(
        value, ensure_ascii=True, indent=indent, separators=separators, default=str
    ).encode("ascii")


def _negotiate(request: Request, provided: list[str]) -> str:
    chosen = choose_media_type(request.headers.get("accept"), provided)
    if chosen is None:
        raise HttpError(406, f"Not Acceptable: this resource provides {', '.join(provided)}")
    return chosen


def _list_deadline(query: dict[str, str]) -> float:
    """Listing timeout (Riak validates `timeout` on list requests as on object requests)."""
    if "timeout" not in query:
        return trio.current_time() + 60.0
    return trio.current_time() + parse_timeout(query["timeout"]) / 1000


async def _next_batch(batches: AsyncIterator[list[bytes]], deadline: float) -> list[bytes] | None:
    remaining = deadline - trio.current_time()
    try:
        with trio.fail_after(max(remaining, 0)):
            return await anext(batches, None)
    except trio.TooSlowError:
        raise QuorumError("list", 0, 1, "request timed out") from None


def _list_body(
    field: str, batches: AsyncIterator[list[bytes]], *, stream: bool, deadline: float
) -> StreamBody:
    """A listing response body for `?keys=` / `?buckets=` `true` or `stream`.

    `true` streams one JSON object in pieces (bounded memory however long the list);
    `stream` sends Riak's series of `{"<field>":[...]}` objects ending with an empty one.
    The server fetches the first piece before the status line, so a listing that fails at
    once gets an error status; a later failure ends a `stream` with Riak's `{"error":...}`
    and cuts a `true` body short (the client sees the connection end mid-body).
    """

    async def whole() -> AsyncIterator[bytes]:
        try:
            first = await _next_batch(batches, deadline)
            piece = bytearray(b'{"' + field.encode() + b'":[')
            separator = b""
            batch = first
            while batch is not None:
                for name in batch:
                    piece += separator + _json_bytes(json_name(name))
                    separator = b","
                    if len(piece) >= LIST_BATCH_BYTES:
                        yield bytes(piece)
                        piece.clear()
                batch = await _next_batch(batches, deadline)
            piece += b"]}"
            yield bytes(piece)
        finally:
            await aclose_iterator(batches)

    async def series() -> AsyncIterator[bytes]:
        sent_any = False
        try:
            while True:
                try:
                    batch = await _next_batch(batches, deadline)
                except Exception as exc:
                    if not sent_any:
                        raise
                    reason = "timeout" if isinstance(exc, QuorumError) else str(exc)
                    yield _json_bytes({"error": reason})
                    return
                if batch is None:
                    yield _json_bytes({field: []})
                    return
                if batch:
                    sent_any = True
                    yield _json_bytes({field: [json_name(name) for name in batch]})
        finally:
            await aclose_iterator(batches)

    return StreamBody(None, series if stream else whole)


class RiakApp:
    """The application the HTTP server runs: routes requests to Riak's resources."""

    def __init__(
        self,
        kv: KV,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        extra_routes: tuple[Route, ...] = (),
        extra_stats: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.kv = kv
        self.extra_stats = extra_stats  # more /stats entries, e.g. the HTTP server's counters
        self.objects = ObjectResource(kv, rng=rng or random.SystemRandom(), wall_clock=wall_clock)
        objects = self.objects
        self.router = Router(
            [
                Route((), {"GET": self.discovery}),
                Route(("ping",), {"GET": self.ping}),
                Route(("stats",), {"GET": self.stats}),
                Route(("buckets",), {"GET": self.list_buckets}),
                Route(
                    ("buckets", "{bucket}", "props"),
                    {"GET": self.get_props, "PUT": self.set_props, "DELETE": self.reset_props},
                ),
                Route(
                    ("buckets", "{bucket}", "keys"),
                    {"GET": self.list_keys, "POST": objects.put},
                ),
                Route(
                    ("buckets", "{bucket}", "keys", "{key}"),
                    {
                        "GET": objects.get,
                        "PUT": objects.put,
                        "POST": objects.put,
                        "DELETE": objects.delete,
                    },
                ),
                *extra_routes,
            ]
        )

    async def handle(self, request: Request) -> Response:
        try:
            handler, params = self.router.resolve(request.method, request.path)
        except HttpError:
            request.operation = UNROUTED
            raise
        request.operation = handler_operation(handler, request.method)
        return await handler(request, params)

    # -- service resources -------------------------------------------------------------------

    async def discovery(self, request: Request, params: PathParams) -> Response:
        """GET /: Riak's resource list, HTML by default, JSON when asked, plus a Link header."""
        chosen = _negotiate(request, ["text/html", JSON])
        link = ", ".join(f'<{path}>; rel="{name}"' for name, path in RESOURCES)
        if chosen == JSON:
            body = _json_bytes(dict(RESOURCES))
        else:
            items = "".join(f'<li><a href="{path}">{name}</a></li>' for name, path in RESOURCES)
            body = f"<html><body><ul>{items}</ul></body></html>".encode("ascii")
        return Response(200, [("Content-Type", chosen), ("Link", link)], body)

    async def ping(self, request: Request, params: PathParams) -> Response:
        _negotiate(request, ["text/html"])
        return Response(200, [("Content-Type", "text/html")], b"OK")

    async def stats(self, request: Request, params: PathParams) -> Response:
        """GET /stats: the node's statistics as JSON, or pretty-printed when text is asked."""
        chosen = _negotiate(request, [JSON, "text/plain"])
        info = self.kv.info()
        stats: dict[str, object] = {"nodename": info.name, "riak_kv_version": info.version}
        stats.update(info.stats)
        if self.extra_stats is not None:
            stats.update(self.extra_stats())
        body = _json_bytes(stats, indent=4 if chosen == "text/plain" else None)
        return Response(200, [("Content-Type", chosen)], body)

    # -- listings ----------------------------------------------------------------------------

    async def list_buckets(self, request: Request, params: PathParams) -> Response:
        _negotiate(request, [JSON])
        query = parse_query(request.query)
        mode = query.get("buckets")
        headers = [("Content-Type", JSON)]
        if mode not in ("true", "stream"):
            # Riak lists nothing without buckets=true|stream (its code means {"buckets":[]})
            return Response(200, headers, b'{"buckets":[]}')
        deadline = _list_deadline(query)
        body = _list_body(
            "buckets", self.kv.list_buckets(), stream=mode == "stream", deadline=deadline
        )
        return Response(200, headers, body)

    async def list_keys(self, request: Request, params: PathParams) -> Response:
        assert params.bucket is not None
        _negotiate(request, [JSON])
        query = parse_query(request.query)
        mode = query.get("keys")
        headers = [("Content-Type", JSON)]
        if mode not in ("true", "stream"):
            return Response(200, headers, b"{}")  # riak_kv_wm_keylist, API version 2
        deadline = _list_deadline(query)
        body = _list_body(
            "keys", self.kv.list_keys(params.bucket), stream=mode == "stream", deadline=deadline
        )
        return Response(200, headers, body)

    # -- bucket properties -------------------------------------------------------------------

    async def get_props(self, request: Request, params: PathParams) -> Response:
        assert params.bucket is not None
        _negotiate(request, [JSON])
        props = await self.kv.get_props(params.bucket)
        shown = {"name": json_name(params.bucket), **props.to_json()}
        return Response(200, [("Content-Type", JSON)], _json_bytes({"props": shown}))

    async def set_props(self, request: Request, params: PathParams) -> Response:
        """PUT /buckets/B/props with `{"props": {...}}`: a partial update; 204."""
        assert params.bucket is not None
        content_type = request.headers.get("content-type")
        try:
            media = None if content_type is None else parse_media_type(content_type)
        except BadRequest:
            media = None
        if media is None or media.essence != JSON:
            raise HttpError(415, "Bucket properties must be sent as application/json")
        raw = await request.body.read_all(MAX_PROPS_BODY_BYTES)
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"Invalid JSON in bucket properties: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("props"), dict):
            raise HttpError(400, 'Bucket properties must be a JSON object {"props": {...}}')
        await self.kv.set_props(params.bucket, document["props"])
        return Response(204)

    async def reset_props(self, request: Request, params: PathParams) -> Response:
        assert params.bucket is not None
        await self.kv.reset_props(params.bucket)
        return Response(204)
