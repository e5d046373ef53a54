"""Versions of one object: a dotted version vector set of sibling contents, merged and coded.

The structure (a port of dvvset.erl by Gonçalves and Almeida, as Riak 2 uses it with
dvv_enabled) keeps, per actor, one `Entry(actor, counter, values)`: the object has seen the
actor's dots 1..counter, and `values` holds the contents of the newest of those dots, newest
first: `values[i]` has the dot (actor, counter - i). Every older dot of that actor is
obsolete. A write is coordinated by one replica: its value gets the next dot of that
replica's actor, after the clock absorbed the client's context, so exactly the values the
client read (and anything older) become obsolete and every concurrent value stays a sibling.
Ringstore never stores dvvset's anonymous values: every write is coordinated by an actor.

Actors and KV679. A dot must never be issued twice with different values, or a merge treats
a new write as already seen and silently drops it. So an actor names the node and a durable
node epoch (`make_actor`: a new random epoch whenever the node's data is lost), and, per key,
a key epoch (`key_actor`): whenever a replica coordinates a write to a key it holds no own
version of (never written here, tombstone reaped, copy handed off), it starts a new actor
from a node-wide counter that never repeats (Riak >= 2.1's per-key actor epochs). While it
holds the key it continues its newest key actor, whose history it knows in full.

Merge laws (`merge` with lww=False, on every valid object, None being the empty object):
commutative, associative and idempotent; the result's context is the join of both contexts;
a sibling is dropped only when the other side has seen its dot and no longer holds it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2

from ringstore.core.hashing import chunk_hash, is_chunk_hash
from ringstore.errors import BadContext, CorruptRecord

if TYPE_CHECKING:
    import random

Actor = bytes
Dot = tuple[Actor, int]

RECORD_FORMAT = 1  # first item of every encoded object; bump when the layout changes
CONTEXT_FORMAT = 1  # first item of every context payload; bump when the layout changes
EPOCH_BYTES = 8  # random per data directory: two lives of one node collide with odds 2**-64
MAX_NODE_NAME_CHARS = 100  # node names are host-like ("dev1@127.0.0.1"), never this long
MAX_ACTOR_BYTES = 160  # node name + "@" + 16 hex + "/" + 19-digit key epoch, with room
MAX_COUNTER = 2**63 - 1  # counters and key epochs fit a signed 64-bit integer everywhere
MAX_CONTEXT_CHARS = 64 * 1024  # any valid context is smaller; larger input is abuse
MAX_CONTEXT_ACTORS = 256  # 256 maximal actors encode to ~58 KiB, under MAX_CONTEXT_CHARS
CONTEXT_MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: ample against forgery
CONTEXT_MAC_DOMAIN = b"ringstore/context/v1\0"  # keeps this MAC apart from other uses of the key
MAX_RECORD_DEPTH = 8  # nesting of an encoded object is 7; deeper input is garbage
MAX_ETAG_CHARS = 128  # a hex digest of up to 512 bits
CONTENT_FIELDS = 11  # items of an encoded Content
NODE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@:-")
_ETAG_PATTERN = re.compile(f"[0-9a-f]{{1,{MAX_ETAG_CHARS}}}")


def _is_int(value: object) -> bool:
    # CBOR booleans decode to bool, a subclass of int: never accept them as numbers.
    return type(value) is int


def _check_actor(actor: object) -> None:
    if not isinstance(actor, bytes) or not 1 <= len(actor) <= MAX_ACTOR_BYTES:
        raise ValueError(f"an actor is 1 to {MAX_ACTOR_BYTES} bytes, not {actor!r:.80}")


def _check_counter(counter: object, what: str) -> None:
    if not _is_int(counter) or not 1 <= counter <= MAX_COUNTER:
        raise ValueError(f"{what} must be an integer from 1 to 2**63-1, not {counter!r:.40}")


def new_epoch(rng: random.Random) -> bytes:
    """A node epoch, drawn when a data directory is created (or found empty).

    Production passes `random.SystemRandom()`: a seeded generator would draw the same epoch
    again after the node loses its data, which is exactly what epochs exist to prevent.
    """
    return rng.randbytes(EPOCH_BYTES)


def make_actor(node: str, epoch: bytes) -> Actor:
    """The actor of a node in one life of its data: `node@<epoch hex>`."""
    if not isinstance(node, str) or not 1 <= len(node) <= MAX_NODE_NAME_CHARS:
        raise ValueError(f"a node name is 1 to {MAX_NODE_NAME_CHARS} characters: {node!r:.120}")
    if not set(node) <= NODE_NAME_CHARS:
        raise ValueError(f"a node name uses only letters, digits and ._@:- : {node!r}")
    if not isinstance(epoch, bytes) or len(epoch) != EPOCH_BYTES:
        raise ValueError(f"an epoch is {EPOCH_BYTES} random bytes, not {epoch!r:.40}")
    return node.encode("ascii") + b"@" + epoch.hex().encode("ascii")


def key_actor(actor: Actor, key_epoch: int) -> Actor:
    """The actor a replica uses for one key from its `key_epoch`-th (re)creation on."""
    _check_actor(actor)
    if not _is_int(key_epoch) or not 0 <= key_epoch <= MAX_COUNTER:
        raise ValueError(f"a key epoch is an integer from 0 to 2**63-1, not {key_epoch!r:.40}")
    result = actor + b"/" + str(key_epoch).encode("ascii")
    _check_actor(result)
    return result


@dataclass(frozen=True, slots=True)
class Content:
    """One sibling: a value (inline or chunked) or a tombstone, with its metadata.

    `etag` is the hex content hash (the HTTP ETag and Riak vtag); `last_modified_us` comes
    from the coordinator's injected wall clock and orders siblings for last-write-wins.
    """

    content_type: str
    charset: str | None
    content_encoding: str | None
    user_meta: tuple[tuple[str, str], ...]
    links: tuple[str, ...]
    size: int
    etag: str
    last_modified_us: int
    inline: bytes | None
    chunks: tuple[bytes, ...]
    deleted: bool = False

    def __post_init__(self) -> None:
        # Every record read is checked here, sibling by sibling: the common case (no user
        # metadata, links or chunks) skips the loops, and the etag is one regex match.
        if not isinstance(self.content_type, str) or not self.content_type:
            raise ValueError("content_type must be a non-empty string")
        if self.charset is not None and not isinstance(self.charset, str):
            raise ValueError("charset must be a string or None")
        if self.content_encoding is not None and not isinstance(self.content_encoding, str):
            raise ValueError("content_encoding must be a string or None")
        if not isinstance(self.user_meta, tuple) or (
            self.user_meta
            and not all(
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], str)
                for pair in self.user_meta
            )
        ):
            raise ValueError("user_meta must be a tuple of (name, value) string pairs")
        if not isinstance(self.links, tuple) or (
            self.links and not all(isinstance(x, str) for x in self.links)
        ):
            raise ValueError("links must be a tuple of strings")
        if not _is_int(self.size) or self.size < 0:
            raise ValueError(f"size must be a non-negative integer, not {self.size!r:.40}")
        if not isinstance(self.etag, str) or _ETAG_PATTERN.fullmatch(self.etag) is None:
            raise ValueError(f"etag must be lowercase hex of 1 to {MAX_ETAG_CHARS} digits")
        if not _is_int(self.last_modified_us) or not 0 <= self.last_modified_us <= MAX_COUNTER:
            raise ValueError("last_modified_us must be a non-negative 64-bit integer")
        if not isinstance(self.chunks, tuple) or (
            self.chunks and not all(is_chunk_hash(h) for h in self.chunks)
        ):
            raise ValueError("chunks must be a tuple of chunk hashes")
        if type(self.deleted) is not bool:
            raise ValueError("deleted must be a bool")
        if self.inline is not None and not isinstance(self.inline, bytes):
            raise ValueError("inline must be bytes or None")
        if self.deleted:
            if self.inline is not None or self.chunks or self.size:
                raise ValueError("a tombstone has no value: inline None, no chunks, size 0")
        elif self.inline is not None:
            if self.chunks:
                raise ValueError("a value is either inline or chunked, not both")
            if len(self.inline) != self.size:
                raise ValueError(f"size {self.size} does not match {len(self.inline)} inline bytes")
        elif not self.chunks or self.size < len(self.chunks):
            raise ValueError("a value that is not inline needs its chunks (each at least a byte)")

    @classmethod
    def from_bytes(
        cls,
        value: bytes,
        *,
        content_type: str,
        last_modified_us: int,
        charset: str | None = None,
        content_encoding: str | None = None,
        user_meta: tuple[tuple[str, str], ...] = (),
        links: tuple[str, ...] = (),
    ) -> Content:
        """A small value held inline, its etag being the hex BLAKE3 of the bytes."""
        return cls(
            content_type=content_type,
            charset=charset,
            content_encoding=content_encoding,
            user_meta=user_meta,
            links=links,
            size=len(value),
            etag=chunk_hash(value).hex(),
            last_modified_us=last_modified_us,
            inline=value,
            chunks=(),
        )

    @classmethod
    def tombstone(cls, last_modified_us: int) -> Content:
        """The sibling a delete writes."""
        return cls(
            content_type="application/octet-stream",
            charset=None,
            content_encoding=None,
            user_meta=(),
            links=(),
            size=0,
            etag=chunk_hash(b"").hex(),
            last_modified_us=last_modified_us,
            inline=None,
            chunks=(),
            deleted=True,
        )


def _content_to_cbor(c: Content) -> list[Any]:
    return [
        c.content_type,
        c.charset,
        c.content_encoding,
        [list(pair) for pair in c.user_meta],
        list(c.links),
        c.size,
        c.etag,
        c.last_modified_us,
        c.inline,
        list(c.chunks),
        c.deleted,
    ]


def _content_from_cbor(item: object) -> Content:
    if not isinstance(item, list) or len(item) != CONTENT_FIELDS:
        raise ValueError(f"a content is a list of {CONTENT_FIELDS} items")
    ctype, charset, encoding, meta, links, size, etag, modified, inline, chunks, deleted = item
    if not isinstance(meta, list) or not all(isinstance(p, list) for p in meta):
        raise ValueError("user_meta must be a list of pairs")
    if not isinstance(links, list) or not isinstance(chunks, list):
        raise ValueError("links and chunks must be lists")
    return Content(
        content_type=ctype,
        charset=charset,
        content_encoding=encoding,
        user_meta=tuple(tuple(pair) for pair in meta),
        links=tuple(links),
        size=size,
        etag=etag,
        last_modified_us=modified,
        inline=inline,
        chunks=tuple(chunks),
        deleted=deleted,
    )


def _content_bytes(c: Content) -> bytes:
    return cbor2.dumps(_content_to_cbor(c), canonical=True)


def encode_content(c: Content) -> bytes:
    """One sibling on its own, as the peer protocol carries a value to its coordinator."""
    return _content_bytes(c)


def decode_content(data: bytes) -> Content:
    """The content `encode_content` made; `CorruptRecord` for anything else."""
    try:
        item = cbor2.loads(bytes(data), max_depth=MAX_RECORD_DEPTH, allow_indefinite=False)
    except Exception as exc:  # untrusted bytes: the decoder may raise anything
        raise CorruptRecord(f"content is not valid CBOR: {exc}") from None
    try:
        return _content_from_cbor(item)
    except (ValueError, TypeError) as exc:
        raise CorruptRecord(f"content is malformed: {exc}") from None


def _newest(contents: list[Content]) -> Content:
    # Last-write-wins order: wall clock, then etag, then the whole encoding, so that two
    # replicas choosing among the same siblings always choose the same one.
    top = max((c.last_modified_us, c.etag) for c in contents)
    tied = [c for c in contents if (c.last_modified_us, c.etag) == top]
    return tied[0] if len(tied) == 1 else max(tied, key=_content_bytes)


@dataclass(frozen=True, slots=True)
class VersionVector(Mapping[Actor, int]):
    """A causal context: actor -> counter, every counter >= 1, sorted by actor."""

    counters: tuple[tuple[Actor, int], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.counters, tuple):
            raise ValueError("counters must be a tuple of (actor, counter) pairs")
        previous = b""
        for pair in self.counters:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError("counters must be a tuple of (actor, counter) pairs")
            actor, counter = pair
            _check_actor(actor)
            _check_counter(counter, "a counter")
            if actor <= previous:
                raise ValueError("actors must be sorted and unique")
            previous = actor

    @classmethod
    def of(cls, pairs: Mapping[Actor, int] | Iterable[tuple[Actor, int]]) -> VersionVector:
        """From a mapping or pairs in any order; counters of 0 (never seen) are dropped."""
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
        if len({actor for actor, _ in items}) != len(items):
            raise ValueError("an actor appears twice")
        return cls(tuple(sorted((a, n) for a, n in items if n != 0)))

    def __getitem__(self, actor: Actor) -> int:
        for name, counter in self.counters:
            if name == actor:
                return counter
        raise KeyError(actor)

    def __iter__(self) -> Iterator[Actor]:
        return (actor for actor, _ in self.counters)

    def __len__(self) -> int:
        return len(self.counters)

    def descends(self, other: VersionVector) -> bool:
        """Whether this context has seen everything `other` has."""
        return all(self.get(actor, 0) >= counter for actor, counter in other.counters)


@dataclass(frozen=True, slots=True)
class Entry:
    """One actor's part of an object: dots 1..counter seen, `values` for the newest ones."""

    actor: Actor
    counter: int
    values: tuple[Content, ...] = ()

    def __post_init__(self) -> None:
        _check_actor(self.actor)
        _check_counter(self.counter, "an entry's counter")
        if not isinstance(self.values, tuple) or not all(
            isinstance(v, Content) for v in self.values
        ):
            raise ValueError("an entry's values must be a tuple of Content")
        if len(self.values) > self.counter:
            raise ValueError(f"{len(self.values)} values cannot have {self.counter} dots")

    @property
    def floor(self) -> int:
        """Every dot of this actor up to `floor` is obsolete here."""
        return self.counter - len(self.values)

    def value_at(self, counter: int) -> Content | None:
        if self.floor < counter <= self.counter:
            return self.values[self.counter - counter]
        return None


@dataclass(frozen=True, slots=True)
class Object:
    """All versions of one key a replica holds: a DVV set of `Content` siblings."""

    entries: tuple[Entry, ...]
    # encode()'s result, kept: a coordinator sends one new version to every other replica.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple) or not all(
            isinstance(e, Entry) for e in self.entries
        ):
            raise ValueError("entries must be a tuple of Entry")
        for before, after in zip(self.entries, self.entries[1:], strict=False):
            if before.actor >= after.actor:
                raise ValueError("entries must be sorted by actor, each actor once")

    def siblings(self) -> list[Content]:
        """The current values, by actor, newest dot first within an actor."""
        return [value for entry in self.entries for value in entry.values]

    def dotted_siblings(self) -> list[tuple[Dot, Content]]:
        """The siblings with their dots, in the order of `siblings`."""
        return [
            ((entry.actor, entry.counter - i), value)
            for entry in self.entries
            for i, value in enumerate(entry.values)
        ]

    def context(self) -> VersionVector:
        """What a client that read this object has seen: dvvset's join."""
        return VersionVector(tuple((e.actor, e.counter) for e in self.entries))

    def chunk_hashes(self) -> frozenset[bytes]:
        """Every chunk some sibling references (what a replica must hold to store this)."""
        return frozenset(h for value in self.siblings() for h in value.chunks)

    def is_tombstone(self) -> bool:
        """Whether every sibling is deleted (an object without siblings counts as deleted)."""
        return all(value.deleted for value in self.siblings())

    def lww_winner(self) -> Content | None:
        """The newest sibling (by last_modified_us, ties by etag, then bytes), for reads with
        allow_mult=false; None only for an object without siblings."""
        siblings = self.siblings()
        return _newest(siblings) if siblings else None

    def encode(self) -> bytes:
        """Canonical CBOR: equal objects encode to equal bytes (and hash to equal AAE hashes)."""
        encoded = self._encoded
        if encoded is None:
            entries = [
                [e.actor, e.counter, [_content_to_cbor(v) for v in e.values]] for e in self.entries
            ]
            encoded = cbor2.dumps([RECORD_FORMAT, entries], canonical=True)
            # An immutable value's cache: setting it changes nothing anyone can observe.
            object.__setattr__(self, "_encoded", encoded)
        return encoded

    @staticmethod
    def decode(data: bytes) -> Object:
        """The object `encode` wrote; `CorruptRecord` for anything else."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptRecord(f"an object record is bytes, not {type(data).__name__}")
        try:
            # Untrusted bytes: the decoder may raise any exception type, so catch them all.
            item = cbor2.loads(bytes(data), max_depth=MAX_RECORD_DEPTH, allow_indefinite=False)
        except Exception as exc:
            raise CorruptRecord(f"object record is not valid CBOR: {exc}") from None
        try:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
                raise ValueError("a record is [format, entries]")
            if not _is_int(item[0]) or item[0] != RECORD_FORMAT:
                raise ValueError(f"unknown record format {item[0]!r:.40}")
            entries = []
            for raw in item[1]:
                if not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[2], list):
                    raise ValueError("an entry is [actor, counter, values]")
                values = tuple(_content_from_cbor(v) for v in raw[2])
                entries.append(Entry(raw[0], raw[1], values))
            return Object(tuple(entries))
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(f"object record is malformed: {exc}") from None


def _sync(left: tuple[Entry, ...], right: tuple[Entry, ...]) -> tuple[Entry, ...]:
    # dvvset's sync2: entries of one actor merge, other actors' entries are kept as they are.
    by_actor = {e.actor: e for e in left}
    for entry in right:
        mine = by_actor.get(entry.actor)
        by_actor[entry.actor] = entry if mine is None else _merge_entry(mine, entry)
    return tuple(by_actor[actor] for actor in sorted(by_actor))


def _merge_entry(a: Entry, b: Entry) -> Entry:
    # dvvset's merge/5, per dot: a dot survives unless either side has seen it obsoleted.
    # Both sides hold the same value at a shared dot, unless a dot was issued twice (the
    # KV679 bug that epochs prevent); then the larger encoding wins, so the result still does
    # not depend on the order of merges.
    if a == b:
        return a
    top = max(a.counter, b.counter)
    floor = max(a.floor, b.floor)
    values = []
    for counter in range(top, floor, -1):
        mine, theirs = a.value_at(counter), b.value_at(counter)
        if mine is None:
            chosen = theirs  # every dot above both floors is at or below one side's counter
        elif theirs is None or theirs == mine:
            chosen = mine
        else:
            chosen = max(mine, theirs, key=_content_bytes)
        values.append(chosen)
    return Entry(a.actor, top, tuple(values))


def _event(entries: tuple[Entry, ...], actor: Actor, content: Content) -> tuple[Entry, ...]:
    # dvvset's event/3: the next dot of `actor` holds `content`, in front of its live values.
    result = [e for e in entries if e.actor != actor]
    current = next((e for e in entries if e.actor == actor), None)
    if current is None:
        result.append(Entry(actor, 1, (content,)))
    else:
        result.append(Entry(actor, current.counter + 1, (content, *current.values)))
    return tuple(sorted(result, key=lambda e: e.actor))


def _own_key_actor(local: Object | None, actor: Actor) -> Actor | None:
    # The newest key epoch of this replica's actor that `local` holds, if any.
    if local is None:
        return None
    prefix = actor + b"/"
    best: tuple[int, Actor] | None = None
    for entry in local.entries:
        suffix = entry.actor[len(prefix) :]
        if entry.actor.startswith(prefix) and suffix.isdigit():
            epoch = int(suffix)
            if best is None or epoch > best[0]:
                best = (epoch, entry.actor)
    return None if best is None else best[1]


def _context_outruns(context: VersionVector, local: Object | None, actor: Actor) -> bool:
    # A client saw dots of this replica's key actors that `local` lacks: the local copy came
    # back through repair or handoff after this replica had dropped it, so it does not know
    # its own history; continuing it could issue a dot again (Riak's check for KV679).
    local_counters = {} if local is None else dict(local.context().counters)
    prefix = actor + b"/"
    return any(
        name.startswith(prefix) and counter > local_counters.get(name, 0)
        for name, counter in context.counters
    )


def _keep_newest(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
    # The newest sibling stays; so do the newer dots of its actor, which keeps each entry's
    # values contiguous (they exist only in objects written before the bucket became LWW).
    siblings = [value for entry in entries for value in entry.values]
    if not siblings:
        return entries
    winner = _newest(siblings)
    where = next((e.actor, e.values.index(winner)) for e in entries if winner in e.values)
    return tuple(
        Entry(e.actor, e.counter, e.values[: where[1] + 1] if e.actor == where[0] else ())
        for e in entries
    )


def coordinate(
    local: Object | None,
    content: Content,
    context: VersionVector | None,
    actor: Actor,
    *,
    lww: bool = False,
    key_epoch: int | None = None,
) -> Object:
    """The new object a coordinating replica stores (and sends to the others) for a put.

    `actor` is this replica's `make_actor(node, epoch)`. The new content gets a new dot of
    this replica's newest key actor in `local`; when `local` holds none (a key this replica
    has not coordinated since it last held no copy of it), `key_epoch` must be a value of a
    durable node-wide counter never passed before, and the dot starts `key_actor(actor,
    key_epoch)` (KV679: see the module docstring). Passing it on every call is fine.

    The content replaces exactly the siblings `context` covers (None: covers nothing, a
    blind write); every concurrent sibling stays. With `lww=True` the context is ignored (as
    Riak's last_write_wins) and only the newest of the local siblings and `content` stays,
    under the new dot: so every write's value is the newest of all it has seen, the
    invariant under which `merge(..., lww=True)` is a join.
    """
    if not isinstance(content, Content):
        raise TypeError(f"content must be a Content, not {type(content).__name__}")
    if local is not None and not isinstance(local, Object):
        raise TypeError(f"local must be an Object or None, not {type(local).__name__}")
    if context is not None and not isinstance(context, VersionVector):
        raise TypeError(f"context must be a VersionVector or None, not {type(context).__name__}")
    _check_actor(actor)
    local_entries = () if local is None else local.entries
    dot_actor = _own_key_actor(local, actor)
    if dot_actor is not None and context is not None and _context_outruns(context, local, actor):
        dot_actor = None
    if dot_actor is None:
        if key_epoch is None:
            raise ValueError(
                "this replica holds no version of the key, so the write needs a fresh key_epoch"
                " from a durable counter (a reused dot would silently lose writes: KV679)"
            )
        dot_actor = key_actor(actor, key_epoch)
        if any(dot_actor in vv for vv in (context, local and local.context()) if vv):
            raise ValueError(f"key epoch {key_epoch} was used before for this key")
    if lww:
        winner = _newest([*(local.siblings() if local else ()), content])
        cleared = tuple(Entry(e.actor, e.counter) for e in local_entries)
        return Object(_event(cleared, dot_actor, winner))
    seen = () if context is None else tuple(Entry(a, n) for a, n in context.counters)
    return Object(_event(_sync(seen, local_entries), dot_actor, content))


def merge(a: Object | None, b: Object | None, *, lww: bool = False) -> Object | None:
    """Sync two replicas' objects (dvvset's sync); None is a replica without the key.

    Laws with lww=False, for all valid objects: merge(a, b) == merge(b, a);
    merge(merge(a, b), c) == merge(a, merge(b, c)); merge(a, a) == a; merge(a, None) == a.
    A sibling is dropped only when the other side has seen its dot and no longer holds it.

    With lww=True only the newest sibling survives the sync (its actor's newer dots too, in
    objects from before the bucket became LWW). Commutative and idempotent always; for
    objects whose every write was coordinated with lww=True also associative, and the result
    is the single newest value ever written. Objects with siblings from allow_mult days may
    lose their newest value when an older write had causally replaced it.
    """
    for side in (a, b):
        if side is not None and not isinstance(side, Object):
            raise TypeError(f"merge takes Objects or None, not {type(side).__name__}")
    if a is None and b is None:
        return None
    entries = _sync(a.entries if a else (), b.entries if b else ())
    return Object(_keep_newest(entries) if lww else entries)


def context_scope(bucket: bytes, key: bytes) -> bytes:
    """The scope binding a context to one object, so that it cannot be replayed on another."""
    return len(bucket).to_bytes(4, "big") + bucket + key


def _context_mac(payload: bytes, secret: bytes, scope: bytes) -> bytes:
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the context secret must be non-empty bytes")
    if not isinstance(scope, bytes):
        raise TypeError("scope must be bytes")
    message = CONTEXT_MAC_DOMAIN + len(scope).to_bytes(4, "big") + scope + payload
    return hmac.new(secret, message, hashlib.sha256).digest()[:CONTEXT_MAC_BYTES]


def _sign_context_payload(payload: bytes, secret: bytes, scope: bytes = b"") -> str:
    return base64.b64encode(payload + _context_mac(payload, secret, scope)).decode("ascii")


def encode_context(vv: VersionVector, secret: bytes, *, scope: bytes = b"") -> str:
    """The opaque X-Riak-Vclock value for `vv`: base64 of CBOR with a MAC (see decode)."""
    if not isinstance(vv, VersionVector):
        raise TypeError(f"vv must be a VersionVector, not {type(vv).__name__}")
    if len(vv) > MAX_CONTEXT_ACTORS:
        raise ValueError(f"a context holds at most {MAX_CONTEXT_ACTORS} actors, not {len(vv)}")
    payload = cbor2.dumps([CONTEXT_FORMAT, [list(pair) for pair in vv.counters]], canonical=True)
    return _sign_context_payload(payload, secret, scope)


def decode_context(text: str | bytes, secret: bytes, *, scope: bytes = b"") -> VersionVector:
    """The context `encode_context` made with this secret and scope, else `BadContext`.

    The MAC is checked before the payload is parsed: a context claiming counters the client
    never saw would make a write silently discard siblings.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise BadContext("the context is not ASCII base64") from None
    if not isinstance(text, str):
        raise BadContext(f"the context must be text, not {type(text).__name__}")
    if len(text) > MAX_CONTEXT_CHARS:
        raise BadContext(f"the context is {len(text)} characters; the limit is {MAX_CONTEXT_CHARS}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadContext("the context is not valid base64") from None
    payload, mac = raw[:-CONTEXT_MAC_BYTES], raw[-CONTEXT_MAC_BYTES:]
    if not payload or not hmac.compare_digest(mac, _context_mac(payload, secret, scope)):
        raise BadContext("the context was not issued for this object by this cluster")
    try:
        item = cbor2.loads(payload, max_depth=4, allow_indefinite=False)
    except Exception:  # signed by us, yet any decoder failure must still be a BadContext
        raise BadContext("the context payload is not valid CBOR") from None
    if (
        not isinstance(item, list)
        or len(item) != 2
        or not _is_int(item[0])
        or item[0] != CONTEXT_FORMAT
        or not isinstance(item[1], list)
    ):
        raise BadContext("the context payload is not [format, counters]")
    if len(item[1]) > MAX_CONTEXT_ACTORS:
        raise BadContext(f"the context names more than {MAX_CONTEXT_ACTORS} actors")
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in item[1]):
        raise BadContext("the context's counters are not [actor, counter] pairs")
    try:
        return VersionVector(tuple((actor, counter) for actor, counter in item[1]))
    except ValueError as exc:
        raise BadContext(f"the context is invalid: {exc}") from None
