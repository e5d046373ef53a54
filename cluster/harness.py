"""Start, stop, kill and restart the local cluster's node processes, and wait until it is healthy.

A cluster lives in a run directory (default cluster/run; any directory, so tests never touch
the developer's one): the shared secret (mode 0600), one directory per node with its
generated config, log, pid file and data, and cluster.json, which tells scripts and tools
(`ringstore attach --node I`) where every node is. The run directory *is* the cluster:
creating it fixes the node count, ports and ring size; later runs reuse it as it is, so a
node restarted here comes back on its own data and address.

Processes are `python -m ringstore serve --config run/nodeI/node.toml`, each in its own
session (a Ctrl-C in the starting shell does not reach them), output to nodeI/console.log.
A node is ours only if its pid file names a live process running that node's config, so
a stale pid file or a reused pid is never signalled. Stop is SIGTERM, then SIGKILL after a
grace period; healthy means every running node answers GET /ping and sees every running
node up (through its admin console's `members`). Optionally nginx listens on one more port
and load-balances over the nodes (cluster/balancer.py); it is part of the cluster too:
cluster.json names it, and stopping the whole cluster stops it.

Used by the scripts (through `python -m cluster`, cluster/__main__.py) and the tests in
tests/cluster. ringstore never imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from cluster.balancer import LoadBalancer
from cluster.processes import (
    POLL_INTERVAL_S,
    ClusterError,
    process_state,
    read_pid_file,
    send_signal,
    wait_gone,
)
from ringstore.admin import ADMIN_SOCKET_NAME
from ringstore.admin.client import AdminClient
from ringstore.config import load_config
from ringstore.errors import RingstoreError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC_FILE = REPO_ROOT / "cluster" / "local.toml"
RUN_DIR_ENV = "RINGSTORE_CLUSTER_RUN_DIR"
PORT_BASE_ENV = "RINGSTORE_CLUSTER_PORT_BASE"
MANIFEST_NAME = "cluster.json"
SECRET_NAME = "secret"
SECRET_BYTES = 32  # 256 bits: the peers' HMAC key
MAX_NODES = 50  # port_step * 50 ports from the base: beyond that, use real machines
# A node shuts down in well under a second (storage closes, sockets drop); the grace covers
# a node finishing a large write on a loaded machine before SIGKILL.
STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0  # SIGKILL is immediate; this only covers the kernel reaping the process
# Start-up to healthy is ~1-2 s per node here; generous for a loaded 2-core CI machine.
HEALTHY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 2.0  # one /ping or one console command while checking health
LOG_TAIL_LINES = 15  # of a node's console.log, shown when it fails to start
# What the harness writes into each node's [node] itself; local.toml cannot set these.
HARNESS_NODE_OPTIONS = frozenset(
    {
        "name",
        "data_dir",
        "http_host",
        "http_port",
        "peer_host",
        "peer_port",
        "secret_file",
        "log_file",
    }
)


# -- the cluster definition --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """cluster/local.toml: how to create a cluster (an existing one keeps its own configs)."""

    nodes: int = 3
    host: str = "127.0.0.1"
    http_port_base: int = 10018
    peer_port_base: int = 10019
    port_step: int = 10
    lb_port: int = 10017  # the load balancer's (start --lb): below node 1's HTTP port
    run_dir: Path = REPO_ROOT / "cluster" / "run"
    node: tuple[tuple[str, object], ...] = ()  # copied into each node's [node]
    storage: tuple[tuple[str, object], ...] = ()  # copied into each node's [storage]

    def __post_init__(self) -> None:
        if type(self.nodes) is not int or not 1 <= self.nodes <= MAX_NODES:
            raise ClusterError(f"nodes must be an integer from 1 to {MAX_NODES}")
        if type(self.port_step) is not int or self.port_step < 2:
            raise ClusterError("port_step must be an integer of at least 2")
        for name in ("http_port_base", "peer_port_base"):
            base = getattr(self, name)
            if type(base) is not int or not 1 <= base <= 65535 - self.port_step * MAX_NODES:
                raise ClusterError(f"{name} must be a port number leaving room for the nodes")
        if abs(self.http_port_base - self.peer_port_base) % self.port_step == 0:
            raise ClusterError("http_port_base and peer_port_base would give nodes one port")
        if type(self.lb_port) is not int or not 1 <= self.lb_port <= 65535:
            raise ClusterError("lb_port must be a port number")
        if self.lb_port in self.node_ports():
            raise ClusterError(f"lb_port {self.lb_port} is one of the nodes' ports")

    def node_ports(self) -> set[int]:
        """Every HTTP and peer port of the spec's nodes."""
        bases = (self.http_port_base, self.peer_port_base)
        return {base + self.port_step * i for base in bases for i in range(self.nodes)}

    @classmethod
    def load(cls, path: Path = DEFAULT_SPEC_FILE) -> ClusterSpec:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ClusterError(f"cannot read {path}: {exc}") from None
        unknown = sorted(set(raw) - {"cluster", "node", "storage"})
        if unknown:
            raise ClusterError(f"{path}: unknown section(s): {', '.join(unknown)}")
        values = dict(raw.get("cluster", {}))
        known = {
            "nodes",
            "host",
            "http_port_base",
            "peer_port_base",
            "port_step",
            "lb_port",
            "run_dir",
        }
        if set(values) - known:
            unknown = sorted(set(values) - known)
            raise ClusterError(f"{path}: unknown [cluster] option(s): {', '.join(unknown)}")
        reserved = sorted(set(raw.get("node", {})) & HARNESS_NODE_OPTIONS)
        if reserved:
            raise ClusterError(
                f"{path}: [node] {', '.join(reserved)} are set per node by the harness"
            )
        if "run_dir" in values:
            values["run_dir"] = (path.parent / str(values["run_dir"])).resolve()
        for section in ("node", "storage"):
            values[section] = tuple(sorted(dict(raw.get(section, {})).items()))
        return cls(**values)

    def with_port_base(self, base: int) -> ClusterSpec:
        """This spec with HTTP ports from `base`, peer ports from `base + 1`, the load balancer
        on `base - 1`."""
        return replace(self, http_port_base=base, peer_port_base=base + 1, lb_port=base - 1)


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """One node of a cluster: where its config, files and ports are."""

    index: int
    name: str
    directory: Path
    host: str
    http_port: int
    peer_port: int
    data_dir: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "node.toml"

    @property
    def pid_file(self) -> Path:
        return self.directory / "node.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "node.log"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / ADMIN_SOCKET_NAME

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.host}:{self.peer_port}"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise ClusterError(f"cannot write {value!r} into a node config")


def _node_config_text(spec: ClusterSpec, slot: NodeSlot, slots: Sequence[NodeSlot]) -> str:
    lines = [
        "# Generated by cluster/harness.py from cluster/local.toml when the cluster was created.",
        "[node]",
        f"name = {_toml_value(slot.name)}",
        'data_dir = "data"',
        f"http_host = {_toml_value(slot.host)}",
        f"http_port = {slot.http_port}",
        f"peer_host = {_toml_value(slot.host)}",
        f"peer_port = {slot.peer_port}",
        f'secret_file = "../{SECRET_NAME}"',
        'log_file = "node.log"',
    ]
    lines += [f"{name} = {_toml_value(value)}" for name, value in spec.node]
    lines += ["", "[storage]"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in spec.storage]
    for member in slots:
        lines += [
            "",
            "[[members]]",
            f"name = {_toml_value(member.name)}",
            f"host = {_toml_value(member.host)}",
            f"port = {member.peer_port}",
        ]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- processes ---------------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now (as the node does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port_base(
    count: int, *, step: int = 10, host: str = "127.0.0.1", rng: random.Random | None = None
) -> int:
    """A base port B such that B + step*i and B + 1 + step*i are free for i < count, and B - 1
    (the load balancer's port, `ClusterSpec.with_port_base`).

    Chosen below Linux's ephemeral range (32768+), where outgoing connections take their
    ports, so a test cluster does not collide with them; random, so parallel runs spread out.
    """
    rng = rng or random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - step * count)
        ports = [base - 1] + [base + step * i + offset for i in range(count) for offset in (0, 1)]
        if all(port_is_free(host, port) for port in ports):
            return base
    raise ClusterError(f"no free block of {2 * count + 1} ports found between 20000 and 32000")


# -- the cluster -------------------------------------------------------------------------------


class LocalCluster:
    """The node processes of one run directory and its load balancer. Create with `create`,
    `open` or `ensure`."""

    def __init__(
        self,
        run_dir: Path,
        slots: Sequence[NodeSlot],
        python: str = sys.executable,
        *,
        lb_port: int | None = None,
    ):
        if not slots:
            raise ClusterError(f"the cluster in {run_dir} has no nodes")
        self.run_dir = run_dir
        self.slots = list(slots)
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # A cluster made before it had a load balancer gets the default place: below node 1.
        self.balancer = LoadBalancer(
            run_dir=run_dir,
            host=self.slots[0].host,
            port=self.slots[0].http_port - 1 if lb_port is None else lb_port,
            upstreams=tuple((slot.host, slot.http_port) for slot in self.slots),
        )

    # -- creating and opening ------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @property
    def secret_file(self) -> Path:
        return self.run_dir / SECRET_NAME

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (run_dir / MANIFEST_NAME).exists()

    @classmethod
    def create(
        cls, spec: ClusterSpec, run_dir: Path | None = None, *, python: str = sys.executable
    ) -> LocalCluster:
        """Write a new cluster's secret, node configs and cluster.json into an unused run dir."""
        run_dir = (run_dir or spec.run_dir).resolve()
        if cls.exists(run_dir):
            raise ClusterError(f"{run_dir} already holds a cluster")
        run_dir.mkdir(parents=True, exist_ok=True)
        slots = [
            NodeSlot(
                index=i,
                name=f"node{i}",
                directory=run_dir / f"node{i}",
                host=spec.host,
                http_port=spec.http_port_base + spec.port_step * (i - 1),
                peer_port=spec.peer_port_base + spec.port_step * (i - 1),
                data_dir=run_dir / f"node{i}" / "data",
            )
            for i in range(1, spec.nodes + 1)
        ]
        if not (run_dir / SECRET_NAME).exists():
            _write_private(run_dir / SECRET_NAME, secrets.token_urlsafe(SECRET_BYTES).encode())
        for slot in slots:
            slot.directory.mkdir(exist_ok=True)
            slot.config_path.write_text(_node_config_text(spec, slot, slots))
            try:
                load_config(slot.config_path)  # a bad local.toml fails here, not in N processes
            except RingstoreError as exc:
                raise ClusterError(f"cluster/local.toml gives a bad node config: {exc}") from None
        cluster = cls(run_dir, slots, python, lb_port=spec.lb_port)
        cluster.write_manifest()
        return cluster

    @classmethod
    def open(cls, run_dir: Path, *, python: str = sys.executable) -> LocalCluster:
        """The cluster in `run_dir`, as its cluster.json and node configs describe it."""
        run_dir = run_dir.resolve()
        try:
            manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
            entries = manifest["nodes"]
            balancer = manifest.get("load_balancer")
            lb_port = None if balancer is None else urlsplit(balancer["url"]).port
            slots = []
            for entry in entries:
                config = load_config(Path(entry["config"]))
                slots.append(
                    NodeSlot(
                        index=int(entry["index"]),
                        name=config.name,
                        directory=Path(entry["config"]).parent,
                        host=config.http_host,
                        http_port=config.http_port,
                        peer_port=config.peer_port,
                        data_dir=config.data_dir,
                    )
                )
            return cls(run_dir, slots, python, lb_port=lb_port)
        except (OSError, ValueError, KeyError, TypeError, RingstoreError, ClusterError) as exc:
            raise ClusterError(f"cannot read the cluster in {run_dir}: {exc}") from None

    @classmethod
    def ensure(
        cls,
        spec: ClusterSpec,
        run_dir: Path | None = None,
        count: int | None = None,
        *,
        python: str = sys.executable,
    ) -> LocalCluster:
        """The cluster in the run dir, created from `spec` (with `count` nodes) if there is none."""
        run_dir = (run_dir or spec.run_dir).resolve()
        if not cls.exists(run_dir):
            if count is not None:
                spec = replace(spec, nodes=count)
            return cls.create(spec, run_dir, python=python)
        cluster = cls.open(run_dir, python=python)
        if count is not None and count != len(cluster.slots):
            raise ClusterError(
                f"{run_dir} holds a {len(cluster.slots)}-node cluster, not {count}: stop it "
                f"and delete {run_dir} to make a new one (that deletes its data)"
            )
        return cluster

    def slot(self, index: int) -> NodeSlot:
        for slot in self.slots:
            if slot.index == index:
                return slot
        raise ClusterError(f"no node {index}: this cluster has nodes 1..{len(self.slots)}")

    def write_manifest(self) -> None:
        nodes = []
        for slot in self.slots:
            nodes.append(
                {
                    "index": slot.index,
                    "name": slot.name,
                    "http_url": slot.http_url,
                    "peer_address": slot.peer_address,
                    "pid": self.pid(slot.index),
                    "data_dir": str(slot.data_dir),
                    "admin_socket": str(slot.admin_socket),
                    "config": str(slot.config_path),
                    "log_file": str(slot.log_file),
                    "console_log": str(slot.console_log),
                }
            )
        balancer = self.balancer
        manifest = {
            "run_dir": str(self.run_dir),
            "secret_file": str(self.secret_file),
            "nodes": nodes,
            # Always here, so the port stays the cluster's; pid null: not running (start --lb).
            "load_balancer": {
                "url": balancer.url,
                "pid": balancer.pid(),
                "config": str(balancer.config_path),
                "pid_file": str(balancer.pid_file),
                "error_log": str(balancer.error_log),
                "access_log": str(balancer.access_log),
            },
        }
        _write_atomically(self.manifest_path, json.dumps(manifest, indent=2) + "\n")

    # -- process state -------------------------------------------------------------------------

    def pid(self, index: int) -> int | None:
        """The pid of node `index`'s live process, or None (stale pid files are ignored)."""
        slot = self.slot(index)
        child = self._children.get(index)
        if child is not None and child.poll() is not None:
            del self._children[index]  # reaped: its pid may be anyone's now
        pid = read_pid_file(slot.pid_file)
        if pid is None:
            return None
        state = process_state(pid)
        if state is None or os.fsencode(slot.config_path) not in state[1].split(b"\0"):
            return None
        return pid

    def is_running(self, index: int) -> bool:
        return self.pid(index) is not None

    def running(self) -> list[int]:
        return [slot.index for slot in self.slots if self.is_running(slot.index)]

    # -- start, stop, kill ---------------------------------------------------------------------

    def start_node(self, index: int) -> int:
        """Start node `index` (on its existing data, if any); returns its pid."""
        slot = self.slot(index)
        if self.is_running(index):
            raise ClusterError(f"{slot.name} is already running")
        for port in (slot.http_port, slot.peer_port):
            if not port_is_free(slot.host, port):
                raise ClusterError(
                    f"{slot.name}: port {slot.host}:{port} is in use (another cluster or program)"
                )
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # The child imports ringstore from this checkout even where it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        command = [self.python, "-m", "ringstore", "serve", "--config", str(slot.config_path)]
        with open(slot.console_log, "ab") as console:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=slot.directory,
                env=env,
                start_new_session=True,
            )
        self._children[index] = child
        _write_atomically(slot.pid_file, f"{child.pid}\n")
        self.write_manifest()
        return child.pid

    def _wait_gone(self, index: int, pid: int, timeout_s: float) -> bool:
        child = self._children.get(index)
        if child is not None and child.pid == pid:
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        return wait_gone(pid, timeout_s)

    def stop_node(self, index: int, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM node `index`, SIGKILL it after `grace_s`; its exit status if we started it."""
        return self.stop([index], grace_s).get(index)

    def stop(
        self, indices: Iterable[int] | None = None, grace_s: float = STOP_GRACE_S
    ) -> dict[int, int | None]:
        """Stop the given running nodes together; exit statuses where known.

        By default the whole cluster: the load balancer first (no new requests), then every node.
        """
        if indices is None:
            self.stop_balancer(grace_s)
        chosen = [s.index for s in self.slots] if indices is None else list(indices)
        pids = {i: self.pid(i) for i in chosen}
        targets = {i: pid for i, pid in pids.items() if pid is not None}
        for pid in targets.values():
            send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for index, pid in targets.items():
            if not self._wait_gone(index, pid, max(deadline - time.monotonic(), 0.0)):
                send_signal(pid, signal.SIGKILL)
                if not self._wait_gone(index, pid, KILL_WAIT_S):
                    raise ClusterError(f"{self.slot(index).name} (pid {pid}) survived SIGKILL")
        return self._forget(targets)

    def start_balancer(self, nginx: Path) -> int:
        """Start the load balancer (nginx, see cluster/balancer.py) in front of every node."""
        balancer = self.balancer
        pid = balancer.start(nginx, port_free=port_is_free(balancer.host, balancer.port))
        self.write_manifest()
        return pid

    def stop_balancer(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Stop the load balancer if it runs: the pid it had, or None."""
        pid = self.balancer.stop(grace_s)
        if pid is not None:
            self.write_manifest()
        return pid

    def kill_node(self, index: int) -> None:
        """kill -9 node `index`, as a crash would, and wait until it is gone."""
        pid = self.pid(index)
        if pid is None:
            raise ClusterError(f"{self.slot(index).name} is not running")
        send_signal(pid, signal.SIGKILL)
        if not self._wait_gone(index, pid, KILL_WAIT_S):
            raise ClusterError(f"{self.slot(index).name} (pid {pid}) survived SIGKILL")
        self._forget({index: pid})

    def restart_node(self, index: int, grace_s: float = STOP_GRACE_S) -> int:
        if self.is_running(index):
            self.stop_node(index, grace_s)
        return self.start_node(index)

    def _forget(self, stopped: dict[int, int]) -> dict[int, int | None]:
        statuses: dict[int, int | None] = {}
        for index in stopped:
            child = self._children.pop(index, None)
            statuses[index] = None if child is None else child.returncode
            self.slot(index).pid_file.unlink(missing_ok=True)
        self.write_manifest()
        return statuses

    # -- health --------------------------------------------------------------------------------

    def ping(self, index: int) -> bool:
        try:
            with urllib.request.urlopen(
                self.slot(index).http_url + "/ping", timeout=PROBE_TIMEOUT_S
            ) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def members_view(self, index: int) -> dict[str, bool] | None:
        """Node `index`'s view of the members (name -> up), via its console; None if unreachable."""
        client = AdminClient(self.slot(index).admin_socket, reply_timeout_s=PROBE_TIMEOUT_S)
        try:
            reply = client.run("members")
        except RingstoreError:
            return None
        finally:
            client.close()
        if not reply.ok:
            return None
        view: dict[str, bool] = {}
        for line in reply.lines[1:-1]:  # between the header and the "N up, M down" summary
            words = line.split()
            if len(words) >= 2 and words[1] in ("up", "down"):
                view[words[0]] = words[1] == "up"
        return view

    def _problems(self, expect_up: set[str], expect_down: set[str]) -> list[str]:
        problems = []
        for index in self.running():
            name = self.slot(index).name
            if not self.ping(index):
                problems.append(f"{name} does not answer GET /ping")
                continue
            view = self.members_view(index)
            if view is None:
                problems.append(f"{name}'s admin console does not answer")
                continue
            problems += [f"{name} sees {n} down" for n in sorted(expect_up) if not view.get(n)]
            problems += [f"{name} sees {n} up" for n in sorted(expect_down) if view.get(n)]
        return problems

    def _wait(self, expect_down: set[str], timeout_s: float, what: str) -> None:
        wanted = {slot.name for slot in self.slots if self.is_running(slot.index)} - expect_down
        deadline = time.monotonic() + timeout_s
        while True:
            for index, child in list(self._children.items()):
                if child.poll() is not None and self.slot(index).name in wanted:
                    raise ClusterError(
                        f"{self.slot(index).name} exited with status {child.returncode}\n"
                        + self.log_tail(index)
                    )
            problems = self._problems(wanted, expect_down)
            if not problems:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"not {what} within {timeout_s:g} s: " + "; ".join(problems[:6]))
            time.sleep(POLL_INTERVAL_S)

    def wait_healthy(self, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
        """Until every running node answers /ping and sees every running node up."""
        self._wait(set(), timeout_s, "healthy")

    def wait_down(self, index: int, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
        """Until every other running node sees node `index` down (after a stop or kill)."""
        self._wait({self.slot(index).name}, timeout_s, f"{self.slot(index).name} seen down")

    def log_tail(self, index: int, lines: int = LOG_TAIL_LINES) -> str:
        slot = self.slot(index)
        try:
            text = slot.console_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no {slot.console_log})"
        return "\n".join(f"  {slot.name}| {line}" for line in text)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run dir's lock: two start/stop commands at once must not both act."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            print(f"waiting for another command working on {run_dir} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
