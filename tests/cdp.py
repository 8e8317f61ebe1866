"""A small Chrome DevTools Protocol driver for Debian's headless ``chromium`` (browser tests).

Starts ``chromium --headless`` with its own profile directory and ``--remote-debugging-port=0``,
reads the DevTools URL it prints, and speaks CDP over a WebSocket to the page: navigate, evaluate
JavaScript (awaiting promises), capture a PNG. Nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.request import urlopen

from websockets.sync.client import ClientConnection, connect

__all__ = ["Chromium", "find_chromium"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
          "--disable-background-networking", "--disable-dev-shm-usage", "--mute-audio",
          "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    """The chromium binary on PATH (Debian names it ``chromium``), or ``None``."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page, driven over CDP."""

    def __init__(self, binary: str, profile: Path, *, width: int = 1280, height: int = 900,
                 start_timeout: float = 30.0) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [binary, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "LANG": "C.UTF-8"}, text=True, start_new_session=True)
        browser_url = self._read_devtools_url(start_timeout)
        port = re.search(r":(\d+)/", browser_url)
        assert port is not None
        with urlopen(f"http://127.0.0.1:{port.group(1)}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        self._stack = contextlib.ExitStack()
        self._ws: ClientConnection = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _read_devtools_url(self, timeout: float) -> str:
        assert self._proc.stderr is not None
        found: list[str] = []
        done = threading.Event()

        def read() -> None:
            assert self._proc.stderr is not None
            for line in self._proc.stderr:
                match = _LISTENING.search(line)
                if match and not found:
                    found.append(match.group(1))
                    done.set()
            done.set()

        self._reader = threading.Thread(target=read, daemon=True)  # also keeps draining stderr
        self._reader.start()
        if not done.wait(timeout) or not found:
            self.close()
            raise RuntimeError(f"chromium printed no DevTools URL within {timeout:g} s")
        return found[0]

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> Any:
        """Call a CDP method on the page and return its result (events in between are skipped)."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self._ws.recv(timeout=timeout))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str, *, timeout: float = 30) -> Any:
        """The JSON value of ``expression`` (a promise is awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout=timeout + 5)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, condition: str, *, timeout: float = 30) -> Any:
        """Wait (inside the page, re-checking every 50 ms) until ``condition`` is truthy."""
        script = ("new Promise((resolve, reject) => { const t0 = Date.now(); (function check() {"
                  f" let v; try {{ v = ({condition}); }} catch (e) {{ v = undefined; }}"
                  " if (v) resolve(v);"
                  f" else if (Date.now() - t0 > {int(timeout * 1000)}) reject(new Error('timed out waiting for: '"
                  f" + {json.dumps(condition)}));"
                  " else setTimeout(check, 50); })(); })")
        return self.evaluate(script, timeout=timeout)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if hasattr(self, "_stack"):
                self._stack.close()
        finally:
            # chromium's helpers (zygote, renderers) share its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
            if hasattr(self, "_reader"):
                self._reader.join(10)
            if self._proc.stderr is not None:
                self._proc.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
