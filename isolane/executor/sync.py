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

import concurrent.futures
import contextlib
import functools
import logging
import queue
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from isolane.errors import RunStateError
from isolane.executor.display import RunSnapshot, run_html
from isolane.executor.executor import Executor, Outcome, RunHandle, RunSpec
from isolane.executor.feed import EventSubscription
from isolane.executor.human import HumanRequest
from isolane.schemas.envelope import Event

__all__ = ["SyncExecutor", "SyncRun", "SyncSubscription"]

_END = object()

log = logging.getLogger(__name__)


class SyncRun:
    """Blocking view of a :class:`RunHandle`."""

    def __init__(self, portal: BlockingPortal, handle: RunHandle) -> None:
        self._portal = portal
        self._handle = handle
        self.run_id = handle.run_id

    def __repr__(self) -> str:
        return f"SyncRun(run_id={self.run_id!r})"

    def wait(self, *, progress: bool | None = None, ask: bool | None = None) -> Outcome:
        """Wait for the run to end and return its :class:`Outcome`.

        ``progress`` shows the run meanwhile (``None``: in a notebook only; see
        :mod:`isolane.executor.progress`). ``ask`` puts each question the run asks to the person
        running the cell with ``input()`` and sends the answer (``None``: in a notebook only;
        off by itself where the kernel has no stdin, as under ``nbclient``).
        """
        from isolane.executor import progress as shown

        notebook = shown.in_notebook()
        showing = notebook if progress is None else progress
        asking = notebook if ask is None else ask
        if not showing and not asking:
            return self._portal.call(functools.partial(self._handle.wait, progress=False))
        view = shown.Progress(notebook=notebook, handle_name="run", awaited=False) if showing else None
        asked: set[str] = set()
        ended = self._portal.start_task_soon(functools.partial(self._handle.wait, progress=False))
        while True:
            finished = ended.done()  # before the read: the last read shows the final state
            snap = self.snapshot()
            if view is not None:
                view.show(snap)
            if finished:
                return ended.result()
            for request in snap.pending if asking else ():
                if request.request_id not in asked:
                    asked.add(request.request_id)
                    asking = self._ask(request)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                ended.result(timeout=shown.TICK)

    def _ask(self, request: HumanRequest) -> bool:
        """Ask ``request`` with ``input()`` and send the answer; False when there is no stdin."""
        who = request.agent or request.node_id or "the workflow"
        try:
            text = input(f"? {who} asks: {request.prompt}\n")
        except (EOFError, NotImplementedError):  # IPython's StdinNotImplementedError included
            log.info("no stdin to ask %s on; answer with run.answer(...)", request.request_id)
            return False
        try:
            self.answer(request.request_id, text, source="notebook")
        except RunStateError as exc:  # answered elsewhere or timed out meanwhile
            log.warning("answer to %s not sent: %s", request.request_id, exc)
        return True

    def answer(self, request_id: str, text: str, *, source: str = "api") -> None:
        """Answer the run's pending ``human_input_request`` ``request_id`` with ``text``."""
        self._portal.call(functools.partial(self._handle.answer, request_id, text, source=source))

    def pending_requests(self) -> list[HumanRequest]:
        """The run's human-input requests still waiting for an answer, oldest first."""
        return self._portal.call(self._handle.pending_requests)

    def snapshot(self) -> RunSnapshot:
        """What the notebook display shows of the run, read now (:mod:`isolane.executor.display`)."""
        return self._handle.snapshot()

    def _repr_html_(self) -> str:
        """The run drawn in a notebook, with ``run.answer(...)`` for a waiting question."""
        return run_html(self.snapshot(), handle_name="run", awaited=False)

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
