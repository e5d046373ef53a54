"""The reference ceiling: the smallest Trio + h11 server that speaks the load generator's Riak
subset, so a benchmark can say what the Python HTTP layer alone does on the machine at hand.

GET of /buckets/B/keys/K answers 200 with one fixed value of `--value-size` bytes, from memory,
or with `--dir` read from a file on disk for every request (the "GET-from-file" reference,
read a chunk at a time in a worker thread as a node reads its chunk files). PUT, POST and
DELETE read the whole body, drop it and answer 204. GET /ping answers OK; anything else 404.
Nothing is stored, replicated, hashed or logged: whatever the cluster does beyond this costs
its ratio to the ceiling.

    python -m bench.ceiling --port 8200 [--value-size 1MiB] [--dir /tmp/ceiling]

prints `ceiling listening on http://HOST:PORT` once it accepts connections (with `--port 0`,
the port the system chose).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import h11
import trio

from bench.workload import MAX_VALUE_BYTES, format_size, parse_size
from ringstore.errors import BadRequest
from ringstore.http.connection import BODY_RECEIVE_BYTES, RECEIVE_BYTES

COALESCE_BODY_BYTES = 64 * 1024  # a body this small goes out in one write with its head
FILE_PIECE_BYTES = 1024 * 1024  # the node's chunk size: one thread call per chunk read
MAX_HEADER_BYTES = 64 * 1024  # the node's bound on a request head
VALUE_FILE_NAME = "ceiling-value.bin"
VALUE_SEED = 6  # the value's bytes do not matter; a seed keeps runs alike
KEY_PATH_PARTS = 5  # "", "buckets", B, "keys", K


class ValueStore:
    """The one value every GET answers with, held in memory or read from a file each time."""

    def __init__(self, size: int, directory: Path | None = None) -> None:
        if not 0 <= size <= MAX_VALUE_BYTES:
            raise BadRequest(f"the ceiling's value size must be from 0 to {MAX_VALUE_BYTES}")
        if directory is not None and not directory.is_dir():
            raise BadRequest(f"--dir {directory} is not a directory")
        self.size = size
        self.value = random.Random(VALUE_SEED).randbytes(size)
        self.path = None if directory is None else directory / VALUE_FILE_NAME
        if self.path is not None:
            self.path.write_bytes(self.value)
            self.value = b""

    def remove_file(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def describe(self) -> str:
        where = f"file {self.path}" if self.path is not None else "memory"
        return f"{format_size(self.size)} from {where}"


def _is_key_path(target: bytes) -> bool:
    parts = target.split(b"?", 1)[0].split(b"/")
    return len(parts) == KEY_PATH_PARTS and parts[1] == b"buckets" and parts[3] == b"keys"


class _Connection:
    """One client connection: h11 for the protocol, this for the I/O."""

    def __init__(self, stream: trio.abc.Stream, values: ValueStore) -> None:
        self.stream = stream
        self.values = values
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            # Read as the node's HTTP server does: heads in small reads, bodies in large ones.
            size = BODY_RECEIVE_BYTES if self.conn.their_state is h11.SEND_BODY else RECEIVE_BYTES
            self.conn.receive_data(await self.stream.receive_some(size))

    async def respond(self, status: int, body: bytes = b"", length: int | None = None) -> None:
        """Send the head and `body` (the whole body, or its start if `length` says more); a
        whole small response goes out in one write, as the node's server sends it."""
        headers = [("Content-Type", "application/octet-stream")] if status == 200 else []
        if status != 204:
            headers.append(("Content-Length", str(len(body) if length is None else length)))
        head = self.conn.send(h11.Response(status_code=status, headers=headers))
        if length is None and len(body) <= COALESCE_BODY_BYTES:
            data = self.conn.send(h11.Data(data=body)) if body else b""
            await self.stream.send_all(head + data + self.conn.send(h11.EndOfMessage()))
            return
        await self.stream.send_all(head)
        for piece in self.conn.send_with_data_passthrough(h11.Data(data=body)) or ():
            await self.stream.send_all(piece)

    async def serve(self) -> None:
        while True:
            event = await self.next_event()
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            while True:  # a PUT body: read and dropped, as the HTTP layer must at least do
                body_event = await self.next_event()
                if isinstance(body_event, h11.EndOfMessage):
                    break
                if isinstance(body_event, h11.ConnectionClosed):
                    return
            if event.method == b"GET" and event.target == b"/ping":
                await self.respond(200, b"OK")
            elif event.method == b"GET" and _is_key_path(event.target):
                await self.send_value()
            elif event.method in (b"PUT", b"POST", b"DELETE"):
                await self.respond(204)
            else:  # HEAD included: the generator never sends it, and its answer has no body
                await self.respond(404, b"" if event.method == b"HEAD" else b"not found\n")
            if self.conn.our_state is h11.SEND_BODY:
                await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def send_value(self) -> None:
        if self.values.path is None:
            await self.respond(200, self.values.value)
            return
        await self.respond(200, length=self.values.size)
        fd = await trio.to_thread.run_sync(os.open, self.values.path, os.O_RDONLY)
        try:
            offset = 0
            while offset < self.values.size:
                piece = await trio.to_thread.run_sync(os.pread, fd, FILE_PIECE_BYTES, offset)
                if not piece:
                    raise trio.BrokenResourceError("the value file shrank")
                offset += len(piece)
                for data in self.conn.send_with_data_passthrough(h11.Data(data=piece)):
                    await self.stream.send_all(data)
        finally:
            os.close(fd)


async def handle_stream(stream: trio.abc.Stream, values: ValueStore) -> None:
    """Serve one connection until the client closes it or breaks the protocol."""
    connection = _Connection(stream, values)
    try:
        await connection.serve()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the ceiling answers well-formed load; anything else just loses its connection
    finally:
        await trio.aclose_forcefully(stream)


async def serve_ceiling(
    values: ValueStore,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started` gets the port listened on."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = int(listeners[0].socket.getsockname()[1])

    async def handler(stream: trio.SocketStream) -> None:
        await handle_stream(stream, values)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound_port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ceiling",
        description="The reference ceiling server for the load generator.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: let the system choose")
    parser.add_argument("--value-size", default="4KiB", help="bytes every GET answers")
    parser.add_argument("--dir", type=Path, help="serve GETs from a file written here")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    try:
        values = ValueStore(parse_size(args.value_size), args.dir)
    except BadRequest as exc:
        parser.error(str(exc))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_ceiling, values, host=args.host, port=args.port)
            )
            print(f"ceiling serving {values.describe()}", file=sys.stderr, flush=True)
            print(f"ceiling listening on http://{args.host}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"ceiling: {exc}", file=sys.stderr)
        return 1
    finally:
        values.remove_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
