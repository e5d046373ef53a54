"""scripts/start_cluster.sh, stop_cluster.sh and attach.sh as a developer runs them (in a tmp run
directory on free ports): start, re-run idempotence, restart of a dead node, stop by pid."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.harness import REPO_ROOT, LocalCluster, free_port_base

pytestmark = pytest.mark.slow

SCRIPT_TIMEOUT_S = 120.0  # a start waits for health itself (60 s at most); this bounds a hang


def script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )


def pids(run_dir) -> dict[str, int | None]:
    manifest = json.loads((run_dir / "cluster.json").read_text())
    return {node["name"]: node["pid"] for node in manifest["nodes"]}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "run"
    yield run_dir
    if LocalCluster.exists(run_dir):  # whatever the test left running
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


def test_start_is_idempotent_restarts_only_dead_nodes_and_stop_stops_exactly_its_own(run_dir, env):
    first = script("start_cluster.sh", env=env)
    assert first.returncode == 0, first.stderr
    base = int(env["RINGSTORE_CLUSTER_PORT_BASE"])
    for port in (base, base + 10, base + 20):
        assert f"http://127.0.0.1:{port}" in first.stdout
    assert "scripts/attach.sh 1" in first.stdout
    assert f"curl -XPUT -H 'Content-Type: text/plain' -d 'hello' http://127.0.0.1:{base}/" in (
        first.stdout
    )
    assert first.stdout.count("(started)") == 3
    started = pids(run_dir)
    assert all(pid and alive(pid) for pid in started.values())
    assert stat.S_IMODE(os.stat(run_dir / "secret").st_mode) == 0o600
    manifest = json.loads((run_dir / "cluster.json").read_text())
    node2 = manifest["nodes"][1]
    assert node2["name"] == "node2" and node2["http_url"] == f"http://127.0.0.1:{base + 10}"
    assert node2["peer_address"] == f"127.0.0.1:{base + 11}"
    assert node2["admin_socket"] == str(run_dir / "node2" / "data" / "admin.sock")

    stored = script("attach.sh", "2", "-c", "put kept k survives restarts", env=env)
    assert stored.returncode == 0, stored.stderr
    again = script("start_cluster.sh", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(already running)") == 3
    assert pids(run_dir) == started

    os.kill(started["node2"], signal.SIGKILL)
    while alive(started["node2"]):  # reaped by init; no event to wait on
        time.sleep(0.02)
    revived = script("start_cluster.sh", env=env)
    assert revived.returncode == 0, revived.stderr
    assert revived.stdout.count("(already running)") == 2
    assert "node2" in revived.stdout.split("(started)")[0].splitlines()[-1]
    now = pids(run_dir)
    assert now["node1"] == started["node1"] and now["node3"] == started["node3"]
    assert now["node2"] not in (None, started["node2"])
    stats = script("attach.sh", "2", "-c", "stats", env=env)
    counts = dict(line.split(None, 1) for line in stats.stdout.splitlines())
    assert counts["ringstore_objects"] == "1", "node2 restarted on its own data"
    got = script("attach.sh", "node2", "-c", "get kept k", env=env)
    assert (got.returncode, got.stdout) == (0, "survives restarts\n")

    other = script("start_cluster.sh", "5", env=env)
    assert other.returncode == 1
    assert "holds a 3-node cluster, not 5" in other.stderr
    assert pids(run_dir) == now

    # A stale pid file naming someone else's process: stop must leave that process alone.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        script("stop_cluster.sh", env=env)
        (run_dir / "node1" / "node.pid").write_text(f"{stranger.pid}\n")
        stopped = script("stop_cluster.sh", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert "no node of the cluster is running" in stopped.stdout
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
    assert not any(alive(pid) for pid in now.values())
    assert set(pids(run_dir).values()) == {None}
    assert not list(run_dir.glob("node*/data/admin.sock"))


def test_stop_reports_each_node_and_a_second_stop_finds_nothing(run_dir, env):
    assert script("start_cluster.sh", "2", env=env).returncode == 0
    running = pids(run_dir)
    stopped = script("stop_cluster.sh", env=env)
    assert stopped.returncode == 0, stopped.stderr
    for name, pid in running.items():
        assert f"{name}  pid {pid}  stopped" in stopped.stdout
        assert not alive(pid)
    assert not list(run_dir.glob("node*/node.pid"))
    assert "no node of the cluster is running" in script("stop_cluster.sh", env=env).stdout
    assert script("attach.sh", "1", "-c", "ring", env=env).returncode == 1
