"""The harness's files without starting nodes: local.toml, generated configs, secret, manifest,
and pid files that must never make it signal a process that is not its node."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import replace

import pytest

from cluster.harness import (
    DEFAULT_SPEC_FILE,
    REPO_ROOT,
    ClusterError,
    ClusterSpec,
    LocalCluster,
)
from ringstore.config import StorageConfig, load_config


def test_local_toml_is_the_documented_development_cluster():
    spec = ClusterSpec.load(DEFAULT_SPEC_FILE)
    assert (spec.nodes, spec.host, spec.http_port_base, spec.peer_port_base, spec.port_step) == (
        3,
        "127.0.0.1",
        10018,
        10019,
        10,
    )
    assert spec.run_dir == REPO_ROOT / "cluster" / "run"
    assert dict(spec.node) == {"ring_size": 64, "n_val": 3, "log_level": "INFO"}
    defaults = StorageConfig()
    assert dict(spec.storage) == {
        "chunk_size": defaults.chunk_size,
        "inline_max": defaults.inline_max,
        "uploads_in_flight": defaults.uploads_in_flight,
    }
    text = DEFAULT_SPEC_FILE.read_text()
    for option in ("nodes", "host", "http_port_base", "peer_port_base", "port_step", "run_dir"):
        assert f"\n{option} = " in text
        block = text.split(f"\n{option} = ")[0].rsplit("\n\n", 1)[-1]
        assert "# Default" in block, f"{option} has no commented default and reason"


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ("[cluster]\nnodez = 3\n", "unknown [cluster] option(s): nodez"),
        ("[clusters]\n", "unknown section(s): clusters"),
        ("[cluster]\nnodes = 0\n", "nodes must be an integer from 1 to 50"),
        ("[cluster]\nnodes = '3'\n", "nodes must be an integer"),
        ("[cluster]\nhttp_port_base = 10018\npeer_port_base = 10028\n", "one port"),
        ("[cluster]\nhttp_port_base = 70000\n", "http_port_base must be a port"),
        ("[node]\nhttp_port = 1\n", "http_port are set per node by the harness"),
        ("[cluster\n", "cannot read"),
    ],
)
def test_a_bad_local_toml_is_refused_with_the_reason(tmp_path, toml, error):
    path = tmp_path / "local.toml"
    path.write_text(toml)
    with pytest.raises(ClusterError) as caught:
        ClusterSpec.load(path)
    assert error in str(caught.value)


def test_create_writes_secret_configs_and_manifest(tmp_path, test_spec):
    run_dir = tmp_path / "run"
    spec = test_spec.with_port_base(24000)
    cluster = LocalCluster.create(spec, run_dir)
    secret = run_dir / "secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert len(secret.read_bytes()) >= 32
    for index in (1, 2, 3):
        config = load_config(run_dir / f"node{index}" / "node.toml")
        assert config.name == f"node{index}"
        assert (config.http_port, config.peer_port) == (
            24000 + 10 * (index - 1),
            24001 + 10 * (index - 1),
        )
        assert config.data_dir == run_dir / f"node{index}" / "data"
        assert config.secret_file == secret
        assert config.log_path == run_dir / f"node{index}" / "node.log"
        assert (config.ring_size, config.n_val, config.storage.chunk_size) == (16, 3, 64 * 1024)
        assert [(m.name, m.port) for m in config.members] == [
            (f"node{i}", 24001 + 10 * (i - 1)) for i in (1, 2, 3)
        ]
    manifest = json.loads((run_dir / "cluster.json").read_text())
    assert [node["pid"] for node in manifest["nodes"]] == [None, None, None]
    assert manifest["nodes"][2]["http_url"] == "http://127.0.0.1:24020"
    with pytest.raises(ClusterError, match="already holds a cluster"):
        LocalCluster.create(spec, run_dir)
    reopened = LocalCluster.ensure(spec, run_dir)
    assert reopened.slots == cluster.slots
    with pytest.raises(ClusterError, match="holds a 3-node cluster, not 4"):
        LocalCluster.ensure(spec, run_dir, 4)
    with pytest.raises(ClusterError, match="no node 4"):
        cluster.slot(4)


def test_a_bad_node_option_fails_before_any_process_starts(tmp_path, test_spec):
    spec = replace(test_spec, node=(("ring_size", 12),))
    with pytest.raises(ClusterError, match="ring_size must be a power of two"):
        LocalCluster.create(spec, tmp_path / "run")


def test_pid_files_naming_other_processes_are_ignored_and_never_signalled(tmp_path, test_spec):
    cluster = LocalCluster.create(test_spec.with_port_base(24100), tmp_path / "run")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        for slot in cluster.slots:
            slot.pid_file.write_text(f"{stranger.pid}\n")
        cluster.slots[1].pid_file.write_text("garbage\n")
        assert cluster.running() == []
        assert cluster.stop() == {}
        with pytest.raises(ClusterError, match="node1 is not running"):
            cluster.kill_node(1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
