"""The standard matrix's RESULTS.md section: cells, ratio targets, append-only writing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench.matrix import main

SIZE_BYTES = {"4KiB": 4096, "1MiB": 1024**2}


def fake_report(
    ops_per_s: float,
    size: str,
    p99_ms: float,
    errors: dict | None = None,
    elapsed_s: float = 20.0,
) -> dict:
    latency = dict.fromkeys(("min", "mean", "p50", "p95", "p99", "p99_9", "max"), p99_ms)
    operations = round(ops_per_s * elapsed_s)
    totals = {
        "operations": operations,
        "bytes": operations * SIZE_BYTES[size],
        "ops_per_s": ops_per_s,
        "mb_per_s": ops_per_s * SIZE_BYTES[size] / 1e6,
    }
    return {"elapsed_s": elapsed_s, "totals": totals, "latency_ms": latency, "errors": errors or {}}


def write_matrix(directory: Path, cluster_ops: float, ceiling_ops: float) -> None:
    """Every cell as run.sh leaves it: the cluster's in one report, the ceiling's in halves."""
    for op in ("put", "get"):
        for size in ("4KiB", "1MiB"):
            for concurrency in (16, 64):
                name = f"{op}_{size}_c{concurrency}"
                report = fake_report(cluster_ops, size, 20.0)
                (directory / f"cluster_{name}.json").write_text(json.dumps(report))
                for part in ("before", "after"):
                    report = fake_report(ceiling_ops, size, 5.0, elapsed_s=10.0)
                    (directory / f"ceiling_{name}.{part}.json").write_text(json.dumps(report))


def run_matrix(reports: Path, results: Path, *extra: str) -> None:
    assert main([str(reports), "--append", str(results), "--duration", "20", *extra]) == 0


def test_a_section_is_appended_with_every_cell_and_target(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=40.0, ceiling_ops=100.0)
    (reports / "unrelated.json").write_text("{}")  # not a cell: ignored
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## an earlier section by someone else\n")
    run_matrix(reports, results, "--commit", "abc123", "--note", "a note")
    text = results.read_text()
    assert text.startswith("# Results\n\n## an earlier section by someone else\n")
    assert "- Code: abc123" in text and "- a note" in text and "20 s per cell" in text
    assert text.count("| 4KiB | GET | 16 | 40.0 |") == 1
    assert text.count("| 100.0 / 100.0 | 0.400 |\n") == 8  # ceiling halves, then the ratio
    assert "two halves of 10 s right before and right after" in text
    assert "| 4KiB GET ops/s, c16, vs ceiling | 0.400 | >= 0.30 | met |" in text
    assert "| 1MiB PUT MB/s, c64, vs ceiling | 0.400 | >= 0.10 | met |" in text
    assert "| 4KiB PUT p99 at c16 | 20.00 ms | < 50 ms | met |" in text
    assert "quick" not in text


def test_missed_targets_and_missing_cells_are_shown(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=20.0, ceiling_ops=100.0)
    for part in ("before", "after"):
        (reports / f"ceiling_get_1MiB_c64.{part}.json").unlink()
    slow = fake_report(20.0, "4KiB", 80.0, {"http_503": 3})
    (reports / "cluster_get_4KiB_c16.json").write_text(json.dumps(slow))
    results = tmp_path / "RESULTS.md"
    run_matrix(reports, results, "--quick")
    run_matrix(reports, results, "--quick")
    text = results.read_text()
    assert text.count("(quick smoke run: not a measurement)") == 2  # appended, not rewritten
    assert "| 4KiB GET ops/s, c16, vs ceiling | 0.200 | >= 0.30 | **missed** |" in text
    assert "| 4KiB GET p99 at c16 | 80.00 ms | < 50 ms | **missed** |" in text
    assert "| 3 http_503 |" in text
    assert "| 1MiB GET MB/s, c64, vs ceiling from file | - | >= 0.25 | not measured |" in text
    assert "| 1MiB | GET | 64 | 20.0 |" in text and "| not run | - | - | - | - |" in text


def test_the_ceiling_halves_are_joined_over_their_operations_and_time(tmp_path: Path) -> None:
    """A ceiling that ran at 100 ops/s for 10 s before the cluster's cell and at 300 for 30 s
    after it did 10,000 operations in 40 s: 250 ops/s, and the ratio is to that."""
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=50.0, ceiling_ops=100.0)
    after = fake_report(300.0, "4KiB", 9.0, {"timeout": 2}, elapsed_s=30.0)
    (reports / "ceiling_get_4KiB_c16.after.json").write_text(json.dumps(after))
    results = tmp_path / "RESULTS.md"
    run_matrix(reports, results)
    text = results.read_text()
    # ceiling ops/s, MB/s, p99 (the higher half's), ops/s by part, ratio
    assert "| 250.0 | 1.02 | 9.00 | 100.0 / 300.0 | 0.200 |\n" in text
    assert "| 4KiB GET ops/s, c16, vs ceiling | 0.200 | >= 0.30 | **missed** |" in text
    assert "| 4KiB GET ops/s, c64, vs ceiling | 0.500 | >= 0.30 | met |" in text


def test_an_empty_report_directory_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        run_matrix(tmp_path, tmp_path / "RESULTS.md")
    assert "no load reports" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()


def test_memory_is_reported_per_node_peak_and_split(tmp_path: Path) -> None:
    """The nodes' memory comes from /proc: here the test process plays the one node."""
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=40.0, ceiling_ops=100.0)
    cluster_json = tmp_path / "cluster.json"
    cluster_json.write_text(json.dumps({"nodes": [{"name": "node1", "pid": os.getpid()}]}))
    results = tmp_path / "RESULTS.md"
    run_matrix(reports, results, "--cluster-json", str(cluster_json))
    text = results.read_text()
    assert "| node1 peak RSS over the whole run (VmHWM) |" in text
    split = re.search(r"anonymous \+ file-backed MiB .*: node1 (\d+) \+ (\d+)", text)
    assert split is not None and int(split[1]) > 0


def big_object_report(identical: bool, peaks: dict[str, float]) -> dict:
    return {
        "size_bytes": 2 * 1024**3,
        "identical": identical,
        "put": {"mb_per_s": 48.7},
        "get": {"mb_per_s": 274.9},
        "peak_rss_mib": {name: {"put": peak, "get": peak / 2} for name, peak in peaks.items()},
    }


def test_a_big_object_run_fills_its_target_rows(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=40.0, ceiling_ops=100.0)
    results = tmp_path / "RESULTS.md"
    run_matrix(reports, results)
    not_measured = "| RSS while one 2 GiB object is written and read back | - | - | not measured"
    assert not_measured in results.read_text()
    big = tmp_path / "big.json"
    big.write_text(json.dumps(big_object_report(True, {"node1": 50.0, "node2": 210.0})))
    results.unlink()
    run_matrix(reports, results, "--bigobject", str(big))
    text = results.read_text()
    assert not_measured not in text
    assert (
        "| node1 peak RSS while one 2 GiB object is written and read back (49 / 275 MB/s)"
        " | 50.0 MiB | < 200 MiB | met |"
    ) in text
    assert "(49 / 275 MB/s) | 210.0 MiB | < 200 MiB | **missed** |" in text
    big.write_text(json.dumps(big_object_report(False, {"node1": 50.0})))
    run_matrix(reports, results, "--bigobject", str(big))
    bad_bytes = "| the 2 GiB object read back | different bytes | identical | **missed** |"
    assert bad_bytes in results.read_text()


@pytest.mark.parametrize("content", [None, "{broken"])
def test_an_unreadable_big_object_report_is_refused(tmp_path: Path, capsys, content) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    write_matrix(reports, cluster_ops=40.0, ceiling_ops=100.0)
    big = tmp_path / "big.json"
    if content is not None:
        big.write_text(content)
    with pytest.raises(SystemExit):
        run_matrix(reports, tmp_path / "RESULTS.md", "--bigobject", str(big))
    assert f"--bigobject {big}" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()
