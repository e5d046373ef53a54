"""The admin console on a real node (one Trio run, LMDB in a tmp dir): every command through the
socket, the errors, the session limits and the socket file's life."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import pytest
import trio

from ringstore.admin import ADMIN_SOCKET_NAME
from ringstore.admin.client import AdminClient, run_command
from ringstore.admin.commands import LIST_MAX_NAMES, SHOW_VALUE_MAX_BYTES, AdminHandle, Console
from ringstore.admin.protocol import (
    MAX_COMMAND_BYTES,
    Reply,
    ReplyParser,
    parse_greeting,
    unix_address,
)
from ringstore.admin.server import MAX_SESSIONS, serve_admin
from ringstore.config import NodeConfig, StorageConfig
from ringstore.coord.api import NodeInfo, WriteMeta
from ringstore.core.ring import Ring
from ringstore.errors import AttachError, LocalError, QuorumError
from ringstore.node import Node

SECRET = b"admin-console-test-secret"
BUCKET = b"b"
TIMEOUT_S = 20.0  # any single step here takes milliseconds; this only bounds a hang


class Session:
    """A raw protocol client on trio, sharing no code with the real client but the parser."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, path) -> Session:
        with unix_address(path) as address:
            stream = await trio.open_unix_socket(address)
        return cls(stream)

    async def line(self) -> str | None:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        end = self.buffer.index(b"\n")
        raw = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return raw.decode("utf-8")

    async def reply(self) -> Reply:
        parser = ReplyParser()
        with trio.fail_after(TIMEOUT_S):
            while True:
                line = await self.line()
                assert line is not None, "the server closed the session mid-reply"
                reply = parser.feed(line)
                if reply is not None:
                    return reply

    async def run(self, command: str | bytes) -> Reply:
        data = command if isinstance(command, bytes) else command.encode("utf-8")
        await self.stream.send_all(data + b"\n")
        return await self.reply()

    async def closed_by_server(self) -> bool:
        with trio.fail_after(TIMEOUT_S):
            return await self.line() is None


def ok(reply: Reply) -> tuple[str, ...]:
    assert reply.error is None, reply.error
    return reply.lines


@pytest.fixture
async def node(nursery, tmp_path):
    config = NodeConfig(
        name="solo",
        data_dir=tmp_path / "solo",
        http_port=0,
        peer_port=0,
        ring_size=8,
        n_val=1,
        storage=StorageConfig(inline_max=1024, chunk_size=4096),
    )
    node = Node(config, secret=SECRET)
    await nursery.start(node.run)
    # One node: replicate the test bucket once, so the default quorums are 1.
    await node.coordinator.set_props(BUCKET, {"n_val": 1})
    yield node
    node.stop()


@pytest.fixture
async def session(node):
    session = await Session.open(node.admin_socket)
    assert parse_greeting(await session.reply())[0] == "solo"
    yield session
    await session.stream.aclose()


async def test_socket_is_in_the_data_dir_and_only_the_owner_may_connect(node):
    path = node.config.data_dir / ADMIN_SOCKET_NAME
    assert node.admin_socket == path
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_objects_round_trip_through_the_console(session):
    assert ok(await session.run("put b k hello   world")) == ("stored b/k (13 bytes)",)
    assert ok(await session.run("get b k")) == ("hello   world",)
    assert ok(await session.run("put b k 'replaced'")) == ("stored b/k (8 bytes)",)
    assert ok(await session.run("get b k")) == ("replaced",), "put must replace, not add"
    assert ok(await session.run("put b 'two words' ''"))[0] == "stored b/'two words' (0 bytes)"
    assert ok(await session.run("get b 'two words'")) == ()
    assert ok(await session.run("keys b")) == ("k", "'two words'")
    assert ok(await session.run("buckets")) == ("b",)
    assert ok(await session.run("get b k r=1 notfound_ok=false")) == ("replaced",)
    assert ok(await session.run("delete b k")) == ("deleted b/k",)
    reply = await session.run("get b k")
    assert reply.error == "not found: b/k (deleted)"
    assert (await session.run("delete b nothing")).error == "not found: b/nothing"
    assert (await session.run("get b nothing")).error == "not found: b/nothing"
    assert ok(await session.run("GET b 'two words'")) == (), "command words ignore case"


async def test_siblings_binary_and_large_values_are_described(node, session):
    kv = node.coordinator
    for text in (b"first", b"second"):
        await kv.put(BUCKET, b"s", WriteMeta("text/plain"), _body(text), None, {})
    lines = ok(await session.run("get b s"))
    assert lines[0] == "b/s has 2 siblings; a put replaces them all"
    assert sorted(lines[2::2]) == ["first", "second"]
    assert all(line.startswith("--- sibling") for line in lines[1::2])
    ok(await session.run("put b s merged"))
    assert ok(await session.run("get b s")) == ("merged",)

    await kv.put(BUCKET, b"bin", WriteMeta("application/octet-stream"), _body(b"\0\1"), None, {})
    binary = "(2 bytes of application/octet-stream: binary, not shown)"
    assert ok(await session.run("get b bin")) == (binary,)
    big = b"x" * (SHOW_VALUE_MAX_BYTES + 1)
    await kv.put(BUCKET, b"big", WriteMeta("text/plain"), _body(big), None, {})
    assert ok(await session.run("get b big")) == (
        f"({len(big)} bytes of text/plain: too large to show here)",
    )
    await kv.put(BUCKET, b"esc", WriteMeta("text/plain"), _body(b"a\x1b[2Jb\nline 2\n"), None, {})
    assert ok(await session.run("get b esc")) == ("a\\x1b[2Jb", "line 2")


async def test_cluster_views_ring_members_status_stats(node, session):
    ring = ok(await session.run("ring"))
    assert ring[0] == "ring version 1: 8 partitions, 1 owners"
    assert ring[2:10] == tuple(f"{p:>9}  solo" for p in range(8))
    assert ring[-1].split() == ["solo", "8", "100.0%", "up"]
    members = ok(await session.run("members"))
    assert members[1].split() == ["solo", "up", "8", "(this", "node)"]
    assert members[-1] == "1 up, 0 down"
    status = dict(line.split(None, 1) for line in ok(await session.run("status")))
    assert status["node"] == "solo"
    assert status["pid"] == str(os.getpid())
    assert status["data_dir"] == str(node.config.data_dir)
    assert status["members"] == "1 up, 0 down"
    assert status["peer"].startswith("127.0.0.1:")
    assert "uptime" in status
    stats = dict(line.split(None, 1) for line in ok(await session.run("stats")))
    assert stats["nodename"] == "solo"
    help_lines = ok(await session.run("help"))
    for command in ("get", "put", "delete", "buckets", "keys", "ring", "members", "stop", "quit"):
        assert any(line.startswith(command) for line in help_lines), command
    assert ok(await session.run("help get"))[0].startswith("get BUCKET KEY")
    assert ok(await session.run("")) == ()


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("frobnicate", "unknown command 'frobnicate'; type help for the list"),
        ("get b", "usage: get BUCKET KEY [OPTION=VALUE ...]"),
        ("get b 'k", "No closing quotation"),
        ("get '' k", "bucket and key must not be empty"),
        ("get b k r=banana", "r"),
        ("get b k w=2", "unexpected 'w=2'"),
        ("get b k r=1 r=1", "option r given twice"),
        ("put b k", "usage: put BUCKET KEY VALUE"),
        ("delete b", "usage: delete BUCKET KEY"),
        ("keys", "usage: keys BUCKET"),
        ("ring now", "usage: ring"),
        ("stop please", "usage: stop"),
        ("help frob", "no command 'frob'"),
    ],
)
async def test_bad_commands_get_one_error_line_and_change_nothing(session, command, error):
    ok(await session.run("put b kept value"))
    reply = await session.run(command)
    assert reply.error is not None and error in reply.error
    assert reply.lines == ()
    assert ok(await session.run("keys b")) == ("kept",)
    assert ok(await session.run("get b kept")) == ("value",)


async def test_garbage_lines_do_not_end_the_session_but_an_overlong_one_does(node, session):
    assert (await session.run(b"get b \xff")).error == "a command must be UTF-8 text"
    assert ok(await session.run("put b k fine")) == ("stored b/k (4 bytes)",)
    await session.stream.send_all(b"put b k " + b"x" * MAX_COMMAND_BYTES + b"\n")
    assert (await session.reply()).error == f"command over {MAX_COMMAND_BYTES} bytes"
    assert await session.closed_by_server()
    other = await Session.open(node.admin_socket)
    await other.reply()
    assert ok(await other.run("get b k")) == ("fine",)
    await other.stream.aclose()


async def test_quit_leaves_the_node_running_and_stop_stops_it(node, session):
    assert ok(await session.run("quit")) == ("bye",)
    assert await session.closed_by_server()
    again = await Session.open(node.admin_socket)
    await again.reply()
    assert ok(await again.run("stop")) == ("solo is stopping",)
    assert await again.closed_by_server()
    with trio.fail_after(TIMEOUT_S):
        while node.admin_socket.exists():  # noqa: ASYNC110 -- the socket file is the signal
            await trio.sleep(0.01)
    with pytest.raises(OSError):
        await Session.open(node.admin_socket)


async def test_sessions_are_bounded(node):
    sessions = [await Session.open(node.admin_socket) for _ in range(MAX_SESSIONS)]
    for each in sessions:
        await each.reply()
    refused = await Session.open(node.admin_socket)
    assert (await refused.reply()).error == f"too many admin sessions ({MAX_SESSIONS})"
    assert await refused.closed_by_server()
    await sessions[0].stream.aclose()
    with trio.fail_after(TIMEOUT_S):
        while True:
            late = await Session.open(node.admin_socket)
            greeting = await late.reply()
            await late.stream.aclose()
            if greeting.ok:
                break
            await trio.sleep(0.01)
    for each in sessions[1:]:
        await each.stream.aclose()


# -- the socket file ---------------------------------------------------------------------------


@dataclass
class FakeKV:
    """Just enough of a KV for the server; `get` raises whatever a test sets."""

    error: BaseException | None = None

    def info(self) -> NodeInfo:
        return NodeInfo("fake", "9.9")

    async def get(self, bucket: bytes, key: bytes, query: Mapping[str, str]):
        assert self.error is not None
        raise self.error


def fake_handle(kv: FakeKV | None = None, stops: list | None = None) -> AdminHandle:
    return AdminHandle(
        kv=kv or FakeKV(),
        ring=lambda: Ring.initial(["fake"], 8, 1),
        members=lambda: {"fake": True},
        stop=lambda: (stops if stops is not None else []).append(1),
    )


async def test_a_dead_nodes_socket_is_replaced_and_removed_on_exit(nursery, tmp_path):
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a file with no listener: what kill -9 leaves behind
    scope = trio.CancelScope()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await serve_admin(fake_handle(), path, task_status=task_status)

    assert await nursery.start(serve) == path
    session = await Session.open(path)
    assert parse_greeting(await session.reply()) == ("fake", "9.9")
    with pytest.raises(LocalError, match="another process is serving"):
        await serve_admin(fake_handle(), path)
    await session.stream.aclose()
    scope.cancel()
    with trio.fail_after(TIMEOUT_S):
        while path.exists():  # noqa: ASYNC110 -- waiting for the server task to unwind
            await trio.sleep(0.01)


async def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path):
    path = tmp_path / "admin.sock"
    path.write_text("precious")
    with pytest.raises(LocalError, match="not a socket"):
        await serve_admin(fake_handle(), path)
    assert path.read_text() == "precious"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RuntimeError("bug"), "internal error (RuntimeError: bug); see node log"),
        (
            ExceptionGroup("x", [QuorumError("r", 1, 2), QuorumError("r", 1, 2)]),
            "r quorum not met: got 1, needed 2",
        ),
        (ExceptionGroup("x", [QuorumError("r", 1, 2), KeyError("k")]), "internal error"),
    ],
)
async def test_unexpected_failures_become_one_line_and_the_console_goes_on(error, shown):
    kv = FakeKV(error)
    console = Console(fake_handle(kv), trio.current_time())
    outcome = await console.execute("get b k")
    assert outcome.reply.error is not None and outcome.reply.error.startswith(shown)
    assert (await console.execute("members")).reply.ok


async def test_listings_stop_at_the_limit():
    async def batches() -> AsyncIterator[list[bytes]]:
        for start in range(0, LIST_MAX_NAMES * 2, 1000):
            yield [b"k%06d" % i for i in range(start, start + 1000)]

    kv = FakeKV()
    kv.list_keys = lambda bucket: batches()  # type: ignore[attr-defined]
    console = Console(fake_handle(kv), trio.current_time())
    lines = (await console.execute("keys b")).reply.lines
    assert len(lines) == LIST_MAX_NAMES + 1
    assert lines[-1].startswith(f"(stopped after {LIST_MAX_NAMES} keys")


# -- the blocking client -----------------------------------------------------------------------


async def test_client_runs_commands_and_reports_a_lost_node(node, tmp_path):
    client = AdminClient(node.admin_socket)
    out, err = tmp_path / "out", tmp_path / "err"

    def script() -> list[int]:
        with open(out, "w") as stdout, open(err, "w") as stderr:
            return [
                run_command(client, "put b k v", stdout, stderr),
                run_command(client, "get b k", stdout, stderr),
                run_command(client, "get b missing", stdout, stderr),
            ]

    assert await trio.to_thread.run_sync(script) == [0, 0, 1]
    assert out.read_text() == "stored b/k (1 bytes)\nv\n"
    assert err.read_text() == "error: not found: b/missing\n"
    assert client.node == "solo"
    node.stop()
    with trio.fail_after(TIMEOUT_S):
        while node.admin_socket.exists():  # noqa: ASYNC110 -- the node's shutdown is elsewhere
            await trio.sleep(0.01)
    with pytest.raises(AttachError, match="closed the connection|lost the connection"):
        await trio.to_thread.run_sync(client.run, "members")
    with pytest.raises(AttachError, match="no admin socket"):
        await trio.to_thread.run_sync(client.run, "members")
    client.close()


async def test_client_refuses_a_socket_that_is_not_an_admin_console(nursery, tmp_path):
    path = tmp_path / "other.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen(1)

    async def impostor() -> None:
        conn, _ = await listener.accept()
        await conn.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    nursery.start_soon(impostor)
    client = AdminClient(path)
    with pytest.raises(AttachError, match="garbled reply"):
        await trio.to_thread.run_sync(client.connect)
    assert not client.connected
    listener.close()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_workers_are_listed_and_one_round_runs_on_demand(node, session):
    listed = dict(line.split(None, 1) for line in ok(await session.run("workers")))
    assert set(listed) == {"sweeper", "scrubber"}
    assert listed["sweeper"].startswith("0 rounds")
    assert ok(await session.run("workers run sweeper")) == (
        "sweeper  1 rounds, 0 orphan chunks removed",
    )
    for bad in ("workers run", "workers run nobody", "workers sweep now"):
        reply = await session.run(bad)
        assert reply.error is not None and not reply.lines
