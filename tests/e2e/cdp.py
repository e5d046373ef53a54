"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe: no driver, no package.

Chromium's `--remote-debugging-pipe` reads protocol commands from file descriptor 3 and
writes replies and events to descriptor 4, each message JSON ending in a NUL byte. That
needs nothing beyond the Debian `chromium` package: no chromedriver, no websocket client,
no selenium or playwright (whose own browser download cannot happen here).

    with Chromium.launch(executable, workdir) as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:8098/ui")
        page.wait_for("document.querySelectorAll('#members tbody tr').length === 3")
        page.screenshot(path)

Every wait has a deadline; the browser is started in its own process group and that group
(which only it and its helpers are in) is killed on exit.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT_S = 30.0  # one protocol command; a page load on a loaded 2-core machine fits
CLOSE_TIMEOUT_S = 10.0  # Browser.close to process exit
READ_BYTES = 1 << 16
FIRST_SAFE_FD = 10  # the child's pipe ends are moved here so they never collide with 3 and 4
# Flags for a headless browser run as root in a container: no sandbox (root), nothing that
# phones home or updates itself, a fresh profile every time.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


class CdpError(Exception):
    """The browser answered a command with an error, or did not answer in time."""


def _high_fd(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_SAFE_FD)
    os.close(fd)
    return moved


class Chromium:
    """One browser process and its protocol pipe."""

    def __init__(self, process: subprocess.Popen[bytes], commands: int, replies: int) -> None:
        self.process = process
        self._commands = commands
        self._replies = replies
        self._buffer = bytearray()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    @classmethod
    def launch(
        cls, executable: Path, workdir: Path, *, window: tuple[int, int] = (1280, 1100)
    ) -> Chromium:
        """Start Chromium with a new profile in `workdir`, its output in workdir/chromium.log."""
        profile = workdir / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        child_reads, commands = os.pipe()
        replies, child_writes = os.pipe()
        child_reads, child_writes = _high_fd(child_reads), _high_fd(child_writes)
        # bash (not sh: dash takes only one-digit descriptors) puts the pipe ends on 3 and 4.
        redirect = (
            f'exec "$@" 3<&{child_reads} 4>&{child_writes} {child_reads}<&- {child_writes}>&-'
        )
        argv = [
            str(executable),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            "about:blank",
        ]
        with open(workdir / "chromium.log", "wb") as log:
            process = subprocess.Popen(
                ["/bin/bash", "-c", redirect, "bash", *argv],
                pass_fds=(child_reads, child_writes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: see close()
            )
        os.close(child_reads)
        os.close(child_writes)
        browser = cls(process, commands, replies)
        try:
            browser.call("Browser.getVersion")
        except BaseException:
            browser.close()
            raise
        return browser

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._commands, data)
            data = data[written:]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError("timed out waiting for the browser")
            ready, _, _ = select.select([self._replies], [], [], remaining)
            if not ready:
                continue
            data = os.read(self._replies, READ_BYTES)
            if not data:
                raise CdpError(f"the browser exited (status {self.process.poll()})")
            self._buffer += data
        end = self._buffer.index(b"\0")
        message = json.loads(bytes(self._buffer[:end]))
        del self._buffer[: end + 1]
        return message

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._next_id:
                if "method" in reply:
                    self.events.append(reply)
                continue
            if "error" in reply:
                raise CdpError(f"{method}: {reply['error'].get('message')}")
            return reply.get("result", {})

    def wait_event(
        self, matches: Callable[[dict[str, Any]], bool], *, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first event (already received or still to come) for which `matches` is true."""
        deadline = time.monotonic() + timeout_s
        while True:
            for index, event in enumerate(self.events):
                if matches(event):
                    return self.events.pop(index)
            message = self._receive(deadline)
            if "method" in message:
                self.events.append(message)

    # -- pages and downloads -------------------------------------------------------------------

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        return page

    def allow_downloads(self, folder: Path) -> None:
        """Save downloads in `folder`, each under its download guid, and report them as events."""
        self.call(
            "Browser.setDownloadBehavior",
            {"behavior": "allowAndName", "downloadPath": str(folder), "eventsEnabled": True},
        )

    def wait_download(self, folder: Path, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Path:
        """The file of the next download to start, once it has completed."""
        begun = self.wait_event(
            lambda e: e["method"] == "Browser.downloadWillBegin", timeout_s=timeout_s
        )
        guid = begun["params"]["guid"]

        def finished(event: dict[str, Any]) -> bool:
            params = event.get("params", {})
            return (
                event["method"] == "Browser.downloadProgress"
                and params.get("guid") == guid
                and params.get("state") in ("completed", "canceled")
            )

        done = self.wait_event(finished, timeout_s=timeout_s)
        if done["params"]["state"] != "completed":
            raise CdpError(f"download of {begun['params'].get('url')} was canceled")
        return folder / guid

    # -- shutdown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the browser; kill its process group if it does not exit in time."""
        if self.process.poll() is None:
            try:
                self.call("Browser.close", timeout_s=CLOSE_TIMEOUT_S)
            except (CdpError, OSError):
                pass
            try:
                self.process.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # helpers left behind, if any
        except ProcessLookupError:
            pass
        self.process.wait()
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    """One tab, attached over a flat protocol session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict:
        return self.browser.call(method, params, session=self.session, **kwargs)

    def navigate(self, url: str) -> None:
        """Open `url` and wait until its load event."""
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"cannot open {url}: {result['errorText']}")
        self.browser.wait_event(
            lambda e: e["method"] == "Page.loadEventFired" and e.get("sessionId") == self.session
        )

    def evaluate(self, expression: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        """The value of a JavaScript expression (promises are awaited); CdpError if it threw."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            shown = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {shown}")
        return result["result"].get("value")

    def wait_for(self, condition: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        """Wait until a JavaScript condition is truthy (checked in the page, every 50 ms, until
        the deadline); its value."""
        script = (
            "new Promise((resolve, reject) => {"
            f" const deadline = Date.now() + {int(timeout_s * 1000)};"
            " const check = () => {"
            f"  let value; try {{ value = ({condition}); }} catch (e) {{ value = false; }}"
            "  if (value) resolve(value);"
            "  else if (Date.now() > deadline)"
            f"   reject(new Error('timed out: ' + {json.dumps(condition)}));"
            "  else setTimeout(check, 50);"
            " };"
            " check();"
            "})"
        )
        try:
            return self.evaluate(script, timeout_s=timeout_s + COMMAND_TIMEOUT_S)
        except CdpError as exc:
            raise CdpError(f"waited {timeout_s:g} s in vain for: {condition}\n({exc})") from None

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file>, as a user picking them would."""
        found = self.call(
            "Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"}
        )["result"]
        if "objectId" not in found:
            raise CdpError(f"no element {selector}")
        self.call(
            "DOM.setFileInputFiles",
            {"files": [str(path) for path in paths], "objectId": found["objectId"]},
        )

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(data["data"]))
        return path
