"""The load generator against the ceiling server on 127.0.0.1, its options, and its report."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bench import ceiling
from bench.ceiling import ValueStore, serve_ceiling
from bench.load import HttpClient, build_parser, config_from_args, main, run_load
from bench.report import Recorder, plot_available
from bench.workload import (
    EXPONENTIAL_CAP_MEANS,
    KeyPicker,
    LoadConfig,
    Target,
    ValueSize,
    ValueSource,
    parse_size,
)
from ringstore.errors import BadRequest

REPO_ROOT = Path(__file__).resolve().parents[2]
LATENCY_NAMES = ("min", "mean", "p50", "p95", "p99", "p99_9", "max")


def parse(*argv: str) -> LoadConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


async def start_ceiling(nursery: trio.Nursery, size: int, directory: Path | None = None) -> str:
    port = await nursery.start(serve_ceiling, ValueStore(size, directory))
    return f"http://127.0.0.1:{port}"


def check_shape(report: dict, operations: int) -> None:
    """The invariants every report of a run of `operations` operations keeps."""
    totals = report["totals"]
    assert totals["operations"] == operations == totals["ok"] + totals["errors"]
    assert sum(op["operations"] for op in report["by_op"].values()) == operations
    assert sum(op["bytes"] for op in report["by_op"].values()) == totals["bytes"]
    latency = report["latency_ms"]
    assert list(latency) == list(LATENCY_NAMES)
    if totals["ok"]:
        ordered = [latency[name] for name in ("min", "p50", "p95", "p99", "p99_9", "max")]
        assert ordered == sorted(ordered) and ordered[0] >= 0
    assert sum(bucket["count"] for bucket in report["histogram"]) == totals["ok"]
    assert sum(point["ok"] for point in report["series"]) == totals["ok"]
    assert sum(point["errors"] for point in report["series"]) == totals["errors"]
    assert [point["t_s"] for point in report["series"]] == list(range(len(report["series"])))
    assert sum(report["errors"].values()) == totals["errors"]
    json.dumps(report)  # plain JSON values only


# -- runs against the ceiling server ----------------------------------------------------------


async def test_mixed_run_against_the_ceiling_counts_every_operation() -> None:
    size = 4096
    async with trio.open_nursery() as nursery:
        url = await start_ceiling(nursery, size)
        config = LoadConfig(
            targets=(Target.parse(url), Target.parse(url.replace("127.0.0.1", "localhost"))),
            mix=(("get", 2), ("put", 1), ("delete", 1)),
            value_size=ValueSize("fixed", size, size),
            keys=10,
            key_distribution="pareto",
            concurrency=4,
            operations=60,
            query=(("r", "2"), ("w", "2")),
            prefill=True,
            bucket_props='{"allow_mult": false}',
        )
        report = await run_load(config)
        nursery.cancel_scope.cancel()
    check_shape(report, 60)
    assert report["totals"]["ok"] == 60 and report["errors"] == {}
    assert report["prefill"] == {
        "keys": 10,
        "elapsed_s": report["prefill"]["elapsed_s"],
        "ok": 10,
        "errors": 0,
        "errors_by_kind": {},
    }
    by_op = report["by_op"]
    assert set(by_op) == {"get", "put", "delete"}
    assert by_op["get"]["bytes"] == size * by_op["get"]["ok"]
    assert by_op["put"]["bytes"] == size * by_op["put"]["ok"]
    assert by_op["delete"]["bytes"] == 0
    assert report["config"]["operation"] == "mixed"
    assert report["config"]["query"] == {"r": "2", "w": "2"}
    assert report["config"]["targets"] == [url, url.replace("127.0.0.1", "localhost")]


async def test_get_from_file_moves_whole_values(tmp_path: Path) -> None:
    size = 2 * 1024 * 1024 + 3  # more than one file piece, not a multiple of it
    async with trio.open_nursery() as nursery:
        url = await start_ceiling(nursery, size, tmp_path)
        config = LoadConfig(targets=(Target.parse(url),), concurrency=2, operations=6)
        report = await run_load(config)
        nursery.cancel_scope.cancel()
    check_shape(report, 6)
    assert report["totals"]["bytes"] == 6 * size
    assert report["totals"]["mb_per_s"] > 0


async def test_a_duration_bounds_the_run() -> None:
    async with trio.open_nursery() as nursery:
        url = await start_ceiling(nursery, 100)
        config = LoadConfig(targets=(Target.parse(url),), concurrency=2, duration_s=0.3)
        report = await run_load(config)
        nursery.cancel_scope.cancel()
    assert report["elapsed_s"] == 0.3
    assert report["totals"]["ok"] > 0
    assert len(report["series"]) == 1
    check_shape(report, report["totals"]["operations"])


async def test_an_unreachable_target_is_counted_as_connect_errors() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    config = LoadConfig(targets=(Target.parse(f"http://127.0.0.1:{port}"),), operations=3)
    report = await run_load(config)
    check_shape(report, 3)
    assert report["errors"] == {"connect": 3}
    assert str(port) in report["error_examples"]["connect"]


async def test_a_silent_server_is_counted_as_timeouts() -> None:
    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, hold, 0)
        port = listeners[0].socket.getsockname()[1]
        config = LoadConfig(
            targets=(Target.parse(f"http://127.0.0.1:{port}"),), operations=2, timeout_s=0.05
        )
        with trio.fail_after(5):
            report = await run_load(config)
        nursery.cancel_scope.cancel()
    check_shape(report, 2)
    assert report["errors"] == {"timeout": 2}


async def test_the_ceiling_answers_the_generators_requests_on_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        url = await start_ceiling(nursery, 10)
        client = HttpClient(Target.parse(url))
        try:
            assert await client.request("GET", "/ping") == (200, 2)
            assert await client.request("GET", "/buckets/b/keys/k?r=2") == (200, 10)
            assert await client.request("PUT", "/buckets/b/keys/k", b"x" * 300_000) == (204, 0)
            assert (await client.request("GET", "/buckets/b"))[0] == 404
            assert await client.request("DELETE", "/buckets/b/keys/k") == (204, 0)
            assert await client.request("HEAD", "/ping") == (404, 0)
        finally:
            await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--value-size", "1TiB"], "byte count"),
        (["--value-size", "1GiB"], "value size"),
        (["--dir", "/nonexistent/ceiling"], "not a directory"),
        (["--port", "70000"], "not a TCP port"),
    ],
)
def test_the_ceiling_refuses_bad_options(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_main_against_the_ceiling_process_writes_json(tmp_path: Path, capsys) -> None:
    ceiling = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling", "--port", "0", "--value-size", "1KiB"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = ceiling.stdout.readline()  # EOF (and a failed test) if the ceiling dies
        assert line.startswith("ceiling listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        output = tmp_path / "report.json"
        argv = [url, "--op", "put", "-n", "20", "-c", "3", "--w", "all", "-o", str(output)]
        assert main([*argv, "--label", "smoke", "--value-size", "1KiB"]) == 0
    finally:
        ceiling.terminate()
        ceiling.wait(timeout=10)
        ceiling.stdout.close()
    report = json.loads(output.read_text())
    check_shape(report, 20)
    assert report["label"] == "smoke"
    assert report["totals"]["ok"] == 20 and report["totals"]["bytes"] == 20 * 1024
    assert report["config"]["query"] == {"w": "all"}
    summary = capsys.readouterr().out
    assert summary.startswith("smoke: put 1KiB x3 -> " + url)
    assert "ops/s" in summary and "p99.9" in summary


# -- options -----------------------------------------------------------------------------------


def test_options_become_a_config() -> None:
    config = parse(
        "http://127.0.0.1:8098",
        "http://[::1]:8099/",
        "--op",
        "mixed",
        "--mix",
        "get=3,put=1",
        "--value-size",
        "uniform:1KiB:1MiB",
        "--keys",
        "500",
        "--key-dist",
        "sequential",
        "-c",
        "64",
        "-d",
        "20",
        "-n",
        "1000",
        "--r",
        "2",
        "--w",
        "quorum",
        "--query",
        "notfound_ok=false",
        "--prefill",
    )
    assert config.targets == (Target("127.0.0.1", 8098), Target("::1", 8099))
    assert config.targets[1].url == "http://[::1]:8099"
    assert config.mix == (("get", 3), ("put", 1)) and config.operation == "mixed"
    assert config.value_size == ValueSize("uniform", 1024, 1024**2)
    assert (config.keys, config.key_distribution, config.concurrency) == (500, "sequential", 64)
    assert (config.duration_s, config.operations) == (20.0, 1000)
    assert config.query == (("r", "2"), ("w", "quorum"), ("notfound_ok", "false"))
    assert config.prefill and not config.allow_remote
    assert config.key_name(7) == "k007"


def test_sizes_and_value_size_forms() -> None:
    assert [parse_size(text) for text in ("0", "4096", "4KiB", "4k", "1MiB", "2g")] == [
        0,
        4096,
        4096,
        4096,
        1024**2,
        2 * 1024**3,
    ]
    assert ValueSize.parse("1MiB") == ValueSize("fixed", 1024**2, 1024**2)
    assert ValueSize.parse("exponential:1KiB:4KiB").high == 1024 + EXPONENTIAL_CAP_MEANS * 4096
    assert ValueSize.parse("uniform:1KiB:4KiB").describe() == "uniform:1KiB:4KiB"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "bounded"),
        (["-n", "0"], "at least 1"),
        (["-d", "0"], "positive"),
        (["-d", "inf"], "positive"),
        (["-d", "nan"], "positive"),
        (["-n", "5", "-c", "0"], "concurrency"),
        (["-n", "5", "--keys", "0"], "key space"),
        (["-n", "5", "--mix", "get=1"], "--op mixed"),
        (["-n", "5", "--op", "mixed", "--mix", "get=1,frob=2"], "OP=WEIGHT"),
        (["-n", "5", "--op", "mixed", "--mix", "get=1,get=2"], "twice"),
        (["-n", "5", "--op", "mixed", "--mix", "get=0"], "positive weight"),
        (["-n", "5", "--value-size", "4KB"], "byte count"),
        (["-n", "5", "--value-size", "uniform:4KiB:1KiB"], "<="),
        (["-n", "5", "--value-size", "exponential:1KiB:0"], "mean"),
        (["-n", "5", "--value-size", "normal:1:2"], "uniform:MIN:MAX"),
        (["-n", "5", "--value-size", "1GiB"], "<="),
        (["-n", "5", "--r", "two"], "quorum parameter r"),
        (["-n", "5", "--query", "r"], "NAME=VALUE"),
        (["-n", "5", "--r", "2", "--query", "r=3"], "twice"),
        (["-n", "5", "--query", "Bad=1"], "lowercase"),
        (["-n", "5", "--bucket-props", "{"], "not JSON"),
        (["-n", "5", "--bucket-props", "[1]"], "JSON object"),
        (["-n", "5", "--bucket", ""], "bucket name"),
        (["-n", "5", "--timeout", "0"], "timeout"),
    ],
)
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse("http://127.0.0.1:8098", *argv)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8098",
        "127.0.0.1:8098",
        "http://127.0.0.1:8098/buckets",
        "http://127.0.0.1:8098/?r=2",
        "http://127.0.0.1:notaport",
        "http://127.0.0.1:99999",
        "http://:8098",
        "http://user@127.0.0.1:8098",
    ],
)
def test_bad_target_urls_are_refused(url: str) -> None:
    with pytest.raises(BadRequest, match="target"):
        parse(url, "-n", "5")


def test_bad_options_exit_with_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["http://127.0.0.1:8098"])
    assert exit_info.value.code == 2
    assert "must be bounded" in capsys.readouterr().err


def test_an_output_in_a_missing_directory_is_refused_before_the_run(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:1", "-n", "1", "-o", str(tmp_path / "no" / "r.json")])
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.skipif(plot_available(), reason="matplotlib is installed here")
def test_a_plot_without_matplotlib_is_refused_before_the_run(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:1", "-n", "1", "--plot", str(tmp_path / "p.png")])
    assert "matplotlib" in capsys.readouterr().err


# -- loopback only, unless told -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1", "http://127.9.8.7:1", "http://[::1]:1", "http://localhost:1"],
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert parse(url, "-n", "1").targets[0].is_loopback()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8098",
        "http://192.168.1.20:8098",
        "http://0.0.0.0:8098",
        "http://[2001:db8::1]:8098",
        "http://[::ffff:10.0.0.1]:8098",
        "http://example.com:8098",
        "http://localhost.example.com:8098",
    ],
)
def test_remote_targets_need_allow_remote(url: str) -> None:
    with pytest.raises(BadRequest, match="--allow-remote"):
        parse("http://127.0.0.1:8098", url, "-n", "1")
    config = parse("http://127.0.0.1:8098", url, "-n", "1", "--allow-remote")
    assert not config.targets[1].is_loopback()


def test_main_refuses_a_remote_target_before_any_connection(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["http://203.0.113.9:8098", "-n", "1"])
    assert exit_info.value.code == 2
    assert "refusing non-loopback target(s) http://203.0.113.9:8098" in capsys.readouterr().err


# -- the pure parts: keys, values, the recorder --------------------------------------------------


def test_key_distributions() -> None:
    rng = random.Random(3)
    sequential = KeyPicker(5, "sequential")
    assert [sequential.pick(rng) for _ in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    uniform = [KeyPicker(1000, "uniform").pick(rng) for _ in range(5000)]
    assert min(uniform) >= 0 and max(uniform) < 1000 and len(set(uniform)) > 900
    pareto_picker = KeyPicker(1000, "pareto")
    pareto = [pareto_picker.pick(rng) for _ in range(5000)]
    assert min(pareto) >= 0 and max(pareto) < 1000
    assert sum(key < 200 for key in pareto) > 0.6 * len(pareto)  # skewed to the low keys
    assert sum(key < 200 for key in uniform) < 0.3 * len(uniform)


def test_values_differ_and_have_their_sizes() -> None:
    rng = random.Random(4)
    fixed = ValueSource(ValueSize("fixed", 4096, 4096), seed=1)
    values = [bytes(fixed.value(rng)) for _ in range(50)]
    assert {len(value) for value in values} == {4096}
    assert len(set(values)) == 50
    exponential = ValueSize.parse("exponential:10:100")
    sizes = [exponential.sample(rng) for _ in range(2000)]
    assert min(sizes) >= 10 and max(sizes) <= exponential.high
    assert 80 < sum(sizes) / len(sizes) - 10 < 120
    uniform = ValueSource(ValueSize.parse("uniform:0:10"), seed=1)
    assert {len(uniform.value(rng)) for _ in range(500)} == set(range(11))


def test_recorder_percentiles_errors_and_series() -> None:
    recorder = Recorder(started_s=0.0)
    for ms in range(1, 101):  # 1 .. 100 ms, all ending in the run's first second
        recorder.ok("get", 0.0, ms / 1000, 10)
    recorder.ok("delete", 2.0, 2.5, 0, status=404)  # third second; nothing in the second
    recorder.ok("put", 2.0, 2.6, 7, status=204)
    recorder.error("put", 2.7, "http_503", "PUT /x answered 503")
    recorder.error("put", 2.8, "http_503", "a later message")
    report = recorder.report(elapsed_s=3.0)
    check_shape(report, 104)
    latency = report["by_op"]["get"]["latency_ms"]
    assert (latency["p50"], latency["p95"], latency["p99"]) == (50.0, 95.0, 99.0)
    assert (latency["min"], latency["p99_9"], latency["max"]) == (1.0, 100.0, 100.0)
    totals = report["totals"]
    assert (totals["ok"], totals["errors"], totals["not_found"], totals["bytes"]) == (
        102,
        2,
        1,
        1007,
    )
    assert totals["ops_per_s"] == 34.0
    assert report["errors"] == {"http_503": 2}
    assert report["error_examples"] == {"http_503": "PUT /x answered 503"}
    assert [(p["ok"], p["errors"]) for p in report["series"]] == [(100, 0), (0, 0), (2, 2)]
    assert report["series"][1]["p99_ms"] is None
    buckets = {bucket["le_ms"]: bucket["count"] for bucket in report["histogram"]}
    assert [buckets[bound] for bound in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)] == [
        1,
        1,
        3,
        5,
        10,
        30,
        50,
        0,
        1,
        1,
    ]


def test_an_empty_report_has_no_latencies() -> None:
    report = Recorder(started_s=0.0).report(elapsed_s=0.5)
    check_shape(report, 0)
    assert set(report["latency_ms"].values()) == {None}
    assert report["series"] == [
        {
            "t_s": 0,
            "ok": 0,
            "errors": 0,
            "bytes": 0,
            "ops_per_s": 0.0,
            "mb_per_s": 0.0,
            "p50_ms": None,
            "p99_ms": None,
            "max_ms": None,
        }
    ]
