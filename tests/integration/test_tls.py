"""Peers over mutual TLS: a cluster works; a node with a foreign CA certificate cannot join."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trustme

from ringstore.config import TlsConfig
from ringstore.errors import QuorumError
from tests.integration.cluster import TEXT, Cluster, body_of

pytestmark = pytest.mark.integration


def tls_files(tmp_path, ca: trustme.CA, name: str) -> TlsConfig:
    folder = tmp_path / f"tls-{name}"
    folder.mkdir()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return TlsConfig(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


async def test_cluster_over_mutual_tls(nursery, tmp_path):
    cluster = Cluster(nursery, tmp_path, 3, tls=tls_files(tmp_path, trustme.CA(), "good"))
    await cluster.start()
    await cluster.nodes["n1"].coordinator.put(b"b", b"k", TEXT, body_of(b"v"), None, {"w": "3"})
    result = await cluster.nodes["n3"].coordinator.get(b"b", b"k", {"r": "3"})
    assert result.object.siblings()[0].inline == b"v"
    cluster.stop_all()


async def test_node_with_foreign_certificate_is_never_up(nursery, tmp_path):
    cluster = Cluster(nursery, tmp_path, 3, tls=tls_files(tmp_path, trustme.CA(), "good"))
    rogue = tls_files(tmp_path, trustme.CA(), "rogue")
    cluster.configs["n3"] = replace(cluster.configs["n3"], tls=rogue)
    for name in cluster.names:
        await cluster.start_node(name)
    n1 = cluster.nodes["n1"]
    await cluster.wait_views(lambda node, up: node.name == "n3" or up >= {"n1", "n2"})
    with pytest.raises(QuorumError):
        await n1.coordinator.put(b"b", b"k", TEXT, body_of(b"v"), None, {"w": "3"})
    assert "n3" not in n1.liveness.up_nodes()
    assert await cluster.nodes["n3"].replica.get(b"b", b"k") is None
    cluster.stop_all()
