"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Self

import anyio
import anyio.abc
import psutil

__all__ = ["RssPeak", "alive"]


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
