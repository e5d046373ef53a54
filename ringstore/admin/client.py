"""`ringstore attach`: find a node's admin socket, then run one command or an interactive console.

Interactive use has readline editing, history (RINGSTORE_HISTORY, default
~/.ringstore_history, mode 0600; empty disables it) and completion of command names. When
the node goes away the console says so in one line and stays; the next command reconnects,
so a node restarted meanwhile is attached again. `-c CMD` runs one command: its output on
stdout, an error on stderr, exit status 0 or 1.

This side is plain blocking sockets: one person, one command at a time, no event loop (and no
Trio to import: the console is up in a fraction of a second).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ringstore.admin import ADMIN_SOCKET_NAME
from ringstore.admin.protocol import (
    ALIASES,
    COMMAND_TIMEOUT_S,
    COMMANDS,
    MAX_REPLY_LINE_BYTES,
    Reply,
    ReplyParser,
    encode_command,
    parse_greeting,
    unix_address,
)
from ringstore.config import load_config
from ringstore.errors import AttachError, RingstoreError

HISTORY_ENV = "RINGSTORE_HISTORY"
DEFAULT_HISTORY = Path("~/.ringstore_history")
HISTORY_LENGTH = 1000  # lines kept across sessions: weeks of typing, a few tens of KiB
CLUSTER_ENV = "RINGSTORE_CLUSTER"  # a cluster.json written by cluster/harness.py
DEFAULT_CLUSTER_FILE = Path("cluster/run/cluster.json")  # relative to the repository root
CONNECT_TIMEOUT_S = 5.0  # connecting and the greeting: a live node answers at once
# The server answers every command within its own limit; this only catches a hung node.
REPLY_TIMEOUT_S = COMMAND_TIMEOUT_S + 10.0


class AdminClient:
    """One connection to a node's console; `run` (re)connects as needed."""

    def __init__(self, path: Path, *, reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.path = path
        self.reply_timeout_s = reply_timeout_s
        self.node: str | None = None
        self.version: str | None = None
        self._sock: socket.socket | None = None
        self._file = None

    def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(CONNECT_TIMEOUT_S, self.reply_timeout_s))
        try:
            with unix_address(self.path) as address:
                sock.connect(address)
        except FileNotFoundError:
            sock.close()
            raise AttachError(f"no admin socket at {self.path}: is the node running?") from None
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise AttachError(f"cannot connect to {self.path}: {reason.lower()}") from None
        self._sock, self._file = sock, sock.makefile("rb")
        try:
            self.node, self.version = parse_greeting(self._read_reply())
        except RingstoreError:
            self.close()
            raise
        sock.settimeout(self.reply_timeout_s)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def run(self, line: str) -> Reply:
        """Send one command line and return its reply; AttachError if the node is unreachable."""
        data = encode_command(line)
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise AttachError(f"lost the connection to {self.node}: {exc}") from None
        return self._read_reply()

    def _read_reply(self) -> Reply:
        assert self._file is not None
        parser = ReplyParser()
        while True:
            try:
                raw = self._file.readline(MAX_REPLY_LINE_BYTES + 1)
            except TimeoutError:
                self.close()
                raise AttachError(f"{self.node or self.path} did not answer in time") from None
            except OSError as exc:
                self.close()
                raise AttachError(f"lost the connection to {self.node}: {exc}") from None
            if not raw.endswith(b"\n"):
                self.close()
                if not raw:
                    raise AttachError(f"{self.node or 'the node'} closed the connection")
                raise AttachError("a reply line was cut off or too long")
            try:
                reply = parser.feed(raw[:-1].decode("utf-8"))
            except (UnicodeDecodeError, RingstoreError) as exc:
                self.close()
                raise AttachError(f"garbled reply from {self.node or self.path}: {exc}") from None
            if reply is not None:
                return reply


def find_socket(
    *,
    socket_path: str | None = None,
    config: str | None = None,
    node: str | None = None,
    cluster: str | None = None,
) -> Path:
    """The admin socket to attach to: given, from a node's config, or from a cluster.json."""
    if socket_path is not None:
        return Path(socket_path)
    if config is not None:
        return load_config(Path(config)).data_dir / ADMIN_SOCKET_NAME
    manifest = Path(cluster or os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER_FILE)
    try:
        nodes = json.loads(manifest.read_text())["nodes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AttachError(
            f"cannot read the cluster file {manifest} ({exc}); name the node with --socket "
            "or --config, or start the cluster (scripts/start_cluster.sh)"
        ) from None
    wanted = node or "1"
    for entry in nodes:
        if wanted in (str(entry.get("index")), entry.get("name")):
            return Path(entry["admin_socket"])
    known = ", ".join(f"{entry.get('index')} ({entry.get('name')})" for entry in nodes)
    raise AttachError(f"no node {wanted!r} in {manifest}; it has {known or 'no nodes'}")


def run_command(client: AdminClient, line: str, out: TextIO, err: TextIO) -> int:
    """`attach -c`: run one command; output to `out`, an error line to `err`; 0 or 1."""
    try:
        reply = client.run(line)
    except RingstoreError as exc:
        print(f"error: {exc}", file=err)
        return 1
    for text in reply.lines:
        print(text, file=out)
    if reply.error is not None:
        print(f"error: {reply.error}", file=err)
        return 1
    return 0


def _history_path() -> Path | None:
    value = os.environ.get(HISTORY_ENV)
    if value == "":
        return None
    return Path(value).expanduser() if value else DEFAULT_HISTORY.expanduser()


def _setup_readline(history: Path | None) -> Callable[[], None]:
    """Turn on line editing, history and completion; returns what saves the history."""
    try:
        import readline
    except ImportError:  # no readline on this Python: input() still works, unedited
        return lambda: None
    names = sorted([*COMMANDS, *ALIASES])

    def complete(text: str, state: int) -> str | None:
        if " " in readline.get_line_buffer().lstrip():
            return None  # only the command word is completed; names live on the node
        matches = [name + " " for name in names if name.startswith(text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    readline.set_history_length(HISTORY_LENGTH)
    if history is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass

    def save() -> None:
        if history is None:
            return
        try:
            readline.write_history_file(history)
            os.chmod(history, 0o600)  # typed values may be private
        except OSError as exc:
            print(f"(history not saved: {exc})", file=sys.stderr)

    return save


def interactive(client: AdminClient) -> int:
    """The console: read a line, run it, show the reply, until quit or end of input."""
    try:
        client.connect()
    except RingstoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_history = _setup_readline(_history_path())
    print(f"attached to {client.node} (ringstore {client.version}) at {client.path}")
    print("type help for the commands; quit or Ctrl-D leaves the node running")
    try:
        while True:
            try:
                line = input(f"{client.node}> ").strip()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                continue
            word = line.split(maxsplit=1)[0].lower() if line else ""
            command = ALIASES.get(word, word)
            if command == "quit":
                return 0
            try:
                if line and _show(client, line) and command == "stop":
                    print("detached: the node is shutting down")
                    return 0
            except KeyboardInterrupt:
                client.close()  # the reply may still come; a new connection starts clean
                print("\ninterrupted (the command may still complete on the node)")
    finally:
        client.close()
        save_history()


def _show(client: AdminClient, line: str) -> bool:
    """Run one typed line and print its reply; whether it succeeded."""
    try:
        reply = client.run(line)
    except RingstoreError as exc:
        print(f"error: {exc}")
        return False
    for text in reply.lines:
        print(text)
    if reply.error is not None:
        print(f"error: {reply.error}")
    return reply.ok


def attach(path: Path, command: str | None = None) -> int:
    """Run `command` on the node at `path` (or the interactive console); the exit status."""
    client = AdminClient(path)
    if command is None:
        return interactive(client)
    try:
        return run_command(client, command, sys.stdout, sys.stderr)
    finally:
        client.close()
