"""The admin console's line protocol and command vocabulary, shared by server and client.

A session is a greeting, then one reply per command line::

    server: | ringstore-admin/1 node1 0.1.0      the greeting: protocol, node name, version
            ok
    client: get photos cat                       one command per line, UTF-8
    server: | meow                               zero or more output lines, each "| " + text
            ok                                   then exactly one status line:
    client: get photos dog                       "ok", or "error: " + one line
    server: error: not found: photos/dog

Output lines never contain a newline (text is split into lines before it is sent), so a
reply ends at the first line that does not start with "| ". Both sides bound what they
buffer: a command line by MAX_COMMAND_BYTES, a reply line by MAX_REPLY_LINE_BYTES. Humans
can speak it too: `socat - UNIX-CONNECT:data/admin.sock`. The commands themselves (COMMANDS)
are listed here so the client can complete and explain them without importing the server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ringstore.errors import BadRequest, ProtocolError

PROTOCOL = "ringstore-admin/1"
# A typed command, a put value included; a line this long is not typing, and the bound keeps
# a misbehaving client from making the node buffer without limit.
MAX_COMMAND_BYTES = 64 * 1024
# The client's bound on one reply line: a command's output is split into lines first, and a
# shown value is at most a few tens of KiB (commands.SHOW_VALUE_MAX_BYTES).
MAX_REPLY_LINE_BYTES = 1024 * 1024
OUTPUT_PREFIX = "| "
OK_LINE = "ok"
ERROR_PREFIX = "error: "
# sockaddr_un holds 108 bytes including the NUL; longer paths are reached through a
# directory file descriptor (/proc/self/fd/N/NAME) instead.
MAX_UNIX_PATH_BYTES = 107
# Longer than the coordinator's own request timeout (Riak's 60 s), so its error, which names
# the quorum, arrives first; this only catches a command that hangs for another reason.
COMMAND_TIMEOUT_S = 65.0
GET_OPTIONS = frozenset({"r", "pr", "notfound_ok", "basic_quorum", "timeout"})
DELETE_OPTIONS = frozenset({"rw", "r", "w", "pr", "pw", "dw", "timeout"})


@dataclass(frozen=True, slots=True)
class Reply:
    """One command's answer: output lines, and an error message when the command failed."""

    lines: tuple[str, ...] = ()
    error: str | None = None

    def __post_init__(self) -> None:
        if any("\n" in line or "\r" in line for line in self.lines):
            raise ValueError("a reply line cannot contain a line break")
        if self.error is not None and ("\n" in self.error or "\r" in self.error):
            raise ValueError("an error message is one line")

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class CommandSpec:
    usage: str
    summary: str
    details: str = ""


COMMANDS: dict[str, CommandSpec] = {
    "get": CommandSpec(
        "get BUCKET KEY [OPTION=VALUE ...]",
        "print a value; siblings are printed one after another",
        "options (as Riak's query parameters): " + ", ".join(sorted(GET_OPTIONS)),
    ),
    "put": CommandSpec(
        "put BUCKET KEY VALUE",
        "store the rest of the line as text/plain, replacing the current value",
        "one quoted word loses its quotes: put b k 'two  spaces' stores: two  spaces",
    ),
    "delete": CommandSpec(
        "delete BUCKET KEY [OPTION=VALUE ...]",
        "delete a key",
        "options (as Riak's query parameters): " + ", ".join(sorted(DELETE_OPTIONS)),
    ),
    "buckets": CommandSpec("buckets", "list the buckets that hold keys"),
    "keys": CommandSpec("keys BUCKET", "list the keys of a bucket"),
    "ring": CommandSpec("ring", "ownership: each partition's owner, then partitions per node"),
    "members": CommandSpec("members", "the cluster's nodes, up or down as this node sees them"),
    "status": CommandSpec("status", "this node: version, addresses, ring, members, uptime"),
    "stats": CommandSpec("stats", "this node's counters, as GET /stats shows them"),
    "workers": CommandSpec(
        "workers [run NAME]",
        "the background workers and their status; `run NAME` does one round now",
    ),
    "stop": CommandSpec("stop", "shut this node down cleanly; the other nodes keep serving"),
    "help": CommandSpec("help [COMMAND]", "list the commands, or explain one"),
    "quit": CommandSpec("quit", "leave the console; the node keeps running"),
}
ALIASES = {"exit": "quit", "?": "help", "del": "delete"}


def one_line(text: str) -> str:
    """`text` with its line breaks folded into spaces (error messages are one line)."""
    return " ".join(text.split()) if ("\n" in text or "\r" in text) else text


def encode_reply(reply: Reply) -> bytes:
    out = [OUTPUT_PREFIX + line + "\n" for line in reply.lines]
    out.append(OK_LINE + "\n" if reply.error is None else ERROR_PREFIX + reply.error + "\n")
    return "".join(out).encode("utf-8")


def encode_command(line: str) -> bytes:
    """A command line as the client sends it; raises BadRequest if it cannot be sent."""
    if "\n" in line or "\r" in line:
        raise BadRequest("a command is one line")
    data = line.encode("utf-8") + b"\n"
    if len(data) > MAX_COMMAND_BYTES:
        raise BadRequest(f"command longer than {MAX_COMMAND_BYTES} bytes")
    return data


def greeting(node: str, version: str) -> Reply:
    return Reply((f"{PROTOCOL} {node} {version}",))


def parse_greeting(reply: Reply) -> tuple[str, str]:
    """(node name, version) from a greeting; ProtocolError if the peer is no admin console."""
    if reply.error is not None:
        raise ProtocolError(f"the node refused the session: {reply.error}")
    words = reply.lines[0].split(" ") if len(reply.lines) == 1 else []
    if len(words) != 3 or words[0] != PROTOCOL:
        raise ProtocolError(f"not a ringstore admin console (expected {PROTOCOL})")
    return words[1], words[2]


class ReplyParser:
    """Collects the lines of one reply; `feed` returns the Reply once its status line arrived."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def feed(self, line: str) -> Reply | None:
        if line.startswith(OUTPUT_PREFIX):
            self._lines.append(line[len(OUTPUT_PREFIX) :])
            return None
        lines, self._lines = tuple(self._lines), []
        if line == OK_LINE:
            return Reply(lines)
        if line.startswith(ERROR_PREFIX):
            return Reply(lines, line[len(ERROR_PREFIX) :])
        raise ProtocolError(f"unexpected line from the admin console: {line[:80]!r}")


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect that names `path`, however long its directory is.

    Short paths are used as they are. A longer one (pytest's tmp dirs, deep data roots) is
    reached through an open descriptor of its directory, which Linux resolves like the path.
    """
    text = os.fspath(path)
    if len(os.fsencode(text)) <= MAX_UNIX_PATH_BYTES:
        yield text
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{directory}/{path.name}"
        if len(os.fsencode(short)) > MAX_UNIX_PATH_BYTES or not os.path.isdir("/proc/self/fd"):
            raise BadRequest(f"admin socket path too long for this system: {text}")
        yield short
    finally:
        os.close(directory)
