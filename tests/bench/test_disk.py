"""bench/disk.py: a throughput from real fsynced files, nothing left behind, bad options refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import disk


def test_measures_durable_writes_and_removes_its_files(tmp_path: Path, capsys):
    disk.main(["--threads", "2", "--seconds", "0.2", "--dir", str(tmp_path)])
    first, second = capsys.readouterr().out.splitlines()
    rate = float(first.split(" ", 1)[0].replace(",", ""))
    assert rate > 0 and first.endswith("MiB/s into new fsynced 1 MiB files from 2 threads")
    assert second.startswith("a one-machine N=3 cluster's PUTs are bounded at")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--threads", "0"], "between 1 and 64"),
        (["--seconds", "0"], "more than 0"),
        (["--seconds", "nan"], "more than 0"),
        (["--dir", "/no/such/dir"], "not a directory"),
    ],
)
def test_bad_options_are_refused(args, says, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        disk.main(args)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
