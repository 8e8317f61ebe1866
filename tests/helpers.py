"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Self

import anyio
import anyio.abc
import psutil
import pytest

from isolane import Executor

__all__ = ["RAY_OPTIONS", "REQUIRE_RAY_ENV", "RssPeak", "alive", "executor_on", "import_ray"]

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
