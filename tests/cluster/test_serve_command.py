"""`ringstore serve` and `ringstore attach` refusing what they cannot do: one clear line, exit 1."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys

from cluster.harness import REPO_ROOT, port_is_free

COMMAND_TIMEOUT_S = 60.0  # a Python start-up and an immediate exit; this bounds a hang


def ringstore(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringstore", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=cwd,
    )


def node_config(tmp_path, **options: object) -> str:
    (tmp_path / "secret").write_text("s3cret")
    lines = ["[node]", 'name = "lonely"', 'data_dir = "data"', 'secret_file = "secret"']
    lines += [f"{name} = {value!r}".replace("'", '"') for name, value in options.items()]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_serve_without_a_usable_config_says_why(tmp_path):
    missing = ringstore("serve", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("ringstore serve: cannot read")
    assert missing.stderr.count("\n") == 1
    bad_level = ringstore("serve", "--config", node_config(tmp_path, log_level="LOUD"))
    assert bad_level.returncode == 1
    assert "log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in bad_level.stderr
    assert not (tmp_path / "data").exists(), "a refused config creates nothing"


def test_serve_on_a_taken_port_logs_one_error_line_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = node_config(tmp_path, http_port=port, peer_port=0)
        result = ringstore("serve", "--config", config)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "lonely: cannot run:" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    log = (tmp_path / "data" / "node.log").read_text()
    assert errors[0] in log, "stderr and the log file carry the same lines"


def test_attach_to_nothing_fails_with_one_line(tmp_path):
    gone = ringstore("attach", "--socket", str(tmp_path / "admin.sock"), "-c", "ring")
    assert (gone.returncode, gone.stdout) == (1, "")
    assert (
        gone.stderr
        == f"error: no admin socket at {tmp_path / 'admin.sock'}: is the node running?\n"
    )
    no_cluster = ringstore("attach", "--cluster", str(tmp_path / "cluster.json"), "-c", "ring")
    assert no_cluster.returncode == 1
    assert "cannot read the cluster file" in no_cluster.stderr
    usage = ringstore("attach", "--node", "1", "--socket", "x")
    assert usage.returncode == 2 and "not allowed with" in usage.stderr


def test_bench_says_where_it_lives_when_it_cannot_be_imported(tmp_path):
    result = ringstore("bench", "--help", cwd=tmp_path)  # no bench/ here to import
    assert result.returncode == 1
    assert "the load generator (bench/load.py) is not importable here" in result.stderr


def test_free_port_probe_sees_a_listening_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert not port_is_free("127.0.0.1", taken.getsockname()[1])


def test_ringstore_never_imports_the_cluster_harness():
    offenders = []
    for path in (REPO_ROOT / "ringstore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "cluster"]
    assert not offenders
