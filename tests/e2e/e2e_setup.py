"""Fixtures for the end-to-end tests: Debian's headless Chromium (installed here when missing)
and a 3-node cluster of real `ringstore serve` processes from cluster/harness.py, on free
ports in a tmp run directory. Every process started here is stopped in teardown.

Test modules import these fixtures (`from e2e_setup import chromium_fixture, ...`), which
pytest then offers under their names (`chromium`, `cluster`, `artifacts_dir`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cluster.harness import ClusterSpec, LocalCluster, free_port_base  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
APT_TIMEOUT_S = 900.0  # apt-get update + install of chromium and its libraries on a slow mirror
# Small ring and chunks: the same code paths as the defaults, less work per node.
SPEC = ClusterSpec(
    nodes=3,
    node=(("log_level", "INFO"), ("n_val", 3), ("ring_size", 16)),
    storage=(("chunk_size", 64 * 1024), ("inline_max", 1024)),
)
STOP_GRACE_S = 10.0


def _install_chromium() -> None:
    """Debian's chromium package, as the test setup's documented step (root only)."""
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing; install it with: sudo apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr}")


@pytest.fixture(scope="session", name="chromium")
def chromium_fixture() -> Path:
    """The headless browser's executable, installed from Debian's packages if missing."""
    if not CHROMIUM.exists():
        _install_chromium()
    return CHROMIUM


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(tmp_path_factory):
    """A running, healthy 3-node cluster of real processes for one test module."""
    spec = replace(SPEC, nodes=3).with_port_base(free_port_base(3))
    cluster = LocalCluster.create(spec, tmp_path_factory.mktemp("e2e-cluster") / "run")
    try:
        for slot in cluster.slots:
            cluster.start_node(slot.index)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop(grace_s=STOP_GRACE_S)


@pytest.fixture(name="artifacts_dir")
def artifacts_dir_fixture(tmp_path: Path) -> Path:
    """Where a failing test leaves its screenshot: $RINGSTORE_TEST_ARTIFACTS or tmp_path."""
    folder = Path(os.environ.get("RINGSTORE_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
