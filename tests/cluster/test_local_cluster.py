"""Real node processes from the harness: replication over HTTP between processes, kill -9 and
restart, graceful stop, and the node's log lines."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 30.0  # one HTTP request to a local node; only bounds a hang
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) (node\d) \S+: "
)
PING_LINE = re.compile(r" GET /ping 200 ([0-9.]+)ms$")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "text/plain")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_write_on_one_node_survives_kill_9_of_another_and_its_restart(healthy):
    cluster = healthy
    one, two, three = (cluster.slot(i).http_url for i in (1, 2, 3))
    big = bytes(range(256)) * 800  # 200 KiB: several chunks travel between the processes
    assert http("PUT", f"{one}/buckets/t/keys/small", b"v1")[0] in (200, 204)
    assert http("PUT", f"{two}/buckets/t/keys/big", big)[0] in (200, 204)
    assert http("GET", f"{two}/buckets/t/keys/small") == (200, b"v1")
    assert http("GET", f"{three}/buckets/t/keys/big") == (200, big)

    old_pid = cluster.pid(3)
    cluster.kill_node(3)
    assert not cluster.is_running(3)
    # R = W = 2 of N = 3: one dead replica changes nothing for clients.
    assert http("GET", f"{one}/buckets/t/keys/small?r=2") == (200, b"v1")
    assert http("GET", f"{two}/buckets/t/keys/big") == (200, big)
    assert http("PUT", f"{two}/buckets/t/keys/later", b"while 3 was down")[0] in (200, 204)
    assert http("GET", f"{one}/buckets/t/keys/small?r=3")[0] == 503

    cluster.start_node(3)
    cluster.wait_healthy()
    assert cluster.pid(3) not in (None, old_pid)
    assert http("GET", f"{three}/buckets/t/keys/small?r=3") == (200, b"v1")
    assert http("GET", f"{three}/buckets/t/keys/later") == (200, b"while 3 was down")
    assert http("GET", f"{three}/buckets/t/keys/big") == (200, big)


def test_sigterm_stops_a_node_cleanly_and_it_logs_one_line_per_event(healthy):
    cluster = healthy
    assert cluster.stop_node(2) == 0
    cluster.wait_down(2)
    lines = cluster.slot(2).log_file.read_text().splitlines()
    assert lines, "the node wrote no log file"
    bad = [line for line in lines if not LOG_LINE.match(line)]
    assert not bad, bad[:3]
    assert {LOG_LINE.match(line).group(2) for line in lines} == {"node2"}
    assert any("SIGTERM received, shutting down" in line for line in lines)
    assert lines[-1].endswith("node2: exited cleanly")
    # At INFO (local.toml's level) the access line of a successful request appears only if
    # it was slow (a second or more): fast ones are DEBUG.
    ping_ms = [float(m.group(1)) for line in lines if (m := PING_LINE.search(line))]
    assert all(ms >= 1000 for ms in ping_ms), ping_ms
    cluster.restart_node(2)
    cluster.wait_healthy()
