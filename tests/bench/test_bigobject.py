"""The large-object memory run: a real in-process cluster, the ceiling as a server that gives
back other bytes, and bad input of every kind refused before any request."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from bench.bigobject import (
    MIB,
    BigObjectFailed,
    NodeProcess,
    main,
    nodes_of,
    run_big_object,
    summary,
)
from bench.ceiling import ValueStore, serve_ceiling
from bench.load import HttpClient
from bench.workload import Target
from ringstore.errors import BadRequest
from tests.integration.cluster import Cluster

# A few chunks of the test cluster's 4 KiB, and a piece boundary of the generator's 1 MiB.
OBJECT_BYTES = MIB + 12_345


def here(name: str, url: str) -> NodeProcess:
    """A node served in this process: its memory is this process's."""
    return NodeProcess(name, Target.parse(url), os.getpid())


async def test_an_object_goes_through_a_real_cluster_and_comes_back_whole(
    nursery, tmp_path: Path
) -> None:
    cluster = Cluster(nursery, tmp_path, 3)
    await cluster.start()
    nodes = [
        here(name, "http://{}:{}".format(*node.http_address))
        for name, node in sorted(cluster.nodes.items())
    ]
    try:
        await check_a_round_trip(nodes)
    finally:
        cluster.stop_all()


async def check_a_round_trip(nodes: list[NodeProcess]) -> None:
    report = await run_big_object(nodes, OBJECT_BYTES, seed=5)
    assert report["identical"] and report["get"]["bytes"] == OBJECT_BYTES
    assert (report["written_through"], report["read_through"]) == ("n1", "n2")
    assert report["delete_status"] == 204
    assert report["put"]["mb_per_s"] > 0 and report["get"]["mb_per_s"] > 0
    peaks = report["peak_rss_mib"]
    assert sorted(peaks) == ["n1", "n2", "n3"]
    for by_phase in peaks.values():
        assert set(by_phase) == {"put", "get"}
        assert min(by_phase.values()) > 0
    limit = report["rss_limit_mib"]
    assert report["met"] == all(peak < limit for p in peaks.values() for peak in p.values())
    assert "bytes back identical" in summary(report)
    # Deleted at the end: the bucket is left as it was found.
    client = HttpClient(nodes[2].target)
    path = f"/buckets/bench-bigobject/keys/object-5-{OBJECT_BYTES}"
    assert (await client.request("GET", path))[0] == 404
    await client.aclose()


async def test_other_bytes_back_are_reported_and_miss(nursery) -> None:
    """The ceiling drops what is PUT and answers every GET with its own value."""
    port = await nursery.start(serve_ceiling, ValueStore(OBJECT_BYTES))
    node = here("ceiling", f"http://127.0.0.1:{port}")
    report = await run_big_object([node], OBJECT_BYTES)
    assert report["get"]["bytes"] == OBJECT_BYTES
    assert not report["identical"] and not report["met"]
    assert "DIFFERENT" in summary(report) and "MISSED" in summary(report)


async def test_a_node_that_is_not_there_fails_the_run(nursery) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens on this port now
    with pytest.raises(BigObjectFailed, match="PUT"):
        await run_big_object([here("gone", f"http://127.0.0.1:{port}")], MIB)


@pytest.mark.parametrize("size", [0, -1, 17 * 1024**3])
async def test_sizes_out_of_range_are_refused(size: int) -> None:
    with pytest.raises(BadRequest, match="size"):
        await run_big_object([here("n1", "http://127.0.0.1:1")], size)


def manifest_file(tmp_path: Path, nodes: object) -> Path:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def test_the_manifest_gives_the_nodes(tmp_path: Path) -> None:
    nodes = nodes_of({"nodes": [{"name": "node1", "http_url": "http://127.0.0.1:8098", "pid": 7}]})
    assert nodes == [NodeProcess("node1", Target("127.0.0.1", 8098), 7)]
    for bad in ({}, {"nodes": []}, {"nodes": [{"name": "n", "http_url": "http://h:1"}]}):
        with pytest.raises(BadRequest):
            nodes_of(bad)


@pytest.mark.parametrize(
    ("nodes", "extra", "message"),
    [
        ([], [], "names no nodes"),
        ([{"name": "n1", "http_url": "http://127.0.0.1:1"}], [], "pid"),
        ([{"name": "n1", "http_url": "ftp://x", "pid": 1}], [], "http://"),
        ([{"name": "n1", "http_url": "http://192.0.2.1:1", "pid": "self"}], [], "not on this"),
        ([{"name": "n1", "http_url": "http://127.0.0.1:1", "pid": 2**22 + 1}], [], "No such"),
        (
            [{"name": "n1", "http_url": "http://127.0.0.1:1", "pid": "self"}],
            ["--size", "2 GB"],
            "size",
        ),
        (
            [{"name": "n1", "http_url": "http://127.0.0.1:1", "pid": "self"}],
            ["--size", "0"],
            "size",
        ),
        (
            [{"name": "n1", "http_url": "http://127.0.0.1:1", "pid": "self"}],
            ["-o", "/no/dir/r.json"],
            "no directory",
        ),
    ],
)
def test_bad_options_are_refused_before_any_request(
    tmp_path: Path, capsys, nodes: list, extra: list[str], message: str
) -> None:
    for node in nodes:
        if node.get("pid") == "self":
            node["pid"] = os.getpid()
    with pytest.raises(SystemExit) as exited:
        main(["--cluster-json", str(manifest_file(tmp_path, nodes)), *extra])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "{not json", "[]", '{"nodes": 3}'])
def test_a_missing_or_malformed_manifest_is_refused(tmp_path: Path, capsys, content) -> None:
    path = tmp_path / "cluster.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        main(["--cluster-json", str(path)])
    assert exited.value.code == 2
    assert f"--cluster-json {path}:" in capsys.readouterr().err


async def test_main_writes_the_report_and_fails_on_other_bytes(
    nursery, tmp_path: Path, capsys
) -> None:
    """The command line end to end (its own Trio run, in a worker thread) against the ceiling."""
    port = await nursery.start(serve_ceiling, ValueStore(MIB))
    url = f"http://127.0.0.1:{port}"
    manifest = manifest_file(tmp_path, [{"name": "c", "http_url": url, "pid": os.getpid()}])
    output = tmp_path / "big.json"
    argv = ["--cluster-json", str(manifest), "--size", "1MiB", "-o", str(output)]
    assert await trio.to_thread.run_sync(main, argv) == 1
    report = json.loads(output.read_text())
    assert report["size_bytes"] == MIB and not report["identical"]
    assert "verdict: MISSED" in capsys.readouterr().out
