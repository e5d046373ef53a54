"""The admin console server: a unix socket (mode 0600) serving command sessions until cancelled.

Start it with `path = await nursery.start(serve_admin, handle, socket_path)`. The socket is
made 0600 before it listens, so only the node's owner can ever connect: the file mode is
the whole access control, as for any local admin socket. A socket file left by a node that
was killed is replaced; one that another live process answers on is not. On the way out
the server removes its socket file (only if it is still the one it made).

Each session is a task: greeting, then command line -> reply until the client leaves. A
session is bounded in what it buffers (protocol.MAX_COMMAND_BYTES), in how long a reply may
wait for a client that stopped reading, and in number (MAX_SESSIONS).
"""

from __future__ import annotations

import errno
import logging
import os
import socket as stdlib_socket
import stat
from pathlib import Path

import trio

from ringstore.admin.commands import Action, AdminHandle, Console
from ringstore.admin.protocol import MAX_COMMAND_BYTES, Reply, encode_reply, greeting, unix_address
from ringstore.errors import LocalError

log = logging.getLogger(__name__)

# Operators attach by hand: a few at once is plenty, more means something is looping.
MAX_SESSIONS = 16
BACKLOG = 16
# A client that stops reading its reply for this long is gone; its session ends.
SEND_TIMEOUT_S = 30.0
RECEIVE_BYTES = 4096  # one read from a client: a typed command is far smaller


class LineTooLong(Exception):
    """A command line over the limit: the session answers with an error and ends."""


class _LineReader:
    """Splits a stream into lines, buffering at most `max_bytes` of one incomplete line."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_bytes: int) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline (and a trailing CR); None at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end > self._max_bytes or (end < 0 and len(self._buffer) > self._max_bytes):
                raise LineTooLong
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.removesuffix(b"\r")
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                return None
            self._buffer += data


class AdminServer:
    """Sessions of one node's console; `serve_admin` below runs one on a socket."""

    def __init__(self, handle: AdminHandle) -> None:
        self.handle = handle
        self.node = handle.kv.info().name
        self.sessions = 0
        self._started_at = trio.current_time()
        self._next_session = 1

    async def session(self, stream: trio.abc.Stream) -> None:
        number, self._next_session = self._next_session, self._next_session + 1
        async with stream:
            if self.sessions >= MAX_SESSIONS:
                log.warning("%s: admin session refused: %d already open", self.node, self.sessions)
                await self._send(stream, Reply(error=f"too many admin sessions ({MAX_SESSIONS})"))
                return
            self.sessions += 1
            log.info("%s: admin session %d opened", self.node, number)
            try:
                await self._converse(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                log.info("%s: admin session %d: client went away", self.node, number)
            finally:
                self.sessions -= 1
                log.info("%s: admin session %d closed", self.node, number)

    async def _converse(self, stream: trio.abc.Stream) -> None:
        console = Console(self.handle, self._started_at)
        await self._send(stream, greeting(self.node, self.handle.kv.info().version))
        reader = _LineReader(stream, MAX_COMMAND_BYTES)
        while True:
            try:
                raw = await reader.readline()
            except LineTooLong:
                await self._send(stream, Reply(error=f"command over {MAX_COMMAND_BYTES} bytes"))
                return
            if raw is None:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                await self._send(stream, Reply(error="a command must be UTF-8 text"))
                continue
            outcome = await console.execute(line)
            await self._send(stream, outcome.reply)
            if outcome.action is Action.STOP:
                self.handle.stop()
                return
            if outcome.action is Action.CLOSE:
                return

    @staticmethod
    async def _send(stream: trio.abc.SendStream, reply: Reply) -> None:
        with trio.fail_after(SEND_TIMEOUT_S):
            await stream.send_all(encode_reply(reply))


def _claim_path(path: Path) -> None:
    """Make room for our socket at `path`: remove a dead node's socket, refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LocalError(f"{path} exists and is not a socket: not replacing it")
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            probe.connect(address)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise LocalError(f"cannot check the old admin socket {path}: {exc}") from None
    else:
        raise LocalError(f"another process is serving the admin socket {path}")
    finally:
        probe.close()
    path.unlink(missing_ok=True)


async def _listen(path: Path) -> trio.socket.SocketType:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create the directory of the admin socket {path}: {exc}") from None
    _claim_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            await sock.bind(address)
        # Before listen(): until then every connect is refused, so no one ever gets in
        # through a wider mode the umask may have given the new file.
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise LocalError(f"cannot listen on the admin socket {path}: {exc}") from None
    return sock


def _remove_socket(path: Path, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


async def serve_admin(
    handle: AdminHandle,
    path: Path,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console of `handle`'s node on the unix socket `path` until cancelled."""
    server = AdminServer(handle)
    sock = await _listen(path)
    inode = os.lstat(path).st_ino
    try:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, server.session, [listener])
            log.info("%s: admin console on %s", server.node, path)
            task_status.started(path)
    finally:
        sock.close()
        _remove_socket(path, inode)
