"""A thin synchronous facade over :class:`~isolane.executor.executor.Executor` for scripts.

::

    with isolane.SyncExecutor(home=".isolane") as ex:
        run = ex.submit(isolane.RunSpec(workflow="pkg.flow:main", task="..."))
        for event in run.events():
            ...
        outcome = run.wait()

The async executor runs on an event loop in a background thread (an anyio blocking portal); every
call here is forwarded to it and waits for the answer.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from isolane.errors import RunStateError
from isolane.executor.executor import Executor, Outcome, RunHandle, RunSpec
from isolane.executor.feed import EventSubscription
from isolane.schemas.envelope import Event

__all__ = ["SyncExecutor", "SyncRun", "SyncSubscription"]

_END = object()


class SyncRun:
    """Blocking view of a :class:`RunHandle`."""

    def __init__(self, portal: BlockingPortal, handle: RunHandle) -> None:
        self._portal = portal
        self._handle = handle
        self.run_id = handle.run_id

    def wait(self) -> Outcome:
        return self._portal.call(self._handle.wait)

    def cancel(self, reason: str = "cancelled by request") -> None:
        self._portal.call(self._handle.cancel, reason)

    def events(self, since: int = 0, *, types: Iterable[str] | None = None,
               follow: bool = True) -> Iterator[Event]:
        """Iterate events as :meth:`RunHandle.events` yields them (bounded hand-over queue)."""
        handover: queue.Queue[Any] = queue.Queue(maxsize=1000)

        async def pump() -> None:
            import anyio.to_thread

            try:
                async for event in self._handle.events(since, types=types, follow=follow):
                    await anyio.to_thread.run_sync(handover.put, event)
            except BaseException as exc:  # hand the failure to the reading thread
                await anyio.to_thread.run_sync(handover.put, exc)
                raise
            finally:
                await anyio.to_thread.run_sync(handover.put, _END)

        future = self._portal.start_task_soon(pump)
        try:
            while True:
                item = handover.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()


class SyncSubscription:
    """Blocking view of an :class:`~isolane.executor.feed.EventSubscription`."""

    def __init__(self, portal: BlockingPortal, subscription: EventSubscription) -> None:
        self._portal = portal
        self.subscription = subscription

    def close(self) -> None:
        """Stop calling the callback; returns once it is no longer called."""
        self._portal.call(self.subscription.close)
        self._portal.call(self.subscription.wait_closed)


class SyncExecutor:
    """Blocking :class:`Executor`: same keyword options, used as a context manager."""

    def __init__(self, **options: Any) -> None:
        self._executor = Executor(**options)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._executor_cm: AbstractContextManager[Executor] | None = None

    def __enter__(self) -> Self:
        self._portal_cm = start_blocking_portal(backend="asyncio")
        self._portal = self._portal_cm.__enter__()
        self._executor_cm = self._portal.wrap_async_context_manager(self._executor)
        self._executor_cm.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._executor_cm is not None:
                self._executor_cm.__exit__(exc_type, exc, tb)
        finally:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(exc_type, exc, tb)

    def _require(self) -> BlockingPortal:
        if self._portal is None:
            raise RunStateError("use `with SyncExecutor(...) as ex:` before submitting runs")
        return self._portal

    @property
    def executor(self) -> Executor:
        return self._executor

    def submit(self, spec: RunSpec) -> SyncRun:
        portal = self._require()
        return SyncRun(portal, portal.call(self._executor.submit, spec))

    def run(self, spec: RunSpec) -> Outcome:
        return self.submit(spec).wait()

    def get(self, run_id: str) -> SyncRun:
        portal = self._require()
        return SyncRun(portal, self._executor.get(run_id))

    def on_event(self, callback: Callable[[Event], object], *,
                 types: Iterable[str] | None = None) -> SyncSubscription:
        """Call ``callback`` with every committed event of this executor's runs, in a worker
        thread (it may block; events come one at a time, in ``seq`` order per run); see
        :meth:`Executor.on_event`."""
        import anyio.to_thread

        async def in_thread(event: Event) -> None:
            await anyio.to_thread.run_sync(callback, event)

        portal = self._require()
        return SyncSubscription(portal, portal.call(
            lambda: self._executor.on_event(in_thread, types=types)))
