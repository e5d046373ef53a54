"""What each console command does, given the node's narrow admin handle and one typed line.

Commands read as a person types them (`get photos cat`, `put notes n1 buy milk`): words are
split like a shell's, so a bucket or key with spaces is quoted, and names are shown quoted
the same way, so any name printed can be pasted back. `put` takes the rest of the line as the
value. Every failure becomes one error line; nothing a command does can take the node down.
"""

from __future__ import annotations

import enum
import logging
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ringstore.admin.protocol import (
    ALIASES,
    COMMAND_TIMEOUT_S,
    COMMANDS,
    DELETE_OPTIONS,
    GET_OPTIONS,
    Reply,
    one_line,
)
from ringstore.coord.api import WriteMeta
from ringstore.errors import BadRequest, NotFound, RingstoreError

if TYPE_CHECKING:
    from ringstore.coord.api import KV
    from ringstore.core.ring import Ring
    from ringstore.core.versions import Content

log = logging.getLogger(__name__)

# A value larger than this is described, not printed: a terminal is no place for megabytes.
SHOW_VALUE_MAX_BYTES = 64 * 1024
# `keys` and `buckets` stop here: HTTP's ?keys=stream is the tool for listing everything.
LIST_MAX_NAMES = 10_000
TEXT_META = WriteMeta(content_type="text/plain", charset="utf-8")
QUOTES = "'\""


@dataclass(frozen=True, slots=True)
class AdminHandle:
    """All the console may touch on its node: the KV handle and a few read-only views.

    `members()` maps every member (this node included) to whether this node sees it up;
    `status()` gives node facts for `status` (addresses, pid, data directory...) as text;
    `stop()` asks the node to shut down.
    """

    kv: KV
    ring: Callable[[], Ring]
    members: Callable[[], Mapping[str, bool]]
    stop: Callable[[], None]
    status: Callable[[], Mapping[str, str]] = dict
    # Background workers by name: their one-line status, and one round of one of them now.
    workers: Callable[[], Mapping[str, str]] = dict
    run_worker: Callable[[str], Awaitable[None]] | None = None


class Action(enum.Enum):
    """What the session does after sending a command's reply."""

    CONTINUE = "continue"
    CLOSE = "close"  # quit: end this session, the node keeps running
    STOP = "stop"  # stop: end the session, then shut the node down


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply
    action: Action = Action.CONTINUE


# -- parsing ---------------------------------------------------------------------------------


def split_words(text: str, count: int | None = None) -> tuple[list[str], str]:
    """The first `count` (default: all) shell-style words of `text`, and the rest unparsed."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    while count is None or len(words) < count:
        try:
            word = lexer.get_token()
        except ValueError as exc:
            raise BadRequest(f"cannot split {text!r:.60} into words: {exc}") from None
        if word is None:
            break
        words.append(word)
    rest = lexer.instream.read() if count is not None else ""
    return words, rest.lstrip()


def parse_value(rest: str) -> str:
    """The value of a put: the rest of the line, unquoted when it is one quoted word."""
    if rest and rest[0] in QUOTES:
        try:
            words = shlex.split(rest)
        except ValueError:
            return rest
        if len(words) == 1:
            return words[0]
    return rest


def _bucket_key(words: list[str], usage: str) -> tuple[bytes, bytes]:
    if len(words) < 2:
        raise BadRequest(f"usage: {usage}")
    bucket, key = words[0], words[1]
    if not bucket or not key:
        raise BadRequest("bucket and key must not be empty")
    return bucket.encode("utf-8"), key.encode("utf-8")


def _options(words: list[str], allowed: frozenset[str], usage: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or name not in allowed:
            raise BadRequest(f"unexpected {word!r:.60}; usage: {usage}")
        if name in options:
            raise BadRequest(f"option {name} given twice")
        options[name] = value
    return options


# -- showing ---------------------------------------------------------------------------------


def show_name(name: bytes) -> str:
    """A bucket or key as the console shows it: quoted like a shell word, so it can be typed."""
    return shlex.quote(printable(name.decode("utf-8", errors="backslashreplace")))


def printable(text: str) -> str:
    """`text` with control characters escaped, so showing a value cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def text_lines(text: str) -> list[str]:
    """`text` as output lines: split at newlines, a final newline not making an empty line."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [printable(line.removesuffix("\r")) for line in lines]


def _looks_textual(data: bytes) -> str | None:
    """The value as text if it is UTF-8 without NULs (control characters get escaped later)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _format_duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _error_text(exc: BaseException) -> str | None:
    """The message of a ringstore error, also inside exception groups; None for anything else."""
    if isinstance(exc, RingstoreError):
        return one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, BaseExceptionGroup):
        texts = [_error_text(inner) for inner in exc.exceptions]
        if texts and all(text is not None for text in texts):
            return "; ".join(dict.fromkeys(t for t in texts if t is not None))
    return None


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- the console -----------------------------------------------------------------------------


class Console:
    """Runs one session's command lines against the handle; `execute` never raises."""

    def __init__(self, handle: AdminHandle, started_at: float) -> None:
        self.handle = handle
        self.kv = handle.kv
        self._started_at = started_at  # trio time the console server started: the node's uptime
        self._handlers: dict[str, Callable[[str], Awaitable[list[str]]]] = {
            "get": self._get,
            "put": self._put,
            "delete": self._delete,
            "buckets": self._buckets,
            "keys": self._keys,
            "ring": self._ring,
            "members": self._members,
            "status": self._status,
            "stats": self._stats,
            "workers": self._workers,
            "help": self._help,
        }

    async def execute(self, line: str) -> Outcome:
        name, _, rest = line.strip().partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        if not name:
            return Outcome(Reply())
        if name == "quit":
            return Outcome(Reply(("bye",)), Action.CLOSE)
        if name == "stop":
            if rest.strip():
                return Outcome(Reply(error="usage: stop (it stops the node you are attached to)"))
            node = self.kv.info().name
            log.warning("%s: stop requested from the admin console", node)
            return Outcome(Reply((f"{node} is stopping",)), Action.STOP)
        handler = self._handlers.get(name)
        if handler is None:
            return Outcome(Reply(error=f"unknown command {name!r:.40}; type help for the list"))
        try:
            with trio.fail_after(COMMAND_TIMEOUT_S):
                lines = await handler(rest.strip())
        except trio.TooSlowError:
            return Outcome(Reply(error=f"{name} gave no answer within {COMMAND_TIMEOUT_S:g} s"))
        except Exception as exc:
            text = _error_text(exc)
            if text is None:
                log.exception("%s: admin command %r failed", self.kv.info().name, name)
                text = f"internal error ({type(exc).__name__}: {one_line(str(exc))}); see node log"
            return Outcome(Reply(error=text))
        return Outcome(Reply(tuple(lines)))

    # -- objects -----------------------------------------------------------------------------

    async def _get(self, rest: str) -> list[str]:
        usage = COMMANDS["get"].usage
        words, _ = split_words(rest)
        bucket, key = _bucket_key(words, usage)
        query = _options(words[2:], GET_OPTIONS, usage)
        result = await self.kv.get(bucket, key, query)
        obj = result.object
        where = f"{show_name(bucket)}/{show_name(key)}"
        if obj is None:
            raise NotFound(f"not found: {where}")
        if obj.is_tombstone():
            raise NotFound(f"not found: {where} (deleted)")
        siblings = obj.siblings()
        if len(siblings) == 1:
            return await self._value_lines(bucket, key, siblings[0])
        lines = [f"{where} has {len(siblings)} siblings; a put replaces them all"]
        for number, content in enumerate(siblings, 1):
            lines.append(f"--- sibling {number}: {self._describe(content)}")
            if not content.deleted:
                lines.extend(await self._value_lines(bucket, key, content))
        return lines

    @staticmethod
    def _describe(content: Content) -> str:
        if content.deleted:
            return "deleted"
        return f"{content.content_type}, {content.size} bytes, etag {content.etag}"

    async def _value_lines(self, bucket: bytes, key: bytes, content: Content) -> list[str]:
        if content.size > SHOW_VALUE_MAX_BYTES:
            return [f"({content.size} bytes of {content.content_type}: too large to show here)"]
        data = bytearray()
        async with aclosing(self.kv.read_value(bucket, key, content)) as pieces:
            async for piece in pieces:
                data += piece
        text = _looks_textual(bytes(data))
        if text is None:
            return [f"({content.size} bytes of {content.content_type}: binary, not shown)"]
        return text_lines(text)

    async def _put(self, rest: str) -> list[str]:
        usage = COMMANDS["put"].usage
        words, tail = split_words(rest, 2)
        bucket, key = _bucket_key(words, usage)
        if not tail:
            raise BadRequest(f"usage: {usage}")
        data = parse_value(tail).encode("utf-8")
        # Read the current version's context first so the new value replaces what a person
        # sees, as `put` suggests. If that read fails the write goes ahead without one: the
        # value may then stand beside the old one as a sibling, but nothing is lost.
        try:
            context = (await self.kv.get(bucket, key, {})).context
        except RingstoreError:
            context = None
        await self.kv.put(bucket, key, TEXT_META, _one_piece(data), context, {})
        log.info("%s: admin put %s/%s", self.kv.info().name, show_name(bucket), show_name(key))
        return [f"stored {show_name(bucket)}/{show_name(key)} ({len(data)} bytes)"]

    async def _delete(self, rest: str) -> list[str]:
        usage = COMMANDS["delete"].usage
        words, _ = split_words(rest)
        bucket, key = _bucket_key(words, usage)
        query = _options(words[2:], DELETE_OPTIONS, usage)
        try:
            await self.kv.delete(bucket, key, None, query)
        except NotFound:
            raise NotFound(f"not found: {show_name(bucket)}/{show_name(key)}") from None
        log.info("%s: admin delete %s/%s", self.kv.info().name, show_name(bucket), show_name(key))
        return [f"deleted {show_name(bucket)}/{show_name(key)}"]

    async def _buckets(self, rest: str) -> list[str]:
        if rest:
            raise BadRequest(f"usage: {COMMANDS['buckets'].usage}")
        return await self._listing(self.kv.list_buckets(), "buckets")

    async def _keys(self, rest: str) -> list[str]:
        words, _ = split_words(rest)
        if len(words) != 1 or not words[0]:
            raise BadRequest(f"usage: {COMMANDS['keys'].usage}")
        return await self._listing(self.kv.list_keys(words[0].encode("utf-8")), "keys")

    @staticmethod
    async def _listing(batches: AsyncIterator[list[bytes]], what: str) -> list[str]:
        names: set[bytes] = set()
        truncated = False
        async with aclosing(batches) as stream:
            async for batch in stream:
                names.update(batch)
                if len(names) > LIST_MAX_NAMES:
                    truncated = True
                    break
        lines = [show_name(name) for name in sorted(names)[:LIST_MAX_NAMES]]
        if truncated:
            lines.append(f"(stopped after {LIST_MAX_NAMES} {what}; list them all over HTTP)")
        return lines

    # -- the cluster -------------------------------------------------------------------------

    async def _ring(self, rest: str) -> list[str]:
        if rest:
            raise BadRequest(f"usage: {COMMANDS['ring'].usage}")
        ring = self.handle.ring()
        members = self.handle.members()
        width = max(len("owner"), *(len(name) for name in ring.members))
        lines = [
            f"ring version {ring.version}: {ring.size} partitions, {len(ring.members)} owners",
            f"{'partition':>9}  owner",
        ]
        lines.extend(f"{p:>9}  {owner}" for p, owner in enumerate(ring.owners))
        lines.append("")
        lines.append(f"{'owner':<{width}}  partitions  share   status")
        for node in ring.members:
            count = len(ring.owned_by(node))
            status = "up" if members.get(node, False) else "down"
            share = f"{100 * count / ring.size:.1f}%"
            lines.append(f"{node:<{width}}  {count:>10}  {share:>6}  {status}")
        return lines

    async def _members(self, rest: str) -> list[str]:
        if rest:
            raise BadRequest(f"usage: {COMMANDS['members'].usage}")
        ring = self.handle.ring()
        members = self.handle.members()
        me = self.kv.info().name
        width = max(len("member"), *(len(name) for name in members))
        lines = [f"{'member':<{width}}  status  partitions"]
        for node in sorted(members):
            status = "up" if members[node] else "down"
            note = "  (this node)" if node == me else ""
            count = len(ring.owned_by(node))
            lines.append(f"{node:<{width}}  {status:<6}  {count:>10}{note}")
        up = sum(members.values())
        lines.append(f"{up} up, {len(members) - up} down")
        return lines

    async def _status(self, rest: str) -> list[str]:
        if rest:
            raise BadRequest(f"usage: {COMMANDS['status'].usage}")
        info = self.kv.info()
        ring = self.handle.ring()
        members = self.handle.members()
        down = sorted(name for name, up in members.items() if not up)
        facts: dict[str, str] = {"node": info.name, "version": info.version}
        facts["uptime"] = _format_duration(max(trio.current_time() - self._started_at, 0.0))
        facts.update(self.handle.status())
        facts["ring"] = f"version {ring.version}, {ring.size} partitions"
        facts["members"] = f"{len(members) - len(down)} up, {len(down)} down" + (
            f" ({', '.join(down)})" if down else ""
        )
        objects = info.stats.get("ringstore_objects")
        if objects is not None:
            facts["objects"] = str(objects)
        width = max(len(name) for name in facts)
        return [f"{name:<{width}}  {printable(value)}" for name, value in facts.items()]

    async def _stats(self, rest: str) -> list[str]:
        if rest:
            raise BadRequest(f"usage: {COMMANDS['stats'].usage}")
        stats = self.kv.info().stats
        if not stats:
            return []
        width = max(len(name) for name in stats)
        return [f"{name:<{width}}  {_stat_text(stats[name])}" for name in sorted(stats)]

    async def _workers(self, rest: str) -> list[str]:
        words = rest.split()
        if words and (len(words) != 2 or words[0] != "run"):
            raise BadRequest(f"usage: {COMMANDS['workers'].usage}")
        workers = self.handle.workers()
        if words:
            name = words[1]
            if name not in workers or self.handle.run_worker is None:
                raise BadRequest(f"no worker {name!r:.40}; `workers` lists them")
            await self.handle.run_worker(name)
            return [f"{name}  {printable(self.handle.workers()[name])}"]
        if not workers:
            return ["no background workers"]
        width = max(len(name) for name in workers)
        return [f"{name:<{width}}  {printable(status)}" for name, status in workers.items()]

    async def _help(self, rest: str) -> list[str]:
        if rest:
            name = ALIASES.get(rest.lower(), rest.lower())
            spec = COMMANDS.get(name)
            if spec is None:
                raise BadRequest(f"no command {rest!r:.40}; type help for the list")
            lines = [spec.usage, f"  {spec.summary}"]
            return lines + [f"  {spec.details}"] if spec.details else lines
        width = max(len(spec.usage) for spec in COMMANDS.values())
        lines = [f"{spec.usage:<{width}}  {spec.summary}" for spec in COMMANDS.values()]
        lines.append("Quote a bucket or key that holds spaces: get 'my bucket' key.")
        lines.append("help COMMAND explains one command.")
        return lines


def _stat_text(value: object) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return printable(", ".join(str(item) for item in value)) or "-"
    return printable(str(value))
