"""Riak's object resource over a KV handle: GET, HEAD, PUT, POST and DELETE of
/buckets/B/keys/K, and POST /buckets/B/keys with a server-chosen key.

Representations follow riak_kv_wm_object: one sibling is served as itself (its content type,
charset, encoding, links, user metadata, vtag as a quoted ETag); several answer 300 with the
vtags as text/plain, or with every sibling in one multipart/mixed body when the client accepts
it; a tombstone is a 404 carrying X-Riak-Deleted and the vclock. On top of Riak, HTTP's
conditional requests, single byte ranges and digest fields (RFC 9530) are honoured.

User metadata is stored without its `X-Riak-Meta-` prefix (the name as the client spelled
it) and gets the prefix back on the way out.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from ringstore.coord.api import BodyCheck, GetResult, WriteMeta
from ringstore.core.httpsem import (
    BodyDigest,
    Decision,
    Preconditions,
    RangeNotSatisfiable,
    Validators,
    base62,
    choose_media_type,
    choose_repr_digest,
    digest_hasher,
    evaluate_preconditions,
    format_digest_field,
    format_http_date_us,
    multipart_part_head,
    multipart_tail,
    parse_media_type,
    quote_etag,
    random_id_62,
    select_range,
    siblings_text,
    split_header_list,
)
from ringstore.errors import BadRequest
from ringstore.http.messages import (
    HttpError,
    Request,
    RequestBody,
    Response,
    StreamBody,
    aclose_iterator,
)
from ringstore.http.router import PathParams, parse_query, riak_unquote

if TYPE_CHECKING:
    from ringstore.coord.api import KV
    from ringstore.core.versions import Content

USER_META_PREFIX = "x-riak-meta-"
MAX_BOUNDARY_TRIES = 8  # a random boundary found inside a value is drawn again
SIBLING_TYPES = ["text/plain", "multipart/mixed"]  # riak_kv_wm_object's order: text first
LINK_ERROR = (
    'Invalid Link header. Links must be of the form\n</buckets/BUCKET/keys/KEY>; riaktag="TAG"'
)
CACHED_CONTENT_TYPES = 256  # parsed Content-Types remembered (a client uses a few)
CACHED_CONTENT_TYPE_CHARS = 200  # ... if this short: the cache stays small whatever is sent
_BUCKET_LINK = re.compile(r'</buckets/([^/]+)>; ?rel="([^"]+)"')
_KEY_LINK = re.compile(r'</buckets/([^/]+)/keys/([^/]+)>; ?riaktag="([^"]+)"')
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _media_essence(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _content_type_header(content: Content) -> str:
    if content.charset:
        return f"{content.content_type}; charset={content.charset}"
    return content.content_type


def _last_modified_s(content: Content) -> int:
    return content.last_modified_us // 1_000_000


def sibling_set_etag(context: str | None) -> str:
    """The ETag of a 300 answer: base62 of the MD5 of the vclock, as Riak makes it."""
    digest = hashlib.md5((context or "").encode("latin-1", "replace")).digest()
    return base62(int.from_bytes(digest, "big"))


def _validators(siblings: list[Content], context: str | None) -> Validators:
    if len(siblings) == 1:
        return Validators(siblings[0].etag, _last_modified_s(siblings[0]))
    newest = max(_last_modified_s(content) for content in siblings)
    return Validators(sibling_set_etag(context), newest)


def _current_validators(result: GetResult) -> Validators | None:
    """What a write's preconditions compare against; None when the key holds no value."""
    obj = result.object
    if obj is None or obj.is_tombstone():
        return None
    return _validators(obj.siblings(), result.context)


def _store_content_type(value: str) -> tuple[str, str | None]:
    """(content type to store, charset) from a request's Content-Type; 415 if not a type."""
    if len(value) <= CACHED_CONTENT_TYPE_CHARS:
        return _cached_store_content_type(value)
    return _parse_store_content_type(value)


# Clients send a handful of distinct Content-Types and parsing one costs a visible share of
# a small PUT. A failure (415) raises and is not kept.
@functools.lru_cache(maxsize=CACHED_CONTENT_TYPES)
def _cached_store_content_type(value: str) -> tuple[str, str | None]:
    return _parse_store_content_type(value)


def _parse_store_content_type(value: str) -> tuple[str, str | None]:
    try:
        media = parse_media_type(value)
    except BadRequest:
        head = value.split(";", 1)[0].strip()
        raise HttpError(
            415, f'"{head}" is not a valid media type for the Content-type header.'
        ) from None
    params = []
    for name, param in media.params:
        if name == "charset":
            continue
        shown = param if _TOKEN.fullmatch(param) else '"' + re.sub(r'(["\\])', r"\\\1", param) + '"'
        params.append(f"; {name}={shown}")
    return media.essence + "".join(params), media.param("charset")


def _parse_links(values: list[str], bucket: bytes) -> tuple[str, ...]:
    """The Link entries to store, checked as riak_kv_wm_object checks them (API v2 form).

    The bucket's own `rel="up"` link is dropped: every read adds it back.
    """
    if not values:
        return ()
    try:
        entries = split_header_list(", ".join(values))
    except BadRequest:
        raise HttpError(400, LINK_ERROR) from None
    kept = []
    for entry in entries:
        bucket_link = _BUCKET_LINK.search(entry)
        if bucket_link is not None:
            if bucket_link[2] == "up" and riak_unquote(bucket_link[1]) == bucket:
                continue
            raise HttpError(400, LINK_ERROR)
        if _KEY_LINK.search(entry) is None:
            raise HttpError(400, LINK_ERROR)
        kept.append(entry)
    return tuple(kept)


def _user_meta(request: Request) -> tuple[tuple[str, str], ...]:
    meta = []
    for name, value in request.headers.prefixed(USER_META_PREFIX):
        suffix = name[len(USER_META_PREFIX) :]
        if not suffix:
            raise HttpError(400, "X-Riak-Meta- header without a name")
        meta.append((suffix, value))
    return tuple(meta)


def _preconditions(request: Request) -> Preconditions:
    headers = request.headers
    return Preconditions.from_headers(
        headers.get("if-match"),
        headers.get("if-none-match"),
        headers.get("if-modified-since"),
        headers.get("if-unmodified-since"),
    )


def _context_header(request: Request) -> str | None:
    """The X-Riak-Vclock a write carries; an empty one counts as none."""
    value = (request.headers.get("x-riak-vclock") or "").strip()
    return value or None


def _not_found(context: str | None = None, *, deleted: bool = False) -> Response:
    headers = [("Content-Type", "text/plain")]
    if context:
        headers.append(("X-Riak-Vclock", context))
    if deleted:
        headers.append(("X-Riak-Deleted", "true"))
    return Response(404, headers, b"not found\n")


class _DigestingBody:
    """The request body, hashed for Content-Digest / Content-MD5 as KV.put reads it."""

    __slots__ = ("_body", "_digest")

    def __init__(self, body: RequestBody, digest: BodyDigest) -> None:
        self._body = body
        self._digest = digest

    def __aiter__(self) -> _DigestingBody:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._body.__anext__()
        self._digest.update(piece)
        return piece


class ObjectResource:
    """Handlers of the object routes; see the module docstring for the representations."""

    def __init__(
        self, kv: KV, *, rng: random.Random, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.rng = rng
        self.wall_clock = wall_clock

    # -- GET / HEAD --------------------------------------------------------------------------

    async def get(self, request: Request, params: PathParams) -> Response:
        bucket, key = params.bucket, params.key
        assert bucket is not None and key is not None
        query = parse_query(request.query)
        result = await self.kv.get(bucket, key, query)
        obj = result.object
        if obj is None:
            return _not_found()
        if obj.is_tombstone():
            return _not_found(result.context, deleted=True)
        siblings = obj.siblings()
        vtag = query.get("vtag")
        if vtag is not None:
            siblings = [content for content in siblings if content.etag == vtag][:1]
            if not siblings:
                return _not_found()
            if siblings[0].deleted:
                return _not_found(result.context, deleted=True)
        pre = _preconditions(request)
        validators = _validators(siblings, result.context)
        decision = evaluate_preconditions(
            request.method, pre, validators, now_s=int(self.wall_clock())
        )
        if decision is Decision.PRECONDITION_FAILED:
            raise HttpError(412, "Precondition Failed")
        if decision is Decision.NOT_MODIFIED:
            return Response(304, self._validator_headers(validators, result.context))
        return await self._representation(
            request, params, siblings, result.context, validators, strict_accept=True
        )

    def _validator_headers(
        self, validators: Validators, context: str | None
    ) -> list[tuple[str, str]]:
        headers = [("ETag", quote_etag(validators.etag))]
        if validators.last_modified_s is not None:
            headers.append(
                ("Last-Modified", format_http_date_us(validators.last_modified_s * 1_000_000))
            )
        headers.append(("Vary", "Accept"))
        if context:
            headers.append(("X-Riak-Vclock", context))
        return headers

    async def _representation(
        self,
        request: Request,
        params: PathParams,
        siblings: list[Content],
        context: str | None,
        validators: Validators,
        *,
        strict_accept: bool,
    ) -> Response:
        """The 200/206 (one sibling) or 300 (several) answer showing `siblings`."""
        accept = request.headers.get("accept")
        headers = self._validator_headers(validators, context)
        if len(siblings) == 1:
            content = siblings[0]
            if (
                strict_accept
                and choose_media_type(accept, [_media_essence(content.content_type)]) is None
            ):
                raise HttpError(406, f"Not Acceptable: the value is {content.content_type}")
            return await self._single(request, params, content, headers, validators)
        chosen = choose_media_type(accept, SIBLING_TYPES)
        if chosen is None:
            if strict_accept:
                raise HttpError(406, "Not Acceptable: siblings are text/plain or multipart/mixed")
            chosen = "text/plain"
        body: bytes | StreamBody
        if chosen == "multipart/mixed":
            content_type, body = self._multipart(params, siblings)
        else:
            content_type, body = "text/plain", siblings_text([c.etag for c in siblings])
        headers.insert(0, ("Content-Type", content_type))
        response = Response(300, headers, body)
        await self._add_repr_digest(request, response, body)
        return response

    async def _single(
        self,
        request: Request,
        params: PathParams,
        content: Content,
        headers: list[tuple[str, str]],
        validators: Validators,
    ) -> Response:
        assert params.bucket is not None and params.key is not None
        headers = [("Content-Type", _content_type_header(content)), *headers]
        if content.content_encoding:
            headers.append(("Content-Encoding", content.content_encoding))
        links = [f'<{params.bucket_path(params.bucket)}>; rel="up"', *content.links]
        headers.append(("Link", ", ".join(links)))
        headers.extend((f"X-Riak-Meta-{name}", value) for name, value in content.user_meta)
        headers.append(("Accept-Ranges", "bytes"))
        status, start, end = 200, 0, content.size
        if request.method == "GET":
            try:
                byte_range = select_range(
                    request.headers.get("range"),
                    content.size,
                    if_range=request.headers.get("if-range"),
                    current=validators,
                )
            except RangeNotSatisfiable as exc:
                raise HttpError(
                    416, str(exc), headers=[("Content-Range", exc.content_range)]
                ) from None
            if byte_range is not None:
                status, start, end = 206, byte_range.start, byte_range.end
                headers.append(("Content-Range", byte_range.content_range))
        response = Response(status, headers, self._value(params, content, start, end))
        await self._add_repr_digest(
            request, response, self._value(params, content, 0, content.size)
        )
        return response

    def _value(
        self, params: PathParams, content: Content, start: int, end: int
    ) -> bytes | StreamBody:
        if content.deleted:
            return b""
        if content.inline is not None:
            return bytes(content.inline[start:end])
        bucket, key = params.bucket, params.key
        assert bucket is not None and key is not None
        return StreamBody(end - start, lambda: self.kv.read_value(bucket, key, content, start, end))

    def _multipart(self, params: PathParams, siblings: list[Content]) -> tuple[str, StreamBody]:
        """Riak's multipart/mixed 300 body: every sibling as a part, values streamed."""
        assert params.bucket is not None
        up_link = f'<{params.bucket_path(params.bucket)}>; rel="up"'
        inline_values = [c.inline for c in siblings if c.inline is not None]
        for _ in range(MAX_BOUNDARY_TRIES):
            boundary = random_id_62(self.rng)
            marker = boundary.encode("ascii")
            if not any(marker in value for value in inline_values):
                break
        parts: list[tuple[bytes, Content]] = []
        for content in siblings:
            part_headers = [("Content-Type", _content_type_header(content))]
            if content.content_encoding:
                part_headers.append(("Content-Encoding", content.content_encoding))
            part_headers.append(("Link", ", ".join([up_link, *content.links])))
            part_headers.append(("Etag", content.etag))
            part_headers.append(("Last-Modified", format_http_date_us(content.last_modified_us)))
            if content.deleted:
                part_headers.append(("X-Riak-Deleted", "true"))
            part_headers.extend((f"X-Riak-Meta-{name}", value) for name, value in content.user_meta)
            parts.append((multipart_part_head(boundary, part_headers), content))
        tail = multipart_tail(boundary)
        length = len(tail) + sum(
            len(head) + (0 if content.deleted else content.size) for head, content in parts
        )

        async def pieces() -> AsyncIterator[bytes]:
            for head, content in parts:
                yield head
                value = self._value(params, content, 0, content.size)
                if isinstance(value, bytes):
                    if value:
                        yield value
                    continue
                stream = value.open()
                try:
                    async for piece in stream:
                        yield piece
                finally:
                    await aclose_iterator(stream)
            yield tail

        return f"multipart/mixed; boundary={boundary}", StreamBody(length, pieces)

    async def _add_repr_digest(
        self, request: Request, response: Response, full_body: bytes | StreamBody
    ) -> None:
        """Repr-Digest of the whole representation when the client sent Want-Repr-Digest.

        A streamed value is read through once more to hash it (bounded memory, one extra
        pass over the value): the header must precede the body.
        """
        algorithm = choose_repr_digest(request.headers.get("want-repr-digest"))
        if algorithm is None:
            return
        hasher = digest_hasher(algorithm)
        if isinstance(full_body, bytes):
            hasher.update(full_body)
        else:
            stream = full_body.open()
            try:
                async for piece in stream:
                    hasher.update(piece)
            finally:
                await aclose_iterator(stream)
        response.headers.append(("Repr-Digest", format_digest_field(algorithm, hasher.digest())))

    # -- PUT / POST --------------------------------------------------------------------------

    async def put(self, request: Request, params: PathParams) -> Response:
        """Store the body; 204, or 201 + Location for a server-chosen key, or the stored
        object with returnbody=true."""
        bucket = params.bucket
        assert bucket is not None
        headers = request.headers
        content_type = headers.get("content-type")
        if content_type is None:
            raise HttpError(400, "Missing Content-Type request header")
        stored_type, charset = _store_content_type(content_type)
        meta = WriteMeta(
            content_type=stored_type,
            charset=charset,
            content_encoding=headers.get("content-encoding"),
            user_meta=_user_meta(request),
            links=_parse_links(headers.get_all("link"), bucket),
        )
        query = parse_query(request.query)
        context = _context_header(request)
        digest = BodyDigest.from_headers(headers.get("content-digest"), headers.get("content-md5"))
        pre = _preconditions(request)
        created = params.key is None
        key = random_id_62(self.rng).encode("ascii") if created else params.key
        assert key is not None
        if pre.present:
            current = (
                None if created else _current_validators(await self.kv.get(bucket, key, query))
            )
            if evaluate_preconditions(request.method, pre, current) is not Decision.PROCEED:
                raise HttpError(412, "Precondition Failed")
        body = request.body if digest is None else _DigestingBody(request.body, digest)
        check = None if digest is None else BodyCheck(verify=digest.verify)
        result = await self.kv.put(bucket, key, meta, body, context, query, check)
        location = [("Location", params.object_path(bucket, key))] if created else []
        if query.get("returnbody") != "true" or result.object is None:
            return Response(201 if created else 204, location)
        target = PathParams(bucket, key, params.prefix)
        siblings = result.object.siblings()
        response = await self._representation(
            request,
            target,
            siblings,
            result.context,
            _validators(siblings, result.context),
            strict_accept=False,
        )
        if created:
            response.status = 201
        response.headers.extend(location)
        return response

    # -- DELETE ------------------------------------------------------------------------------

    async def delete(self, request: Request, params: PathParams) -> Response:
        bucket, key = params.bucket, params.key
        assert bucket is not None and key is not None
        query = parse_query(request.query)
        context = _context_header(request)
        pre = _preconditions(request)
        if pre.present:
            current = _current_validators(await self.kv.get(bucket, key, query))
            if evaluate_preconditions("DELETE", pre, current) is not Decision.PROCEED:
                raise HttpError(412, "Precondition Failed")
        await self.kv.delete(bucket, key, context, query)
        return Response(204)
