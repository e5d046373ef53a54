"""Drive bounded HTTP load at ringstore nodes (or the ceiling server) and report what it saw.

In the spirit of basho_bench: `concurrency` workers, each with one persistent keep-alive
HTTP/1.1 connection (h11 over Trio) to one target (workers are dealt round-robin over the
targets), run operations drawn from a seeded mix (`bench.workload`) until the duration or the
operation count runs out. Riak's URLs: PUT/GET/DELETE /buckets/B/keys/K with values as
application/octet-stream. The report (`bench.report`) is printed as a summary and written as
JSON; `main` is the command line of `python -m bench` and `ringstore bench`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio

from bench.report import Recorder, format_summary, plot_available, write_plot
from bench.workload import (
    DEFAULT_TIMEOUT_S,
    KEY_DISTRIBUTIONS,
    OPERATIONS,
    QUORUM_OPTIONS,
    KeyPicker,
    LoadConfig,
    Target,
    ValueSize,
    ValueSource,
    parse_mix,
    show,
)
from ringstore.errors import BadRequest, PeerTimeout, PeerUnavailable, RingstoreError

RECEIVE_BYTES = 256 * 1024  # large reads keep the generator's own CPU cost per MiB low
COALESCE_BODY_BYTES = 64 * 1024  # a body this small goes out in one write with its head
CONNECT_BACKOFF_MIN_S = 0.01  # a refused connection is retried, not hammered ...
CONNECT_BACKOFF_MAX_S = 1.0  # ... and a target that comes back is found within a second
# Answers that are a successful operation: a GET of a missing key and a DELETE of one are
# what the workload asked for; 300 is a GET (or returnbody PUT) finding siblings.
OK_STATUSES = {
    "get": frozenset({200, 300, 404}),
    "put": frozenset({200, 201, 204, 300}),
    "delete": frozenset({204, 404}),
}
VALUE_CONTENT_TYPE = "application/octet-stream"
USER_AGENT = "ringstore-bench/1"
REPORT_FORMAT = 1  # bumped when a report field changes meaning


class OperationFailed(Exception):
    """One operation failed; `kind` groups it in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        super().__init__(detail)


class HttpClient:
    """One keep-alive HTTP/1.1 connection to one target, opened again after a failure."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._stream: trio.SocketStream | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def connect(self) -> None:
        if self._stream is not None:
            return
        try:
            self._stream = await trio.open_tcp_stream(self.target.host, self.target.port)
        except OSError as exc:
            raise OperationFailed("connect", f"{self.target.url}: {exc}") from None
        self._conn = h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | memoryview | None = None,
        content_type: str = VALUE_CONTENT_TYPE,
    ) -> tuple[int, int]:
        """(status, response body bytes); OperationFailed if no whole answer came.

        The body is read and dropped as it arrives: the generator never holds a value.
        """
        await self.connect()
        try:
            return await self._exchange(method, path, body, content_type)
        except BaseException:
            await self.aclose()
            raise

    async def _exchange(
        self, method: str, path: str, body: bytes | memoryview | None, content_type: str
    ) -> tuple[int, int]:
        assert self._stream is not None
        stream, conn = self._stream, self._conn
        headers = [("Host", self.target.host_header), ("User-Agent", USER_AGENT)]
        if body is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        try:
            head = conn.send(h11.Request(method=method, target=path, headers=headers))
            if body is None:
                await stream.send_all(head + conn.send(h11.EndOfMessage()))
            elif len(body) <= COALESCE_BODY_BYTES:
                data = conn.send(h11.Data(data=body))
                await stream.send_all(b"".join([head, data, conn.send(h11.EndOfMessage())]))
            else:
                await stream.send_all(head)
                for piece in conn.send_with_data_passthrough(h11.Data(data=body)):
                    await stream.send_all(piece)
                await stream.send_all(conn.send(h11.EndOfMessage()))
            status, received = 0, 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    received += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise OperationFailed("connection", "the server closed the connection")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise OperationFailed("connection", f"{self.target.url}: {exc!r}") from None
        except h11.ProtocolError as exc:
            raise OperationFailed("protocol", f"{self.target.url}: {exc}") from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        return status, received


class _Budget:
    """The operation count shared by all workers (None: only the duration bounds the run)."""

    def __init__(self, operations: int | None) -> None:
        self.left = operations

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class _Run:
    """The state of one run: config, clients, value source, recorder."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.values = ValueSource(config.value_size, config.seed)
        self.clients = [
            HttpClient(config.targets[i % len(config.targets)]) for i in range(config.concurrency)
        ]
        self.ops = [op for op, _ in config.mix]
        self.weights = [weight for _, weight in config.mix]
        self.bucket_path = f"/buckets/{urllib.parse.quote(config.bucket, safe='')}"
        query = urllib.parse.urlencode(config.query)
        self.query_suffix = f"?{query}" if query else ""

    async def one(
        self, client: HttpClient, op: str, key: int, rng: random.Random, rec: Recorder
    ) -> bool:
        """Run one operation and record its outcome; False if the target could not be reached
        (the caller backs off before the next one)."""
        path = f"{self.bucket_path}/keys/{self.config.key_name(key)}{self.query_suffix}"
        started = trio.current_time()
        try:
            with trio.fail_after(self.config.timeout_s):
                if op == "put":
                    value = self.values.value(rng)
                    status, _ = await client.request("PUT", path, value)
                    moved = len(value)
                else:
                    status, moved = await client.request(op.upper(), path)
        except trio.TooSlowError:
            rec.error(op, trio.current_time(), "timeout", f"no answer in {self.config.timeout_s} s")
            return True
        except OperationFailed as exc:
            rec.error(op, trio.current_time(), exc.kind, str(exc))
            return exc.kind != "connect"
        ended = trio.current_time()
        if status in OK_STATUSES[op]:
            rec.ok(op, started, ended, moved if op == "put" or status != 404 else 0, status=status)
        else:
            rec.error(op, ended, f"http_{status}", f"{op.upper()} {path} answered {status}")
        return True

    async def worker(
        self,
        index: int,
        budget: _Budget,
        picker: KeyPicker,
        rec: Recorder,
        *,
        prefill: bool = False,
    ) -> None:
        client = self.clients[index]
        # Prefill draws from its own streams, so a run's operations do not depend on it.
        phase = "prefill" if prefill else "run"
        rng = random.Random(f"{self.config.seed}/{phase}/{index}")
        backoff_s = CONNECT_BACKOFF_MIN_S
        while budget.take():
            if prefill:
                op = "put"
            elif len(self.ops) > 1:
                op = rng.choices(self.ops, self.weights)[0]
            else:
                op = self.ops[0]
            if await self.one(client, op, picker.pick(rng), rng, rec):
                backoff_s = CONNECT_BACKOFF_MIN_S
            else:
                await trio.sleep(backoff_s)
                backoff_s = min(CONNECT_BACKOFF_MAX_S, backoff_s * 2)

    async def set_bucket_props(self) -> None:
        """PUT the props to the first target (the cluster shares bucket props)."""
        assert self.config.bucket_props is not None
        body = json.dumps({"props": json.loads(self.config.bucket_props)}).encode()
        client = HttpClient(self.config.targets[0])
        url = client.target.url
        try:
            with trio.fail_after(self.config.timeout_s):
                status, _ = await client.request(
                    "PUT", f"{self.bucket_path}/props", body, "application/json"
                )
        except OperationFailed as exc:
            raise PeerUnavailable(url, f"setting bucket props: {exc}") from None
        except trio.TooSlowError:
            raise PeerTimeout(url, self.config.timeout_s) from None
        finally:
            await client.aclose()
        if status not in (200, 204):
            raise BadRequest(f"setting bucket props on {url} answered {status}")

    async def prefill(self) -> dict[str, Any]:
        """PUT every key once (not measured as the run; reported on its own)."""
        started = trio.current_time()
        rec = Recorder(started)
        picker = KeyPicker(self.config.keys, "sequential")
        budget = _Budget(self.config.keys)
        async with trio.open_nursery() as nursery:
            for index in range(min(self.config.concurrency, self.config.keys)):
                nursery.start_soon(partial(self.worker, index, budget, picker, rec, prefill=True))
        report = rec.report(trio.current_time() - started)
        return {
            "keys": self.config.keys,
            "elapsed_s": report["elapsed_s"],
            "ok": report["totals"]["ok"],
            "errors": report["totals"]["errors"],
            "errors_by_kind": report["errors"],
        }

    async def measure(self) -> tuple[Recorder, float]:
        async def connect(client: HttpClient) -> None:
            try:
                await client.connect()
            except OperationFailed:
                pass  # the worker's first operation records it

        async with trio.open_nursery() as nursery:
            for client in self.clients:
                nursery.start_soon(connect, client)
        started = trio.current_time()
        rec = Recorder(started)
        budget = _Budget(self.config.operations)
        picker = KeyPicker(self.config.keys, self.config.key_distribution)
        duration = self.config.duration_s
        with trio.move_on_at(started + duration if duration else math.inf) as scope:
            async with trio.open_nursery() as nursery:
                for index in range(self.config.concurrency):
                    nursery.start_soon(self.worker, index, budget, picker, rec)
        # Operations cut off at the deadline are not recorded, so neither is the time it
        # took to cancel them.
        elapsed_s = duration if scope.cancelled_caught else trio.current_time() - started
        return rec, elapsed_s


async def run_load(
    config: LoadConfig, *, wall_clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Run `config` and return its report (JSON-ready).

    Failing to set the bucket props raises (BadRequest, PeerUnavailable, PeerTimeout); every
    failure of an operation is counted in the report instead.
    """
    run = _Run(config)
    started_at = datetime.fromtimestamp(wall_clock(), UTC).isoformat(timespec="seconds")
    try:
        if config.bucket_props is not None:
            await run.set_bucket_props()
        prefill = await run.prefill() if config.prefill else None
        recorder, elapsed_s = await run.measure()
    finally:
        for client in run.clients:
            await client.aclose()
    label = (
        config.label or f"{config.operation} {config.value_size.describe()} c{config.concurrency}"
    )
    return {
        "format": REPORT_FORMAT,
        "label": label,
        "started_at": started_at,
        "config": config.to_json(),
        "prefill": prefill,
        **recorder.report(elapsed_s),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringstore bench",
        description="Bounded HTTP load against ringstore nodes (Riak URLs) or the ceiling server.",
        epilog="example: ringstore bench http://127.0.0.1:10018 http://127.0.0.1:10028"
        " --op get --value-size 4KiB --keys 5000 --prefill -c 16 -d 20 --r 2 -o get.json",
    )
    parser.add_argument("targets", nargs="+", metavar="URL", help="http://HOST:PORT, repeatable")
    parser.add_argument("--op", choices=(*OPERATIONS, "mixed"), default="get")
    parser.add_argument("--mix", help="with --op mixed: weights such as get=3,put=1")
    parser.add_argument(
        "--value-size",
        default="4KiB",
        help="SIZE (4096, 4KiB, 1MiB), uniform:MIN:MAX or exponential:MIN:MEAN",
    )
    parser.add_argument("--keys", type=int, default=10_000, help="size of the key space")
    parser.add_argument(
        "--key-dist",
        choices=KEY_DISTRIBUTIONS,
        default="uniform",
        help="pareto: 80%% of requests to 20%% of keys; sequential: each key in turn",
    )
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, help="seconds of measured load")
    parser.add_argument("-n", "--operations", type=int, help="operations in all")
    for name in QUORUM_OPTIONS:
        parser.add_argument(f"--{name}", metavar="Q", help=f"the {name} query parameter")
    parser.add_argument(
        "--query", action="append", default=[], metavar="NAME=VALUE", help="any other parameter"
    )
    parser.add_argument("--prefill", action="store_true", help="PUT every key once first")
    parser.add_argument("--bucket-props", metavar="JSON", help="set these bucket props first")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per request, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON report here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here (needs matplotlib)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow targets that are not this machine"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The LoadConfig the parsed command line describes; BadRequest if it is invalid."""
    if args.op == "mixed":
        mix = parse_mix(args.mix or "get=1,put=1")
    elif args.mix is not None:
        raise BadRequest("--mix goes with --op mixed")
    else:
        mix = ((args.op, 1),)
    query = [(name, getattr(args, name)) for name in QUORUM_OPTIONS if getattr(args, name)]
    for item in args.query:
        name, equals, value = item.partition("=")
        if not equals:
            raise BadRequest(f"--query {show(item)} is not NAME=VALUE")
        if name in dict(query):
            raise BadRequest(f"query parameter {name} is given twice")
        query.append((name, value))
    return LoadConfig(
        targets=tuple(Target.parse(url) for url in args.targets),
        mix=mix,
        value_size=ValueSize.parse(args.value_size),
        keys=args.keys,
        key_distribution=args.key_dist,
        bucket=args.bucket,
        concurrency=args.concurrency,
        duration_s=args.duration,
        operations=args.operations,
        query=tuple(query),
        prefill=args.prefill,
        bucket_props=args.bucket_props,
        timeout_s=args.timeout,
        seed=args.seed,
        label=args.label,
        allow_remote=args.allow_remote,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`ringstore bench ARGS` / `python -m bench ARGS`: run, print a summary, write JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except BadRequest as exc:
        parser.error(str(exc))
    for path in (args.output, args.plot):
        if path is not None and not path.parent.is_dir():
            parser.error(f"cannot write {path}: {path.parent} is not a directory")
    if args.plot is not None and not plot_available():
        parser.error(
            "--plot needs matplotlib, which is not installed here;"
            " the JSON report (--output) holds the same series and histogram"
        )
    try:
        report = trio.run(run_load, config)
    except RingstoreError as exc:
        print(f"ringstore bench: {exc}", file=sys.stderr)
        return 1
    print(format_summary(report))
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot is not None:
        write_plot(report, args.plot)
    return 0
