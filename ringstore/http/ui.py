"""The web page every node serves at /ui: its static files, the status document it polls
(/ui/status.json) and the browser's file upload (a multipart/form-data POST to /ui/upload).

The page itself is plain HTML, CSS and JavaScript in `ringstore/http/ui/` (package data; no
build step). It browses buckets and keys through the Riak API like any other client; only the
cluster picture and the upload need these routes.

An upload streams: the form's `bucket` and `key` fields come first (browsers send fields in
page order, and the page puts the file last), then the file part goes straight into `KV.put`
as it arrives. The form must end properly right after the file; if anything about it is
wrong, the put fails before the write is acknowledged, so a bad form stores nothing.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING

import trio

from ringstore.coord.api import WriteMeta
from ringstore.core.httpsem import choose_media_type, parse_media_type
from ringstore.errors import BadFormData, BadRequest
from ringstore.http.formdata import (
    NEED_DATA,
    FormDataParser,
    FormEnd,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
)
from ringstore.http.messages import Request, RequestBody, Response, aclose_iterator
from ringstore.http.router import Handler, PathParams, Route, riak_quote

if TYPE_CHECKING:
    from ringstore.coord.api import KV, ClusterStatusSource
    from ringstore.http.formdata import Event
    from ringstore.http.metrics import NodeMetrics

JSON = "application/json"
ASSET_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
}
FIELD_NAMES = ("bucket", "key")  # the text fields the upload form has, before its file
FILE_FIELD = "file"
MAX_FIELD_BYTES = 4 * 1024  # a bucket or key name typed into a form
MAX_EPILOGUE_BYTES = 64 * 1024  # text after the form's end: browsers send a CRLF at most
DEFAULT_FILE_TYPE = "application/octet-stream"  # what browsers send for an unknown file type
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Stats the page shows besides the cluster picture (a small subset of /stats).
PAGE_STATS = (
    "ringstore_objects",
    "ringstore_chunks",
    "ringstore_chunk_bytes",
    "ringstore_metadata_bytes",
    "node_gets_total",
    "node_puts_total",
    "ringstore_deletes_total",
    "read_repairs_total",
    "ringstore_quorum_failures_total",
)
# The page loads nothing from elsewhere and runs no inline script: say so to the browser.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def load_assets() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = importlib.resources.files("ringstore.http").joinpath("ui")
    return {name: folder.joinpath(name).read_bytes() for name in ASSET_TYPES}


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _name(raw: bytes) -> str:
    """A bucket or key in JSON, as the Riak API writes names (see http/riak.py)."""
    return raw.decode("utf-8", "surrogateescape")


def _file_meta(content_type: str | None) -> WriteMeta:
    if content_type is None:
        return WriteMeta(content_type=DEFAULT_FILE_TYPE)
    try:
        media = parse_media_type(content_type)
    except BadRequest as exc:
        raise BadFormData(f"the file part's Content-Type is invalid: {exc}") from None
    params = "".join(
        f"; {name}={value if _TOKEN.fullmatch(value) else _quoted(value)}"
        for name, value in media.params
        if name != "charset"
    )
    return WriteMeta(content_type=media.essence + params, charset=media.param("charset"))


def _quoted(value: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", value) + '"'


def _basename(filename: str) -> str:
    """The file's own name: some browsers send the whole path a user picked it from."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


class _FormReader:
    """A form parser fed from the request body as it is read."""

    def __init__(self, body: RequestBody, parser: FormDataParser) -> None:
        self.body = body
        self.parser = parser
        self.file_bytes = 0

    async def next_event(self) -> Event:
        while True:
            event = self.parser.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            piece = await anext(self.body, None)
            if piece is None:
                self.parser.receive_data(b"")
            elif piece:
                self.parser.receive_data(piece)

    async def read_field(self, name: str) -> bytes:
        value = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, PartEnd):
                return bytes(value)
            assert isinstance(event, PartData)
            value += event.data
            if len(value) > MAX_FIELD_BYTES:
                raise BadFormData(f"form field {name!r} is over {MAX_FIELD_BYTES} bytes")

    async def file_body(self) -> AsyncIterator[bytes]:
        """The file part's bytes; then the form must end (the file is its last field)."""
        while True:
            event = await self.next_event()
            if isinstance(event, PartEnd):
                break
            assert isinstance(event, PartData)
            self.file_bytes += len(event.data)
            yield event.data
        if not isinstance(await self.next_event(), FormEnd):
            raise BadFormData(f"the {FILE_FIELD!r} field must be the form's last one")
        await self.skip_epilogue()

    async def skip_epilogue(self) -> None:
        """Read what follows the closing boundary (a CRLF from browsers), so the connection
        can serve its next request; a long epilogue is left unread and the connection closes."""
        skipped = 0
        while skipped <= MAX_EPILOGUE_BYTES:
            piece = await anext(self.body, None)
            if piece is None:
                return
            skipped += len(piece)


class WebUi:
    """The routes of the web page; `routes()` is what the server adds to the Riak API's."""

    def __init__(
        self,
        kv: KV,
        metrics: NodeMetrics,
        *,
        cluster_status: ClusterStatusSource | None = None,
        assets: Mapping[str, bytes] | None = None,
    ) -> None:
        self.kv = kv
        self.metrics = metrics
        self.cluster_status = cluster_status
        self.assets = dict(assets if assets is not None else load_assets())
        self.etags = {
            name: '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            for name, data in self.assets.items()
        }

    def routes(self) -> tuple[Route, ...]:
        static = tuple(
            Route(("ui", name), {"GET": self._asset_handler(name)})
            for name in self.assets
            if name != "index.html"
        )
        return (
            Route(("ui",), {"GET": self.ui_page}),
            Route(("ui", "status.json"), {"GET": self.ui_status}),
            Route(("ui", "upload"), {"POST": self.ui_upload}),
            *static,
        )

    # -- static files --------------------------------------------------------------------------

    def _static(self, request: Request, name: str) -> Response:
        etag = self.etags[name]
        headers = [
            ("Content-Type", ASSET_TYPES[name]),
            ("ETag", etag),
            ("Cache-Control", "no-cache"),  # revalidate: a node upgrade changes the page
            *SECURITY_HEADERS,
        ]
        wanted = request.headers.get("if-none-match") or ""
        if etag in (tag.strip() for tag in wanted.split(",")):
            return Response(304, headers)
        return Response(200, headers, self.assets[name])

    async def ui_page(self, request: Request, params: PathParams) -> Response:
        return self._static(request, "index.html")

    def _asset_handler(self, name: str) -> Handler:
        async def ui_asset(request: Request, params: PathParams) -> Response:
            return self._static(request, name)

        return ui_asset

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """What the page polls: the node, its view of the cluster, request counts, stats."""
        info = self.kv.info()
        server = self.metrics.server_stats() if self.metrics.server_stats is not None else {}
        document: dict[str, object] = {
            "node": info.name,
            "version": info.version,
            "time_s": trio.current_time(),
            "requests": self.metrics.requests_by_operation(),
            "open_connections": server.get("http_connections_active"),
            "stats": {name: info.stats[name] for name in PAGE_STATS if name in info.stats},
            "cluster": None,
        }
        if self.cluster_status is not None:
            cluster = self.cluster_status()
            document["cluster"] = {
                "ring_version": cluster.ring_version,
                "owners": list(cluster.owners),
                "members": [asdict(member) for member in cluster.members],
                "handoffs": [asdict(handoff) for handoff in cluster.handoffs],
                "workers": [asdict(worker) for worker in cluster.workers],
            }
        return document

    async def ui_status(self, request: Request, params: PathParams) -> Response:
        headers = [("Content-Type", JSON), ("Cache-Control", "no-store")]
        return Response(200, headers, _json(self.status()))

    # -- upload --------------------------------------------------------------------------------

    async def ui_upload(self, request: Request, params: PathParams) -> Response:
        """POST /ui/upload (multipart/form-data: bucket, key, file): store the file under
        bucket/key (key defaults to the file's name). 201 with JSON when the client asks for
        JSON (the page does), else 303 back to the page showing the new object."""
        wants_json = choose_media_type(request.headers.get("accept"), ["text/html", JSON]) == JSON
        reader = _FormReader(
            request.body,
            FormDataParser(boundary_from_content_type(request.headers.get("content-type"))),
        )
        fields: dict[str, bytes] = {}
        while True:
            event = await reader.next_event()
            if isinstance(event, FormEnd):
                raise BadFormData(f"the form has no {FILE_FIELD!r} field")
            assert isinstance(event, PartStart)
            if event.name in fields or (event.name == FILE_FIELD and event.filename is None):
                raise BadFormData(f"form field {event.name!r} sent twice or as the wrong kind")
            if event.filename is not None:
                if event.name != FILE_FIELD:
                    raise BadFormData(f"unexpected file field {event.name!r}")
                break
            if event.name not in FIELD_NAMES:
                raise BadFormData(f"unknown form field {event.name!r}")
            fields[event.name] = await reader.read_field(event.name)
        assert event.filename is not None
        bucket = fields.get("bucket", b"")
        if not bucket:
            raise BadFormData("the upload names no bucket")
        filename = _basename(event.filename)
        if not filename:
            raise BadFormData("no file was chosen")
        key = fields.get("key") or filename.encode("utf-8", "surrogateescape")
        meta = _file_meta(event.content_type)
        body = reader.file_body()
        try:
            await self.kv.put(bucket, key, meta, body, None, {})
        finally:
            await aclose_iterator(body)
        location = PathParams().object_path(bucket, key)
        if wants_json:
            document = {
                "bucket": _name(bucket),
                "key": _name(key),
                "location": location,
                "size": reader.file_bytes,
            }
            return Response(201, [("Content-Type", JSON), ("Location", location)], _json(document))
        page = f"/ui#bucket={riak_quote(bucket)}&key={riak_quote(key)}"
        return Response(303, [("Location", page), ("Content-Type", "text/plain")], b"stored\n")
