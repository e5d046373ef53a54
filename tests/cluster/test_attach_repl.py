"""`ringstore attach` as a person uses it: the console on a pseudo-terminal (readline, history,
Ctrl-C, Ctrl-D), nodes killed from another terminal while attached, and `-c` scripting."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.slow

EXPECT_TIMEOUT_S = 30.0  # a console answer takes well under a second; this bounds a hang
CTRL_C, CTRL_D, CTRL_P = "\x03", "\x04", "\x10"
PROMPT1 = r"^node1> "


class Terminal:
    """A program on a pseudo-terminal, typed at like a keyboard: a tiny stdlib pexpect."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, whatever happens
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        # Wide, so readline never wraps or scrolls a typed line.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.output = ""  # everything not yet consumed by expect, \r removed
        self.seen = ""  # everything, for failure messages
        self.status: int | None = None

    def _read(self, timeout_s: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program closed the terminal (it exited)
            return False
        if not data:
            return False
        text = data.decode("utf-8", errors="replace").replace("\r", "")
        self.output += text
        self.seen += text
        return True

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait until the output matches `pattern` (multi-line regex); consume through it."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + EXPECT_TIMEOUT_S
        while True:
            match = regex.search(self.output)
            if match:
                self.output = self.output[match.end() :]
                return match
            remaining = deadline - time.monotonic()
            alive = remaining > 0 and self._read(min(remaining, 0.5))
            if not alive and not regex.search(self.output):
                raise AssertionError(f"no {pattern!r} in the terminal:\n{self.seen[-3000:]}")

    def run(self, command: str, pattern: str, prompt: str = r"^node\d> ") -> None:
        """Type a command when the prompt is there, as a person does; expect its answer."""
        self.line(command)
        self.expect(pattern)
        self.expect(prompt)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode("utf-8"))

    def line(self, text: str) -> None:
        self.type(text + "\r")

    def wait(self) -> int:
        """Drain the output until the program exits; its exit status."""
        deadline = time.monotonic() + EXPECT_TIMEOUT_S
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit:\n{self.seen[-3000:]}")
            elif not self._read(0.1):
                time.sleep(0.05)  # the terminal is closed; only the exit status is missing
        return self.status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach_argv(cluster, node: str, *extra: str) -> list[str]:
    manifest = str(cluster.manifest_path)
    return [sys.executable, "-m", "ringstore", "attach", "--cluster", manifest, "--node", node]


@pytest.fixture
def terminal_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTORE_")}
    env.update(TERM="dumb", RINGSTORE_HISTORY=str(tmp_path / "history"))
    return env


def test_console_on_a_terminal_survives_nodes_killed_from_another_terminal(
    healthy, terminal_env, tmp_path
):
    cluster = healthy
    term = Terminal(attach_argv(cluster, "1"), terminal_env)
    try:
        term.expect(r"^attached to node1 \(ringstore \S+\) at .*admin\.sock$")
        term.expect(PROMPT1)
        term.run("help", r"^put BUCKET KEY VALUE +store the rest of the line")
        term.run("put fruit apple crunchy and red", r"^stored fruit/apple \(15 bytes\)$")
        term.run("get fruit apple", r"^crunchy and red$")
        term.run("members", r"^3 up, 0 down$")

        # Another terminal: kill -9 a node while we stay attached.
        cluster.kill_node(3)
        term.run("get fruit apple", r"^crunchy and red$")  # R = 2: the two survivors answer
        cluster.wait_down(3)
        term.run("members", r"^node3 +down +\d+$")
        term.run("get fruit apple r=3", r"^error: r quorum not met: got 2, needed 3")
        term.run("no such thing", r"^error: unknown command 'no'")
        term.type(CTRL_P + CTRL_P + "\r")  # readline history: two commands back
        term.expect(r"^error: r quorum not met")
        term.expect(PROMPT1)

        # Now the attached node itself dies: one error line, the console stays.
        cluster.kill_node(1)
        term.run("get fruit apple", r"^error: (node1 closed the connection|lost the connection)")
        term.run("get fruit apple", r"^error: (no admin socket|cannot connect)")
        cluster.start_node(1)
        cluster.wait_healthy()
        term.run("get fruit apple", r"^crunchy and red$")  # it reattaches by itself
        term.type(CTRL_D)
        assert term.wait() == 0
    finally:
        term.close()
    history = tmp_path / "history"
    assert "put fruit apple crunchy and red" in history.read_text()
    assert os.stat(history).st_mode & 0o777 == 0o600
    assert cluster.is_running(2), "the console never takes a node down"


def test_quit_leaves_the_node_running_and_stop_stops_it(healthy, terminal_env):
    cluster = healthy
    term = Terminal(attach_argv(cluster, "node2"), terminal_env)
    try:
        term.expect(r"^node2> ")
        term.line("quit")
        assert term.wait() == 0
    finally:
        term.close()
    assert cluster.is_running(2)
    term = Terminal(attach_argv(cluster, "2"), terminal_env)
    try:
        term.expect(r"^node2> ")
        term.line("stop")
        term.expect(r"^node2 is stopping$")
        term.expect(r"^detached: the node is shutting down$")
        assert term.wait() == 0
    finally:
        term.close()
    cluster.wait_down(2)
    assert not cluster.is_running(2)


def run_attach(cluster, node: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*attach_argv(cluster, node), "-c", command],
        capture_output=True,
        text=True,
        timeout=EXPECT_TIMEOUT_S,
    )


def test_dash_c_runs_one_command_and_exits_with_its_status(healthy):
    cluster = healthy
    ring = run_attach(cluster, "2", "ring")
    assert ring.returncode == 0, ring.stderr
    assert ring.stdout.startswith("ring version 1: 16 partitions, 3 owners\n")
    assert re.search(r"^node3 +\d+ +[\d.]+% +up$", ring.stdout, re.MULTILINE)
    assert ring.stderr == ""

    stored = run_attach(cluster, "1", "put scripted k 'a value'")
    assert (stored.returncode, stored.stdout) == (0, "stored scripted/k (7 bytes)\n")
    got = run_attach(cluster, "3", "get scripted k")
    assert (got.returncode, got.stdout) == (0, "a value\n")

    missing = run_attach(cluster, "1", "get scripted nope")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "error: not found: scripted/nope\n"
    bogus = run_attach(cluster, "1", "frobnicate")
    assert bogus.returncode == 1 and bogus.stderr.startswith("error: unknown command")
    nowhere = run_attach(cluster, "7", "ring")
    assert nowhere.returncode == 1 and "no node '7'" in nowhere.stderr
