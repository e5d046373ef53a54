"""Fixtures for the process tests: real `ringstore serve` processes from cluster/harness.py, on
free ports and in a tmp run directory, so they never touch cluster/run or a developer's
cluster. Every process started here is stopped in teardown."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cluster.harness import ClusterSpec, LocalCluster, free_port_base  # noqa: E402

# Small ring and chunks: the same code paths as the defaults, less work per node.
SPEC = ClusterSpec(
    nodes=3,
    node=(("log_level", "INFO"), ("n_val", 3), ("ring_size", 16)),
    storage=(("chunk_size", 64 * 1024), ("inline_max", 1024)),
)
STOP_GRACE_S = 10.0


def new_cluster(run_dir: Path, count: int = 3) -> LocalCluster:
    """A cluster of `count` nodes on free ports in `run_dir`, created but not started."""
    spec = replace(SPEC, nodes=count).with_port_base(free_port_base(count))
    return LocalCluster.create(spec, run_dir)


@pytest.fixture
def test_spec() -> ClusterSpec:
    """The tests' cluster definition (fixed ports: pick free ones before starting nodes)."""
    return SPEC


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One 3-node cluster for the session's process tests (starting one costs seconds)."""
    cluster = new_cluster(tmp_path_factory.mktemp("cluster") / "run")
    try:
        for slot in cluster.slots:
            cluster.start_node(slot.index)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop(grace_s=STOP_GRACE_S)


@pytest.fixture
def healthy(cluster):
    """The session cluster with every node running and seen up; tests kill and restart nodes."""
    for slot in cluster.slots:
        if not cluster.is_running(slot.index):
            cluster.start_node(slot.index)
    cluster.wait_healthy()
    return cluster
