"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Self

import anyio
import anyio.abc
import psutil
import pytest

from isolane import Executor

__all__ = ["RAY_OPTIONS", "REQUIRE_RAY_ENV", "ProcessWatch", "RssPeak", "alive", "executor_on",
           "import_ray", "serve_process"]

ROOT = Path(__file__).resolve().parent.parent

REQUIRE_RAY_ENV: Final = "ISOLANE_REQUIRE_RAY"
#: Light relays for the contract tests: many fit on the 2-CPU session cluster, and their
#: forkservers skip the AG2 preload (the flows they run do not use AG2; see docs/distributed.md).
RAY_OPTIONS: Final[dict[str, Any]] = {"num_cpus": 0.25, "preload": ["isolane.worker.entry"],
                                      "kill_timeout": 5.0}


def import_ray() -> Any:
    """The ``ray`` module, or a skip (a failure with ``ISOLANE_REQUIRE_RAY=1``) without it."""
    try:
        import ray
    except ImportError as exc:
        message = f"Ray is not installed ({exc}); install it with `pip install 'isolane[ray]'`"
        if os.environ.get(REQUIRE_RAY_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_RAY_ENV}=1)")
        pytest.skip(message)
    return ray


def executor_on(backend: str, home: Path, **kwargs: Any) -> Executor:
    """An :class:`Executor` (``async with`` it) whose workers run on ``backend``: ``local``, or
    ``ray`` with the light relays of :data:`RAY_OPTIONS`."""
    options = RAY_OPTIONS if backend == "ray" else None
    return Executor(home=home, backend=backend, backend_options=options, **kwargs)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class RssPeak:
    """Watch this process's RSS while the ``async with`` block runs; ``growth`` is peak − start."""

    def __init__(self, interval: float = 0.02) -> None:
        self._interval = interval
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def growth(self) -> int:
        return self.peak - self.start

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await anyio.sleep(self._interval)

    async def __aenter__(self) -> Self:
        self.start = self.peak = self._process.memory_info().rss
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._sample)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)


@contextlib.contextmanager
def serve_process(home: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``isolane serve --port 0`` as a real parent process; yields it and its URL, and stops it
    (SIGTERM, then SIGKILL) at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "serve", "--port", "0", "--home", str(home)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={k: v for k, v in os.environ.items() if k != "ISOLANE_TOKEN"})
    url: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write("[serve] " + line)
            match = re.search(r"http://127\.0\.0\.1:\d+", line)
            if match and not url:
                url.append(match.group(0))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and url, "isolane serve did not report its URL"
        yield proc, url[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()


def visible(event: Any, *, first_line: bool = False) -> tuple[Any, ...] | None:
    """What an AG2 program did, as a person reads it: messages said aloud (``first_line``: only
    their first line), handoffs, tool calls and results, code runs, retried LLM calls."""
    d = event.data
    if event.type == "agent_message" and not d.get("silent"):
        content = d["content"].split("\n")[0] if first_line else d["content"]
        return ("message", d["sender"], content)
    if event.type == "handoff":
        return ("handoff", d.get("from_agent"), d["to_agent"])
    if event.type == "tool_call":
        return ("tool_call", d["agent"], d["tool"], d["arguments"])
    if event.type == "tool_result":
        return ("tool_result", d["agent"], d["tool"], d["content"], d.get("is_error", False))
    if event.type == "code_execution":
        return ("code", d["agent"], d["language"], d["exit_code"], d["output"].strip())
    if event.type == "llm_retry":
        return ("retry", d.get("agent"), d.get("model"), d.get("status"))
    return None


class ProcessWatch:
    """The processes a test starts that outlive it (the ``process_watch`` fixture).

    Looked at: new children of the test process, and new descendants of multiprocess's shared
    forkserver (isolane's workers, forked by it; the forkserver itself and the resource tracker
    stay). Not looked at: what ran before the test (Ray's cluster of an earlier test)."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}

    def left_behind(self) -> list[psutil.Process]:
        me = psutil.Process()
        candidates: list[psutil.Process] = []
        for child in me.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if "multiprocess." in " ".join(child.cmdline()):
                    candidates.extend(child.children(recursive=True))
                else:
                    candidates.append(child)
        left = []
        for process in candidates:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.pid not in self.before and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(process)
        return left
