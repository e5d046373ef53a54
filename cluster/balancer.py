"""nginx in front of the local cluster: find or install it, write its config into the run
directory, and start and stop it by its own pid file there.

Any node can serve any request, so clients may use one address for the whole cluster: nginx
spreads requests round-robin over the nodes' HTTP ports and passes a request on to another node
when the one it picked cannot be reached. It is started as `nginx -c RUN/nginx.conf -p RUN/
-e RUN/nginx-error.log`, so it reads nothing under /etc/nginx (the distribution's default site
stays out of it) and writes only into the run directory: nginx.conf, nginx.pid,
nginx-error.log, nginx-access.log and nginx-tmp/.

Which requests nginx passes on to another node (`proxy_next_upstream error timeout`):
- Any request whose connection to a node failed before the request was sent (a stopped node
  refuses the connection): nothing reached that node, so trying the next one is always safe.
- GET, HEAD, PUT and DELETE also after the request was sent, if the node broke the connection
  or did not answer in time, and only while the body is still in nginx's memory (bodies stream
  through unbuffered). Reads change nothing. A repeated PUT or DELETE stores the same value or
  tombstone again: with a context, at worst a sibling equal to the one it repeats; without
  one, the same as the client's own retry after a lost answer. No write is lost by it.
- Never POST once it was sent (nginx's rule for non-idempotent methods, kept):
  `POST /buckets/B/keys` makes a new server-chosen key on every try, so a repeat could store
  the object twice under two keys. In the moment a node goes down, a POST that nginx had
  just sent on a reused connection to it gets 502 and the client decides.
- Not a 503. A ringstore 503 is the cluster's answer (quorum not met, request timed out), not
  a sick node: every node would coordinate against the same replicas, so passing it on only
  multiplies the work, and nginx would count each one as a failure of a healthy node (passive
  health, max_fails) and take it out of rotation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.processes import (
    POLL_INTERVAL_S,
    ClusterError,
    process_state,
    read_pid_file,
    send_signal,
    wait_gone,
)

NGINX_PACKAGE = "nginx"  # Debian's package: the nginx binary in /usr/sbin
NGINX_FALLBACK_PATH = Path("/usr/sbin/nginx")  # where it is when /usr/sbin is not on PATH
# apt-get update plus a download of nginx and its few libraries on a slow mirror.
APT_TIMEOUT_S = 600.0
# Another apt-get (a test installing chromium, unattended upgrades) may hold dpkg's lock.
APT_LOCK_TIMEOUT_S = 300
# nginx checks its config and binds its port before it forks, then writes its pid file.
START_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0  # SIGKILL is immediate; this only covers the kernel reaping the processes
ERROR_TAIL_LINES = 10  # of nginx-error.log, shown when nginx fails to start

# -- the nginx configuration's numbers ---------------------------------------------------------
WORKER_PROCESSES = 1  # one event loop serves thousands of connections: a laptop's cluster
WORKER_CONNECTIONS = 1024  # clients plus upstream connections, as the node's max_connections
KEEPALIVE_CONNECTIONS = 32  # idle connections kept per worker to the nodes: no connect per request
# Under the node's 60 s idle timeout (HttpLimits.idle_timeout_s), so nginx drops an idle
# connection before the node does and never sends a request on one the node is closing.
UPSTREAM_KEEPALIVE_TIMEOUT_S = 50
# Passive health: one refused or broken connection takes a node out of rotation for this long;
# then one request probes it again (and goes on to another node if it fails). Short, so a
# restarted node gets its share back at once; a probe of a down node costs one refused connect.
MAX_FAILS = 1
FAIL_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 2  # the nodes are on this machine or its LAN: no connect takes longer
# Above Riak's 60 s default request `timeout`, so a slow quorum is answered by the node (503,
# naming the quorum) rather than cut off by nginx; also the longest pause inside a response.
READ_TIMEOUT_S = 75
SEND_TIMEOUT_S = 60  # the longest a node may pause reading a request body (its own limit: 30 s)
# The node accepts request heads up to 64 KiB (HttpLimits.max_header_bytes): a long
# X-Riak-Vclock plus metadata must pass nginx both ways too. The large request-head buffers
# are taken only by requests that need them; the response buffer (one per proxied request)
# is also the unit a response body streams through in.
HEADER_BUFFER_BYTES = 64 * 1024
# Characters nginx would read as syntax or variables even inside a quoted path.
UNSAFE_PATH_CHARS = frozenset('"\\$') | {chr(c) for c in range(32)}


class NginxUnavailable(ClusterError):
    """nginx is not installed and this user cannot install it (the message says how to)."""


def find_nginx() -> Path | None:
    """The nginx executable on PATH or in /usr/sbin, or None."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    return NGINX_FALLBACK_PATH if os.access(NGINX_FALLBACK_PATH, os.X_OK) else None


def ensure_nginx() -> Path:
    """The nginx executable, installed first from Debian's `nginx` package if missing (as root).

    Raises NginxUnavailable if it is missing and cannot be installed here (not root, no
    apt-get), ClusterError if apt-get fails. Where the system starts services on install
    (no policy-rc.d denying it), the package also starts Debian's own nginx service on port 80:
    that one is not ours, and nothing here touches it.
    """
    found = find_nginx()
    if found:
        return found
    if os.geteuid() != 0:
        raise NginxUnavailable(
            "nginx is not installed and only root can install it: "
            f"sudo apt-get install -y {NGINX_PACKAGE}"
        )
    if shutil.which("apt-get") is None:
        raise NginxUnavailable("nginx is not installed and there is no apt-get to install it")
    print(f"installing nginx (apt-get install {NGINX_PACKAGE}) ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"
    for command in (
        ["apt-get", "-o", lock, "update", "-qq"],
        ["apt-get", "-o", lock, "install", "-y", "-qq", NGINX_PACKAGE],
    ):
        try:
            result = subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=APT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(command)} took over {APT_TIMEOUT_S:g} s") from None
        if result.returncode != 0:
            output = (result.stdout[-2000:] + result.stderr[-2000:]).strip()
            status = result.returncode
            raise ClusterError(f"{' '.join(command)} failed (status {status}):\n{output}")
    found = find_nginx()
    if found is None:
        raise ClusterError(f"apt-get installed {NGINX_PACKAGE}, but no nginx executable appeared")
    return found


def _quoted(path: Path) -> str:
    text = str(path)
    if any(char in UNSAFE_PATH_CHARS for char in text):
        raise ClusterError(f"nginx cannot use the path {text!r}: quote, backslash, $ or control")
    return f'"{text}"'


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """The nginx of one run directory: listening on host:port, spreading over `upstreams`."""

    run_dir: Path
    host: str
    port: int
    upstreams: tuple[tuple[str, int], ...]  # (host, HTTP port) of each node

    def __post_init__(self) -> None:
        if type(self.port) is not int or not 1 <= self.port <= 65535:
            raise ClusterError(f"load balancer port {self.port!r} is not a port number")
        if not self.upstreams:
            raise ClusterError("a load balancer needs at least one node")
        if (self.host, self.port) in self.upstreams:
            raise ClusterError(f"load balancer port {self.port} is a node's HTTP port")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "nginx-error.log"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "nginx-access.log"

    @property
    def temp_dir(self) -> Path:
        return self.run_dir / "nginx-tmp"

    def command(self, nginx: Path) -> list[str]:
        """How it is started: its own config, prefix and error log; nothing from /etc/nginx."""
        prefix = str(self.run_dir) + os.sep
        return [str(nginx), "-c", str(self.config_path), "-p", prefix, "-e", str(self.error_log)]

    def config_text(self) -> str:
        """nginx.conf for this load balancer; every choice is explained in the file itself."""
        temp = self.temp_dir
        servers = "\n".join(
            f"        server {host}:{port} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_S}s;"
            for host, port in self.upstreams
        )
        return f"""\
# Generated by cluster/harness.py (cluster/balancer.py) whenever the load balancer starts:
# edits here are lost. nginx reads only this file (nginx -c ... -p ...), never /etc/nginx.
daemon on;
worker_processes {WORKER_PROCESSES};
pid {_quoted(self.pid_file)};
error_log {_quoted(self.error_log)} notice;

events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
    # $upstream_addr lists every node a request went to: "A, B" is a retry on B.
    log_format ringstore '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
                         'upstream=$upstream_addr ($upstream_status) ${{request_time}}s';
    access_log {_quoted(self.access_log)} ringstore;
    client_body_temp_path {_quoted(temp / "client_body")};
    proxy_temp_path {_quoted(temp / "proxy")};
    fastcgi_temp_path {_quoted(temp / "fastcgi")};
    uwsgi_temp_path {_quoted(temp / "uwsgi")};
    scgi_temp_path {_quoted(temp / "scgi")};
    server_tokens off;

    upstream ringstore {{
        # Passive health: a node that refuses or breaks a connection sits out fail_timeout.
{servers}
        keepalive {KEEPALIVE_CONNECTIONS};
        # Below the node's 60 s idle timeout: nginx closes an idle connection first.
        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT_S}s;
    }}

    server {{
        listen {self.host}:{self.port};
        # Objects stream through in both directions, at any size the nodes accept.
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        large_client_header_buffers 4 {HEADER_BUFFER_BYTES // 1024}k;
        # A response head as large as the node accepts in a request; nginx requires the
        # (here unused: buffering is off) body buffers to be at least as large.
        proxy_buffer_size {HEADER_BUFFER_BYTES // 1024}k;
        proxy_buffers 4 {HEADER_BUFFER_BYTES // 1024}k;

        location / {{
            proxy_pass http://ringstore;
            # HTTP/1.1 with no Connection header: the upstream keepalive connections get reused.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
            proxy_send_timeout {SEND_TIMEOUT_S}s;
            # Above Riak's 60 s default request timeout: the node answers a slow quorum itself.
            proxy_read_timeout {READ_TIMEOUT_S}s;
            # Another node gets a request only when this one could not be reached or broke
            # off: not on a 503, which is the cluster's answer; never a POST once sent
            # (nginx's rule: a retried POST /buckets/B/keys would store a second object).
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""

    # -- the process -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this load balancer's nginx master, or None (stale pid files are ignored).

        nginx renames its master "nginx: master process <command line>": it is ours only if
        that command line names our config.
        """
        pid = read_pid_file(self.pid_file)
        if pid is None:
            return None
        state = process_state(pid)
        if state is None:
            return None
        title = state[1].replace(b"\0", b" ")
        ours = b" -c " + os.fsencode(self.config_path) + b" "
        if not title.startswith(b"nginx: master process ") or ours not in title:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, nginx: Path, *, port_free: bool = True) -> int:
        """Write nginx.conf and start nginx (a daemon); its master's pid once it is serving.

        `port_free` is the caller's check that host:port can be bound: nginx would fail on it
        too, but this says which port and why.
        """
        if self.is_running():
            raise ClusterError(f"the load balancer is already running (pid {self.pid()})")
        if not port_free:
            raise ClusterError(
                f"load balancer port {self.host}:{self.port} is in use (another cluster or program)"
            )
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(self.config_text())
        os.replace(tmp, self.config_path)
        self.pid_file.unlink(missing_ok=True)  # a stale one must not look like the new master
        with open(self.error_log, "ab") as errors:
            try:
                started = subprocess.run(
                    self.command(nginx),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    timeout=START_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ClusterError(f"nginx did not start within {START_TIMEOUT_S:g} s") from None
        if started.returncode != 0:
            raise ClusterError(f"nginx failed to start:\n{self.log_tail()}")
        # The launcher exits once the daemon forked; the daemon then writes its pid file.
        deadline = time.monotonic() + START_TIMEOUT_S
        while (pid := self.pid()) is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"nginx wrote no pid file {self.pid_file}:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        return pid

    def stop(self, grace_s: float) -> int | None:
        """Stop nginx: SIGQUIT (finish requests in flight), SIGKILL to its whole process group
        (master and workers) after `grace_s`. Its pid, or None if it was not running."""
        pid = self.pid()
        if pid is None:
            return None
        send_signal(pid, signal.SIGQUIT)
        if not wait_gone(pid, grace_s):
            try:
                # The daemon leads its own session, its workers in its group: a lone SIGKILL to
                # the master would leave the workers serving. Never signal a group it does not lead.
                group = os.getpgid(pid)
            except ProcessLookupError:
                group = None
            if group == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            else:
                send_signal(pid, signal.SIGKILL)
            if not wait_gone(pid, KILL_WAIT_S):
                raise ClusterError(f"nginx (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return pid

    def log_tail(self, lines: int = ERROR_TAIL_LINES) -> str:
        try:
            text = self.error_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no {self.error_log})"
        return "\n".join(f"  nginx| {line}" for line in text)
