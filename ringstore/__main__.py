"""The `ringstore` command: `serve` runs one node, `attach` opens its console, `bench` loads it.

ringstore serve --config node.toml        one node in the foreground until SIGTERM/SIGINT
ringstore attach [--node I] [-c CMD]      a node's admin console (see ringstore.admin)
ringstore bench ...                       the load generator in bench/load.py
"""

from __future__ import annotations

import argparse
import importlib
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ringstore
from ringstore.config import NodeConfig, load_config
from ringstore.errors import RingstoreError

log = logging.getLogger("ringstore.serve")

LOG_FORMAT = "%(asctime)s %(levelname)s %(node)s %(name)s: %(message)s"
# A second SIGTERM/SIGINT during a shutdown that hangs ends the process at once, with this
# status (128 + SIGTERM, as a shell reports a process killed by it).
FORCED_EXIT_STATUS = 143


class _NodeFilter(logging.Filter):
    """Stamps every record with the node's name, so each line of a shared log says whose it is."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


class _OneLineFormatter(logging.Formatter):
    """UTC ISO-8601 times; a multi-line message or traceback stays one line (newlines as \\n)."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


def setup_logging(config: NodeConfig) -> None:
    """Log to stderr and to the node's log file, one line per event, at the config's level."""
    log_path = config.log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    formatter = _OneLineFormatter(LOG_FORMAT)
    node_filter = _NodeFilter(config.name)
    # Watched: when logrotate moves the file away, the node reopens it instead of writing on.
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.handlers.WatchedFileHandler(log_path, encoding="utf-8"),
    ]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(node_filter)
        root.addHandler(handler)
    root.setLevel(config.log_level.upper())


async def _serve(config: NodeConfig) -> None:
    import trio

    from ringstore.node import Node  # the composition root: only `serve` needs all of it

    node = Node(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    name = signal.Signals(signum).name
                    if count == 1:
                        log.info("%s: %s received, shutting down", config.name, name)
                        node.stop()
                    else:
                        log.error("%s: second %s during shutdown, exiting now", config.name, name)
                        logging.shutdown()
                        os._exit(FORCED_EXIT_STATUS)

            nursery.start_soon(stop_on_signal)
            await node.run()
            nursery.cancel_scope.cancel()


def serve(config_path: str) -> int:
    try:
        config = load_config(Path(config_path))
    except RingstoreError as exc:
        print(f"ringstore serve: {exc}", file=sys.stderr)
        return 1
    try:
        setup_logging(config)
    except OSError as exc:
        print(f"ringstore serve: cannot open the log file: {exc}", file=sys.stderr)
        return 1
    log.info(
        "%s: ringstore %s starting (pid %d, config %s)",
        config.name,
        ringstore.__version__,
        os.getpid(),
        Path(config_path).resolve(),
    )
    import trio  # here, not at the top: `attach` starts faster without it

    _tune_gc()
    _limit_malloc_arenas()
    try:
        trio.run(_serve, config)
    except Exception as exc:
        reasons = _expected_failures(exc)
        if reasons is None:
            raise  # a bug: let Python print the whole traceback
        log.error("%s: cannot run: %s", config.name, "; ".join(reasons))
        return 1
    log.info("%s: exited cleanly", config.name)
    return 0


# Young-generation collections once per this many net allocations (Python's default is 700).
# A node allocates and frees many small objects per request; collecting less often cut
# node CPU per 4 KiB GET by 6-8% in bench runs, and modules loaded at start are frozen out
# of every collection. Cyclic garbage (exception tracebacks) is still collected.
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    import gc

    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


# glibc gives threads that allocate arenas of their own (up to 8 per CPU); chunks read in
# worker threads and freed on the event loop then leave free memory stranded in several
# arenas. Two arenas cut a node's peak anonymous memory in the 1 MiB benchmark by about a
# fifth (95 -> 71 MiB) at no measurable cost in throughput.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _limit_malloc_arenas() -> None:
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; other C libraries go without
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _expected_failures(exc: BaseException) -> list[str] | None:
    """The messages of the errors an operator can fix (config, ports, disk), also out of
    exception groups; None if anything else is among them."""
    if isinstance(exc, RingstoreError | OSError):
        return [str(exc)]
    if isinstance(exc, BaseExceptionGroup):
        reasons: list[str] = []
        for inner in exc.exceptions:
            found = _expected_failures(inner)
            if found is None:
                return None
            reasons.extend(reason for reason in found if reason not in reasons)
        return reasons
    return None


def bench(args: Sequence[str]) -> int:
    try:
        module = importlib.import_module("bench.load")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.load"):
            raise
        print(
            "ringstore bench: the load generator (bench/load.py) is not importable here; "
            "run `python -m ringstore bench` from the repository root",
            file=sys.stderr,
        )
        return 1
    return int(module.main(list(args)) or 0)


def attach(args: argparse.Namespace) -> int:
    from ringstore.admin.client import attach as run_attach
    from ringstore.admin.client import find_socket

    try:
        path = find_socket(
            socket_path=args.socket, config=args.config, node=args.node, cluster=args.cluster
        )
    except RingstoreError as exc:
        print(f"ringstore attach: {exc}", file=sys.stderr)
        return 1
    return run_attach(path, args.command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringstore", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=ringstore.__version__)
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run one node in the foreground")
    serve_parser.add_argument("--config", required=True, help="the node's TOML configuration")

    attach_parser = commands.add_parser(
        "attach",
        help="open a node's admin console",
        description="Attach to a node's admin console (help lists its commands).",
    )
    where = attach_parser.add_mutually_exclusive_group()
    where.add_argument("--node", help="node index or name in the cluster file (default 1)")
    where.add_argument("--socket", help="the node's admin socket (DATA_DIR/admin.sock)")
    where.add_argument("--config", help="the node's TOML configuration")
    attach_parser.add_argument(
        "--cluster",
        help="cluster file for --node (default $RINGSTORE_CLUSTER or cluster/run/cluster.json)",
    )
    attach_parser.add_argument(
        "-c", dest="command", metavar="CMD", help="run one command and exit with its status"
    )

    commands.add_parser("bench", help="run the load generator (bench/load.py); see bench --help")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])  # its options are the load generator's, even --help
    args = _parser().parse_args(argv)
    if args.subcommand == "serve":
        return serve(args.config)
    return attach(args)


if __name__ == "__main__":
    sys.exit(main())
