"""bench/ab.sh refuses bad arguments at once, before it exports or starts anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "ab.sh"


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "usage"),
        (("--op", "delete", "HEAD"), "--op is get or put"),
        (("--size", "3GB", "HEAD"), "--size is a number of bytes, KiB or MiB"),
        (("--size",), "usage"),
        (("--rounds", "0", "HEAD"), "positive integers"),
        (("--seconds", "1.5", "HEAD"), "positive integers"),
        (("--frobnicate", "HEAD"), "usage"),
        (("HEAD", "HEAD", "HEAD"), "usage"),
        (("no-such-revision-anywhere",), "no such revision"),
    ],
)
def test_bad_arguments_are_refused_and_leave_nothing(args, says, tmp_path: Path) -> None:
    result = run(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert says in result.stderr
    assert list(tmp_path.iterdir()) == []  # no export, no run directory left behind
