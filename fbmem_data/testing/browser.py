"""Drive headless Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe): no
Selenium, no WebDriver, no network port. Used by the report's browser test and its benchmark.

The pipe carries JSON messages terminated by NUL bytes; Chromium reads commands on fd 3 and writes
replies and events on fd 4.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fbmem_data.errors import FbmemError

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Headless, no sandbox (containers), no GPU, and nothing that reaches the network in the background.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class BrowserError(FbmemError):
    """Chromium is missing, failed to start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """The Chromium executable: $FBMEM_CHROMIUM, else the first of the usual names on PATH."""
    env = os.environ.get("FBMEM_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class HeadlessChromium:
    """One headless Chromium with one page, driven by DevTools commands.

    Console messages, uncaught exceptions and browser log entries (failed resource loads) at level
    error are collected in `errors`.
    """

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 1000, timeout: float = 30.0) -> None:
        exe = executable or find_chromium()
        hint = "apt-get install chromium chromium-driver (Debian), or set FBMEM_CHROMIUM to a Chrome/Chromium binary"
        if exe is None:
            raise BrowserError("Chromium is not installed", hint=hint)
        if shutil.which(exe) is None:
            raise BrowserError(f"Chromium executable {exe!r} does not exist or is not executable", hint=hint)
        self.timeout = timeout
        self.errors: list[str] = []
        self.console: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        self._profile = tempfile.mkdtemp(prefix="fbmem-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Move the child's ends above fd 9 so that placing them on 3 and 4 cannot overwrite one another.
        to_child_r, from_child_w = _move_above(to_child_r, 9), _move_above(from_child_w, 9)

        def wire_pipes() -> None:  # in the child before exec: DevTools reads fd 3, writes fd 4
            os.dup2(to_child_r, 3)  # dup2 clears close-on-exec, so 3 and 4 survive the exec
            os.dup2(from_child_w, 4)

        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the browser; closed in close()
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        # close_fds=False: fds Python opened are close-on-exec anyway (PEP 446); pass_fds would close 3 and 4.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            close_fds=False, preexec_fn=wire_pipes,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            target_id = page["targetId"] if page else self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    # -- protocol ------------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 0.5))
            if not ready:
                if self._proc.poll() is not None:
                    self._stderr.seek(0)
                    stderr = self._stderr.read().decode(errors="replace")[-2000:]
                    raise BrowserError(f"Chromium exited with status {self._proc.returncode}: {stderr}")
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message = json.loads(raw)
        if "method" in message:
            self._record_event(message)
        return message

    def _record_event(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught exception: {desc} (line {details.get('lineNumber')})")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        self._events.append(event)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and wait for its reply (events seen meanwhile are recorded)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"DevTools {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})

    def wait_event(self, method: str) -> dict[str, Any]:
        """Wait for an event (or find one already received)."""
        for i, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("method") == method:
                self._events.remove(message)
                return message

    # -- page ----------------------------------------------------------------------------------
    def open(self, path: Path) -> float:
        """Load a local file and wait for its load event. Returns the seconds it took."""
        self._events.clear()
        start = time.monotonic()
        self.call("Page.navigate", session=True, url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        return time.monotonic() - start

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited).

        Raises:
            BrowserError: the expression threw.
        """
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole page by default)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self._send({"id": self._next_id + 1, "method": "Browser.close", "params": {}})
                    self._proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                    self._proc.wait(timeout=5)
        finally:
            for fd in (self._to_child, self._from_child):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def _move_above(fd: int, floor: int) -> int:
    """Re-open `fd` as the lowest free descriptor above `floor` (close-on-exec) and close the old one."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor + 1)
    os.close(fd)
    return high
