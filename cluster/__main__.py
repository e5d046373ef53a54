"""`python -m cluster start|stop|status|attach|kill|restart`: the local cluster from a shell.

`start --lb` also starts nginx on one more port (cluster/local.toml's lb_port), load-balancing
over the nodes (cluster/balancer.py); it installs Debian's nginx package first if missing.

scripts/start_cluster.sh, stop_cluster.sh and attach.sh are thin shells over this.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster.balancer import ensure_nginx
from cluster.harness import (
    DEFAULT_SPEC_FILE,
    HEALTHY_TIMEOUT_S,
    MANIFEST_NAME,
    PORT_BASE_ENV,
    RUN_DIR_ENV,
    STOP_GRACE_S,
    ClusterError,
    ClusterSpec,
    LocalCluster,
    locked,
)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _report(
    cluster: LocalCluster, started: Sequence[int], lb_started: bool, default_run_dir: bool
) -> None:
    print(f"ringstore development cluster: {len(cluster.slots)} nodes in {_shown(cluster.run_dir)}")
    for slot in cluster.slots:
        pid = cluster.pid(slot.index)
        state = "started" if slot.index in started else "already running"
        print(f"  {slot.name}  {slot.http_url}  pid {pid}  ({state})")
    balancer = cluster.balancer
    lb_pid = balancer.pid()
    if lb_pid is not None:
        state = "started" if lb_started else "already running"
        print(f"  nginx  {balancer.url}  pid {lb_pid}  ({state}; load balancer over all nodes)")
    prefix = "" if default_run_dir else f"{RUN_DIR_ENV}={shlex.quote(str(cluster.run_dir))} "
    first, second = cluster.slots[0], cluster.slots[-1]
    print("attach:  " + prefix + "scripts/attach.sh 1          (help lists the commands)")
    print("try:     curl -XPUT -H 'Content-Type: text/plain' -d 'hello'", end=" ")
    print(f"{first.http_url}/buckets/test/keys/hello")
    print(f"         curl {second.http_url}/buckets/test/keys/hello")
    if lb_pid is not None:
        print(f"         curl {balancer.url}/buckets/test/keys/hello   (through the load balancer)")
    print(f"logs:    {_shown(cluster.run_dir)}/nodeI/node.log", end="")
    print(f", {_shown(balancer.access_log)}" if lb_pid is not None else "")
    print("stop:    " + prefix + "scripts/stop_cluster.sh")


def _run_dir(args: argparse.Namespace, spec: ClusterSpec) -> tuple[Path, bool]:
    chosen = args.run_dir or os.environ.get(RUN_DIR_ENV)
    return (Path(chosen).resolve(), False) if chosen else (spec.run_dir, True)


def _cmd_start(args: argparse.Namespace, spec: ClusterSpec, run_dir: Path, default: bool) -> int:
    port_base = args.port_base or os.environ.get(PORT_BASE_ENV)
    if port_base:
        spec = spec.with_port_base(int(port_base))
    cluster = LocalCluster.ensure(spec, run_dir, args.nodes)
    started = []
    for slot in cluster.slots:
        if not cluster.is_running(slot.index):
            cluster.start_node(slot.index)
            started.append(slot.index)
    cluster.write_manifest()  # pids of nodes that died unseen become null
    print(f"waiting until all {len(cluster.slots)} nodes are up ...", file=sys.stderr)
    cluster.wait_healthy(args.timeout)
    lb_started = args.lb and not cluster.balancer.is_running()
    if lb_started:
        cluster.start_balancer(ensure_nginx())
    _report(cluster, started, lb_started, default)
    return 0


def _cmd_stop(args: argparse.Namespace, run_dir: Path) -> int:
    if not LocalCluster.exists(run_dir):
        print(f"no cluster in {_shown(run_dir)}: nothing to stop")
        return 0
    cluster = LocalCluster.open(run_dir)
    running = {i: cluster.pid(i) for i in cluster.running()}
    lb_pid = cluster.stop_balancer(args.grace)  # first: no new requests reach the nodes
    if lb_pid is not None:
        print(f"  nginx  pid {lb_pid}  stopped")
    if not running:
        cluster.write_manifest()
        print("no node of the cluster is running")
        return 0
    cluster.stop(running, args.grace)
    for index, pid in running.items():
        print(f"  {cluster.slot(index).name}  pid {pid}  stopped")
    return 0


def _cmd_status(run_dir: Path) -> int:
    if not LocalCluster.exists(run_dir):
        print(f"no cluster in {_shown(run_dir)}")
        return 1
    cluster = LocalCluster.open(run_dir)
    for slot in cluster.slots:
        pid = cluster.pid(slot.index)
        state = f"running, pid {pid}" if pid else "down"
        print(f"  {slot.name}  {slot.http_url}  {state}")
    lb_pid = cluster.balancer.pid()
    lb_state = f"running, pid {lb_pid}" if lb_pid else "not running (start --lb)"
    print(f"  nginx  {cluster.balancer.url}  {lb_state}")
    return 0 if len(cluster.running()) == len(cluster.slots) else 1


def _cmd_attach(args: argparse.Namespace, run_dir: Path) -> int:
    from ringstore.admin.client import attach, find_socket
    from ringstore.errors import RingstoreError

    try:
        path = find_socket(node=args.node, cluster=str(run_dir / MANIFEST_NAME))
    except RingstoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return attach(path, args.line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC_FILE, help="cluster/local.toml")
    parser.add_argument("--run-dir", help=f"the cluster's directory (${RUN_DIR_ENV})")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="create and start the cluster, or its down nodes")
    start.add_argument("nodes", nargs="?", type=int, help="node count when creating it")
    start.add_argument("--port-base", type=int, help=f"HTTP port of node 1 (${PORT_BASE_ENV})")
    start.add_argument("--timeout", type=float, default=HEALTHY_TIMEOUT_S)
    start.add_argument(
        "--lb", action="store_true", help="also start nginx load-balancing over the nodes"
    )
    stop = commands.add_parser("stop", help="stop the nodes (and nginx) this cluster started")
    stop.add_argument("--grace", type=float, default=STOP_GRACE_S, help="seconds before SIGKILL")
    commands.add_parser("status", help="which nodes are running")
    attach = commands.add_parser("attach", help="open a node's admin console")
    attach.add_argument("node", nargs="?", default="1", help="index or name (default 1)")
    attach.add_argument("-c", dest="line", metavar="CMD", help="run one command, exit 0/1")
    for name, text in (("kill", "kill -9 one node"), ("restart", "stop and start one node")):
        commands.add_parser(name, help=text).add_argument("index", type=int)
    args = parser.parse_args(argv)
    try:
        spec = ClusterSpec.load(args.spec)
        run_dir, default = _run_dir(args, spec)
        if args.command == "status":
            return _cmd_status(run_dir)
        if args.command == "attach":
            return _cmd_attach(args, run_dir)
        with locked(run_dir):
            if args.command == "start":
                return _cmd_start(args, spec, run_dir, default)
            if args.command == "stop":
                return _cmd_stop(args, run_dir)
            cluster = LocalCluster.open(run_dir)
            if args.command == "kill":
                cluster.kill_node(args.index)
            else:
                cluster.restart_node(args.index)
                cluster.wait_healthy()
            print(f"{cluster.slot(args.index).name}: {args.command} done")
            return 0
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
