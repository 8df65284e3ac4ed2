"""A tiny Chrome DevTools Protocol client: headless Chromium driven over one websocket.

Enough for the dashboard test: navigate, evaluate JavaScript, wait for a condition,
capture a screenshot. No selenium/playwright, no driver downloads.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

__all__ = ["Browser", "chromium_path", "CDPError"]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1280,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class CDPError(RuntimeError):
    pass


def chromium_path() -> str | None:
    return shutil.which("chromium")


class Browser:
    """One headless Chromium with a fresh profile in `profile_dir`, and its first page."""

    def __init__(self, profile_dir: Path, timeout: float = 30.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise CDPError("Chromium not installed")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._closing = contextlib.ExitStack()
        try:
            port = self._wait_for_port(profile_dir / "DevToolsActivePort", timeout)
            self.ws = self._closing.enter_context(
                connect(self._page_ws_url(port, timeout), max_size=64 * 2**20, open_timeout=timeout)
            )
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self.console: list[str] = []  # console errors and uncaught exceptions, for failure messages
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _wait_for_port(self, path: Path, timeout: float) -> int:
        # With --remote-debugging-port=0 Chromium picks a free port and writes it here.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"Chromium exited with status {self.proc.returncode} before DevTools started")
            if path.exists():
                first = path.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.05)
        raise CDPError(f"Chromium did not open a DevTools port within {timeout} s")

    @staticmethod
    def _page_ws_url(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as res:
                pages = [t for t in json.load(res) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise CDPError("Chromium has no page target")

    def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        """Call one CDP method and return its result; events that arrive meanwhile are noted."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CDPError(f"{method}: no answer within {timeout} s")
            msg = json.loads(self.ws.recv(timeout=remaining))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note_event(msg)

    def _note_event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(
                "exception: " + details.get("exception", {}).get("description", details.get("text", ""))
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console.append(
                "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
            )

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Go to `url` and return once that document has loaded (Page.navigate returns earlier)."""
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout)

    def eval(self, expression: str):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"JavaScript failed: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.1):
        """Poll `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(interval)
        raise CDPError(
            f"timed out after {timeout} s waiting for: {expression} (last value {value!r}; page errors {self.console})"
        )

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._closing.close()  # the websocket, if it opened
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
