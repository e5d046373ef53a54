"""bench/pagecache.py: three figures from real files, nothing left behind, bad options refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import pagecache


def test_measures_each_way_of_writing_and_removes_its_files(tmp_path: Path, capsys):
    pagecache.main(["--mib", "3", "--dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [
        "copy",
        "new",
        "overwrite",
        "fsynced",
        "dropped",
        "new",
        "dropped",
    ]
    assert all("ms of CPU per MiB" in line for line in lines[:5])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--mib", "0"], "between 1 and 4096"), (["--dir", "/no/such/dir"], "not a directory")],
)
def test_bad_options_are_refused(args, says, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        pagecache.main(args)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
