"""The local worker backend: a preloaded forkserver on this machine, one process per run.

::

    LocalBackend.launch(spec) ──Launcher.spawn (thread)──▶ WorkerProcess ──▶ LocalWorker
    LocalWorker.records(): event pipe ──wait_readable──▶ DoorbellReader (the tail offset)
                           spool fd ──SpoolReader.read(upto=tail)──▶ complete records ──▶ batch
    LocalWorker.wait():    process sentinel ──wait_readable──▶ WorkerExit (and wakes records())

Waiting is on file descriptors, never a sleep loop: a SIGKILLed worker is noticed as soon as its
sentinel becomes readable, and ``records()`` then reads the spool to its last complete record
(what the worker wrote after its last doorbell included) and ends, even when a process the
worker started still holds the pipe open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from isolane.backends.environment import DEFAULT_ENV_ALLOW
from isolane.backends.interface import WorkerExit
from isolane.backends.local.launcher import (
    DEFAULT_PRELOAD,
    Launcher,
    WorkerProcess,
)
from isolane.schemas.spec import WorkerSpec
from isolane.schemas.spool import DoorbellReader, SpoolReader, SpoolSpan

__all__ = ["LocalBackend", "LocalWorker"]


class LocalWorker:
    """A :class:`~isolane.backends.interface.WorkerHandle` on a local :class:`WorkerProcess`."""

    location = "local"

    def __init__(self, process: WorkerProcess) -> None:
        self.process = process
        self._bells = DoorbellReader(process.event_fd)
        self._spool = SpoolReader(process.spool_fd, offset=process.spool_start)
        self._exited = anyio.Event()
        self._exit: WorkerExit | None = None
        self._watching = False
        self._wait_scope: anyio.CancelScope | None = None

    @property
    def run_id(self) -> str:
        return self.process.run_id

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def create_time(self) -> float:
        return self.process.create_time

    async def wait(self) -> WorkerExit:
        if self._exit is not None:
            return self._exit
        if self._watching:  # one task waits on the sentinel; the others on its result
            await self._exited.wait()
            assert self._exit is not None
            return self._exit
        self._watching = True
        try:
            await anyio.wait_readable(self.process.sentinel)
        finally:
            self._watching = False
        # In a thread: reading the status may wait for a worker start holding the status lock.
        self._exit = WorkerExit(await anyio.to_thread.run_sync(self.process.exitcode))
        self._exited.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        return self._exit

    async def records(self) -> AsyncIterator[SpoolSpan]:
        bells, spool = self._bells, self._spool
        while True:
            if not self._exited.is_set() and not spool.more:
                if bells.eof:  # the pipe closed: the worker is ending (or closed it on purpose)
                    await self._exited.wait()
                else:
                    with anyio.CancelScope() as scope:
                        self._wait_scope = scope
                        await anyio.wait_readable(bells.fd)
                    self._wait_scope = None
            tail = bells.read()
            ended = self._exited.is_set()
            # Once the worker has ended, read to its last complete record: what it wrote after
            # its last doorbell (a SIGKILL leaves no time to ring one) is in the spool.
            span = spool.read(None if ended else tail)
            if span.data or span.problems:
                yield span
            if ended and not spool.more:
                return

    def request_cancel(self) -> None:
        self.process.request_cancel()

    def send_control(self, message: Mapping[str, Any]) -> None:
        """Send ``message`` down the control pipe; ``OSError``/``ValueError`` once it is closed."""
        self.process.control.send(dict(message))

    async def kill_tree(self) -> int:
        return self.process.kill_tree()

    async def aclose(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._bells.fd)
        self.process.close()


class LocalBackend:
    """Workers as processes of this machine, forked from a preloaded forkserver."""

    name = "local"

    def __init__(self, *, start_method: str | None = None,
                 env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
                 preload: Iterable[str] = DEFAULT_PRELOAD) -> None:
        self.launcher = Launcher(start_method=start_method, env_allow=env_allow, preload=preload)

    def start(self) -> None:
        self.launcher.start()

    async def launch(self, spec: WorkerSpec) -> LocalWorker:
        process = await anyio.to_thread.run_sync(self.launcher.spawn, spec)
        return LocalWorker(process)

    def close(self) -> None:
        """Nothing to release: the forkserver is shared by every executor of this process."""
