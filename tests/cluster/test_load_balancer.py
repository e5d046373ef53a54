"""The load balancer: nginx from `scripts/start_cluster.sh --lb` in front of a 3-node cluster of
real processes (in a tmp run directory on free ports), writes and reads through it with every
node up and with one stopped, and stop_cluster.sh leaving no process of ours behind; plus its
generated config and its pid-file rules without starting anything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.balancer import LoadBalancer, NginxUnavailable, ensure_nginx
from cluster.harness import (
    DEFAULT_SPEC_FILE,
    REPO_ROOT,
    ClusterError,
    ClusterSpec,
    LocalCluster,
    free_port_base,
    port_is_free,
)

SCRIPT_TIMEOUT_S = 120.0  # a start waits for health itself (60 s at most); this bounds a hang
REQUEST_TIMEOUT_S = 30.0  # one HTTP request through nginx to a local node; only bounds a hang
BIG = bytes(range(256)) * 1200  # 300 KiB: chunked in the store, streamed through nginx
PIECE_BYTES = 64 * 1024  # a chunked upload (no Content-Length) is sent in pieces of this size


def http(
    method: str, url: str, body: bytes | None = None, *, chunked: bool = False
) -> tuple[int, bytes, dict[str, str]]:
    data = body
    if chunked and body is not None:
        data = iter([body[i : i + PIECE_BYTES] for i in range(0, len(body), PIECE_BYTES)])
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    if chunked:
        request.add_header("Transfer-Encoding", "chunked")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (nginx's workers, for its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (ours name the run directory)."""
    needle = os.fsencode(text)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def balancer(tmp_path: Path, port: int = 24999) -> LoadBalancer:
    nodes = (("127.0.0.1", 25000), ("127.0.0.1", 25010), ("127.0.0.1", 25020))
    return LoadBalancer(run_dir=tmp_path, host="127.0.0.1", port=port, upstreams=nodes)


# -- without processes -------------------------------------------------------------------------


def test_the_config_streams_retries_only_unreachable_nodes_and_stays_in_the_run_dir(tmp_path):
    text = balancer(tmp_path).config_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    directives = [line for line in lines if line]
    for port in (25000, 25010, 25020):
        assert f"server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" in directives
    for wanted in (
        "listen 127.0.0.1:24999;",
        "keepalive 32;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "client_max_body_size 0;",
        "proxy_next_upstream error timeout;",
        "daemon on;",
        f'pid "{tmp_path}/nginx.pid";',
        f'error_log "{tmp_path}/nginx-error.log" notice;',
        f'access_log "{tmp_path}/nginx-access.log" ringstore;',
    ):
        assert wanted in directives, wanted
    assert not any("http_503" in line or "non_idempotent" in line for line in directives)
    assert not any(line.startswith("include") or "/etc/" in line for line in directives)
    paths = [word.strip('";') for line in directives for word in line.split() if '"/' in word]
    assert len(paths) == 8 and all(path.startswith(f"{tmp_path}/") for path in paths)
    command = balancer(tmp_path).command(Path("/usr/sbin/nginx"))
    assert command == [
        "/usr/sbin/nginx",
        "-c",
        f"{tmp_path}/nginx.conf",
        "-p",
        f"{tmp_path}/",
        "-e",
        f"{tmp_path}/nginx-error.log",
    ]


def test_bad_load_balancer_settings_are_refused(tmp_path):
    with pytest.raises(ClusterError, match="is a node's HTTP port"):
        balancer(tmp_path, port=25010)
    with pytest.raises(ClusterError, match="not a port number"):
        balancer(tmp_path, port=70000)
    with pytest.raises(ClusterError, match="cannot use the path .*: quote, backslash, \\$"):
        balancer(tmp_path / "$HOME").config_text()
    with pytest.raises(ClusterError, match="lb_port 10028 is one of the nodes' ports"):
        ClusterSpec(lb_port=10028)
    path = tmp_path / "local.toml"
    path.write_text("[cluster]\nlb_port = 'x'\n")
    with pytest.raises(ClusterError, match="lb_port must be a port number"):
        ClusterSpec.load(path)
    assert not list(tmp_path.glob("nginx*")), "nothing was written"


def test_local_toml_places_the_load_balancer_below_node_1_and_it_follows_the_port_base():
    spec = ClusterSpec.load(DEFAULT_SPEC_FILE)
    assert spec.lb_port == 10017
    block = DEFAULT_SPEC_FILE.read_text().split("\nlb_port = ")[0].rsplit("\n\n", 1)[-1]
    assert "# Default 10017" in block and "RINGSTORE_CLUSTER_PORT_BASE=P it is P - 1" in block
    assert spec.with_port_base(24000).lb_port == 23999


def test_cluster_json_names_the_load_balancer_and_a_reopened_cluster_keeps_its_port(
    tmp_path, test_spec
):
    spec = replace(test_spec.with_port_base(24000), lb_port=24123)
    cluster = LocalCluster.create(spec, tmp_path / "run")
    manifest = json.loads(cluster.manifest_path.read_text())
    assert manifest["load_balancer"]["url"] == "http://127.0.0.1:24123"
    assert manifest["load_balancer"]["pid"] is None
    assert manifest["load_balancer"]["config"] == str(tmp_path / "run" / "nginx.conf")
    assert LocalCluster.open(tmp_path / "run").balancer == cluster.balancer
    assert cluster.balancer.upstreams == (
        ("127.0.0.1", 24000),
        ("127.0.0.1", 24010),
        ("127.0.0.1", 24020),
    )
    # A cluster.json from before the load balancer existed: it goes below node 1.
    del manifest["load_balancer"]
    cluster.manifest_path.write_text(json.dumps(manifest))
    assert LocalCluster.open(tmp_path / "run").balancer.port == 23999


def test_a_pid_file_naming_another_process_is_not_the_load_balancer_and_is_never_signalled(
    tmp_path,
):
    lb = balancer(tmp_path)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        lb.pid_file.write_text(f"{stranger.pid}\n")
        assert lb.pid() is None
        assert lb.stop(grace_s=1.0) is None
        assert stranger.poll() is None
        lb.pid_file.write_text("garbage\n")
        assert lb.pid() is None
    finally:
        stranger.kill()
        stranger.wait()


# -- with nginx and real nodes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx() -> Path:
    """nginx, installed by the harness from Debian's package if missing (as CI does)."""
    try:
        return ensure_nginx()
    except NginxUnavailable as exc:
        pytest.skip(f"nginx cannot be installed here: {exc}")


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "run"
    yield run_dir
    if LocalCluster.exists(run_dir):  # whatever the test left running, nginx included
        LocalCluster.open(run_dir).stop(grace_s=5.0)


@pytest.fixture
def env(run_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTORE_")}
    env.update(
        RINGSTORE_PYTHON=sys.executable,
        RINGSTORE_CLUSTER_RUN_DIR=str(run_dir),
        RINGSTORE_CLUSTER_PORT_BASE=str(free_port_base(3)),
    )
    return env


LOG_WAIT_S = 10.0  # nginx logs a request just after its response: the last line may lag


def upstreams_in_log(log: Path, count: int, since: int = 0) -> list[list[str]]:
    """For each request nginx logged from line `since`, the nodes it went to, in order.

    nginx writes a request's line once the response is sent, so the line of the request a
    client just read may not be there yet: this waits (up to LOG_WAIT_S) for `count` lines.
    """
    deadline = time.monotonic() + LOG_WAIT_S
    lines = log.read_text().splitlines()[since:]
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.02)  # another process's file: no event to wait on
        lines = log.read_text().splitlines()[since:]
    return [line.split(" upstream=")[1].split(" (")[0].split(", ") for line in lines]


@pytest.mark.slow
def test_writes_and_reads_through_nginx_with_every_node_up_and_with_one_stopped(
    nginx, run_dir, env
):
    base = int(env["RINGSTORE_CLUSTER_PORT_BASE"])
    lb = f"http://127.0.0.1:{base - 1}"
    nodes = [f"127.0.0.1:{base + step}" for step in (0, 10, 20)]
    started = script("start_cluster.sh", "--lb", env=env)
    assert started.returncode == 0, started.stderr
    manifest = json.loads((run_dir / "cluster.json").read_text())
    master = manifest["load_balancer"]["pid"]
    assert manifest["load_balancer"]["url"] == lb
    assert f"  nginx  {lb}  pid {master}  (started; load balancer over all nodes)" in (
        started.stdout
    )
    assert f"curl {lb}/buckets/test/keys/hello" in started.stdout
    workers = children(master)
    assert workers, "nginx runs a worker"
    ours = [master, *workers] + [node["pid"] for node in manifest["nodes"]]
    assert all(alive(pid) for pid in ours)
    access_log = run_dir / "nginx-access.log"

    assert http("PUT", f"{lb}/buckets/lb/keys/small?w=2", b"inline value")[0] in (200, 204)
    assert http("PUT", f"{lb}/buckets/lb/keys/big?w=2", BIG)[0] in (200, 204)
    assert http("PUT", f"{lb}/buckets/lb/keys/streamed?w=2", BIG, chunked=True)[0] in (200, 204)
    status, _, headers = http("POST", f"{lb}/buckets/lb/keys", b"server-chosen key")
    assert status == 201
    assert http("GET", f"{lb}{headers['Location']}")[:2] == (200, b"server-chosen key")
    assert http("GET", f"{lb}/buckets/lb/keys/small?r=2")[:2] == (200, b"inline value")
    assert http("GET", f"{lb}/buckets/lb/keys/big?r=2")[:2] == (200, BIG)
    assert http("GET", f"{lb}/buckets/lb/keys/streamed?r=2")[:2] == (200, BIG)
    # Every node got its share, and each request went to exactly one of them.
    tried = upstreams_in_log(access_log, 8)
    assert len(tried) == 8 and all(len(one) == 1 for one in tried)
    assert {one[0] for one in tried} == set(nodes)

    again = script("start_cluster.sh", "--lb", env=env)
    assert again.returncode == 0, again.stderr
    assert f"  nginx  {lb}  pid {master}  (already running;" in again.stdout
    assert sorted(children(master)) == sorted(workers)

    LocalCluster.open(run_dir).stop_node(2)
    logged = len(access_log.read_text().splitlines())
    for i in range(6):
        value = f"written while node2 is down {i}".encode()
        assert http("PUT", f"{lb}/buckets/lb/keys/down{i}?w=2", value)[0] in (200, 204)
        assert http("GET", f"{lb}/buckets/lb/keys/down{i}?r=2")[:2] == (200, value)
    assert http("PUT", f"{lb}/buckets/lb/keys/big-down?w=2", BIG, chunked=True)[0] in (200, 204)
    assert http("GET", f"{lb}/buckets/lb/keys/big-down?r=2")[:2] == (200, BIG)
    assert http("GET", f"{lb}/buckets/lb/keys/big?r=2")[:2] == (200, BIG)
    assert http("GET", f"{lb}/buckets/lb/keys/small?r=2")[:2] == (200, b"inline value")
    # nginx tried the stopped node and passed the request on (no client saw an error).
    tried = upstreams_in_log(access_log, 16, logged)
    assert len(tried) == 16
    assert any(one[0] == nodes[1] and len(one) == 2 for one in tried), tried
    assert all(one[-1] != nodes[1] for one in tried)

    stopped = script("stop_cluster.sh", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"  nginx  pid {master}  stopped" in stopped.stdout
    assert not [pid for pid in ours if alive(pid)]
    assert not processes_naming(str(run_dir))
    assert not (run_dir / "nginx.pid").exists()
    assert port_is_free("127.0.0.1", base - 1)
    assert json.loads((run_dir / "cluster.json").read_text())["load_balancer"]["pid"] is None
    assert "no node of the cluster is running" in script("stop_cluster.sh", env=env).stdout


@pytest.mark.slow
def test_a_busy_port_is_named_and_a_hung_nginx_is_killed_with_its_workers(nginx, tmp_path):
    base = free_port_base(3)
    cluster = LocalCluster.create(ClusterSpec().with_port_base(base), tmp_path / "run")
    lb = cluster.balancer
    busy = pytest.raises(ClusterError, match=f"port 127.0.0.1:{lb.port} is in use")
    with socket.create_server(("127.0.0.1", lb.port)), busy:
        cluster.start_balancer(nginx)
    assert lb.pid() is None
    master = cluster.start_balancer(nginx)
    try:
        workers = children(master)
        assert workers and json.loads(cluster.manifest_path.read_text())["load_balancer"]["pid"]
        with pytest.raises(ClusterError, match=f"already running \\(pid {master}\\)"):
            cluster.start_balancer(nginx)
        os.kill(master, signal.SIGSTOP)  # deaf to the graceful SIGQUIT: the grace runs out
        assert cluster.stop_balancer(grace_s=0.5) == master
        assert not [pid for pid in (master, *workers) if alive(pid)]
        assert lb.pid() is None and not lb.pid_file.exists()
        assert json.loads(cluster.manifest_path.read_text())["load_balancer"]["pid"] is None
        assert cluster.stop_balancer() is None
    finally:
        if alive(master):
            os.killpg(master, signal.SIGKILL)
