"""The runs a parent is driving now: one :class:`LiveRun` each, and the one way a run is settled.

::

    Executor.submit / branch / resume ─┐                     ┌─ recovery: adopt, re-attach
                                       ▼                     ▼
    LiveRuns.start(run_id, drive) ──▶ LiveRun ──▶ task in the executor's task group:
        drive(live) → RunResult          (queue slot, launch, RunMonitor.supervise, restarts;
                                          or following an orphan's spool / a re-attached relay)
        finally: live.settle(result)     final run update committed after the run's last event,
                                         session state kept, outcome set, readers woken
    RunHandle (a view) ── done · wait() · cancel() ──▶ LiveRun

A :class:`LiveRun` owns what is live about a run: whether it ended and how, the monitor of its
current worker, a cancel that was asked for, and the answers sent to its questions. Every driver
returns its result and :meth:`LiveRuns.start` settles it, so a run is settled in one place
whoever drove it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from isolane.errors import IsolaneError, RunStateError, StoreUnavailable
from isolane.executor.hub import Hub
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.run import Outcome
from isolane.executor.writer import StoreWriter, WriteItem
from isolane.tracking import answers
from isolane.tracking.state import current_state
from isolane.tracking.store import Store

__all__ = ["Driver", "LiveRun", "LiveRuns"]

log = logging.getLogger(__name__)

#: What drives a live run to its end: returns how it ended (``None``: it was interrupted).
Driver = Callable[["LiveRun"], Awaitable[RunResult | None]]

T = TypeVar("T")

#: The longest wait between two tries of a store read on a run's path during an outage.
_MAX_RETRY_DELAY: Final = 5.0


class LiveRun:
    """One run this parent drives: its live state and how it ended (see the module docstring).

    ``monitor`` is the monitor of the worker running now (``None`` while queued, between
    attempts, or for an adopted worker, which ``kill`` ends instead); ``queue_scope`` is set
    while the run waits for a worker slot. Drivers set them; everything else reads them.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.monitor: RunMonitor | None = None
        self.queue_scope: anyio.CancelScope | None = None
        #: Ends an adopted worker's process tree (it has no control pipe).
        self.kill: Callable[[], None] | None = None
        self.outcome: Outcome | None = None
        self._cancel_requested: str | None = None
        self._done = anyio.Event()
        #: Human-input requests answered but not yet recorded by the worker.
        self._answered: set[str] = set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancel_requested(self) -> str | None:
        """The reason of a cancel that was asked for, if any."""
        return self._cancel_requested

    async def wait(self) -> Outcome:
        """Wait until the run is settled (its last event and its final status stored)."""
        await self._done.wait()
        assert self.outcome is not None
        return self.outcome

    async def cancel(self, reason: str) -> None:
        """Stop the run: its worker is asked to stop, then its tree killed; a queued run never
        starts. Does nothing once the run has ended."""
        if self.done:
            return
        self._cancel_requested = reason
        if self.monitor is not None:
            await self.monitor.cancel(reason)
        elif self.kill is not None:
            self.kill()
        elif self.queue_scope is not None:
            self.queue_scope.cancel()  # still waiting for a worker slot

    def send_answer(self, request_id: str, text: str, *, source: str) -> None:
        """Send the answer to ``request_id`` down the worker's control channel, once.

        Raises :class:`RunStateError` when no worker of this run can receive it, or when the
        request was answered already.
        """
        monitor = self.monitor
        if self.done or monitor is None:
            raise RunStateError(
                f"run {self.run_id} is not running in this executor, so nothing can receive an "
                "answer; if it was interrupted while asking, resume it and the question is asked "
                "again")
        if request_id in self._answered:
            raise RunStateError(f"request {request_id!r} of run {self.run_id} was already answered")
        try:
            monitor.worker.send_control({"op": "answer", "request_id": request_id, "text": text,
                                         "source": source})
        except (OSError, ValueError) as exc:
            raise RunStateError(f"could not reach the worker of run {self.run_id} ({exc}); it is "
                                "probably ending") from exc
        self._answered.add(request_id)

    def _ended(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._done.set()


class LiveRuns:
    """The live runs of one executor, driven in its task group and settled through its writer."""

    def __init__(self, *, store: Store, writer: StoreWriter, hub: Hub, task_group: TaskGroup) -> None:
        self.store = store
        self.writer = writer
        self.hub = hub
        self._tg = task_group
        self._runs: dict[str, LiveRun] = {}

    def get(self, run_id: str) -> LiveRun | None:
        """The run's latest live record here (ended ones too), or ``None``."""
        return self._runs.get(run_id)

    def active(self) -> list[LiveRun]:
        """The runs not settled yet."""
        return [live for live in self._runs.values() if not live.done]

    def start(self, run_id: str, drive: Driver, *, interrupted: str,
              then: Callable[[Outcome], Awaitable[None]] | None = None) -> LiveRun:
        """Register ``run_id`` as live and drive it in the task group; settle it when ``drive``
        returns (with ``interrupted`` as the crash reason when it did not), then call ``then``."""
        live = LiveRun(run_id)
        self._runs[run_id] = live
        self._tg.start_soon(self._drive, live, drive, interrupted, then)
        return live

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the executor's task group (a monitor's cancel, a race)."""
        self._tg.start_soon(func, *args)

    async def join(self) -> None:
        """Wait until every live run has been settled (runs started meanwhile too)."""
        while pending := self.active():
            for live in pending:
                await live.wait()

    async def join_unless_store_lost(self) -> None:
        """:meth:`join`, or return as soon as the writer gave up on an unreachable store
        (:meth:`StoreWriter.give_up_after`): nothing more can be stored, so the executor's exit
        stops the runs still active instead of waiting for them."""
        async with anyio.create_task_group() as tg:
            async def store_lost() -> None:
                await self.writer.gave_up.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(store_lost)
            await self.join()
            tg.cancel_scope.cancel()

    async def _drive(self, live: LiveRun, drive: Driver, interrupted: str,
                     then: Callable[[Outcome], Awaitable[None]] | None) -> None:
        result: RunResult | None = None
        try:
            # Shielded: a cancel from outside (one around ``async with Executor``, or the task
            # group's own when one of its tasks failed) would reach this task directly, leaving
            # the worker unwatched and its last events unstored. A run is stopped by
            # :meth:`LiveRun.cancel`, which the executor's exit calls for every active run.
            with anyio.CancelScope(shield=True):
                result = await drive(live)
        except Exception as exc:
            log.exception("run %s: the parent failed while driving it", live.run_id)
            result = RunResult(
                "crashed", None, error=f"the parent failed while driving the run ({type(exc).__name__}: "
                f"{exc}); its spool keeps what the worker wrote: `isolane resume` continues it",
                error_type="ParentError")
        finally:
            with anyio.CancelScope(shield=True):
                outcome = await self.settle(live, result, interrupted=interrupted)
        if then is not None:
            try:
                await then(outcome)
            except Exception:
                log.exception("run %s: what was to follow its end failed", live.run_id)

    async def read_store(self, read: Callable[[], T], *, what: str) -> T:
        """``read()`` in a thread, tried again through a store outage until it succeeds.

        Every store read on a run's path goes through here (or through the writer): an outage
        delays the run, it never ends it or the executor. A cancel of the caller stops waiting,
        and so does a closing executor's writer giving up on the store (the error is raised).
        """
        delay = 0.1
        while True:
            try:
                return await anyio.to_thread.run_sync(read)
            except StoreUnavailable as exc:
                if self.writer.gave_up.is_set():
                    raise  # the executor is closing and gave up on the store: no more waiting
                log.warning("store unavailable while %s (%s); trying again in %.1f s", what, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)

    async def settle(self, live: LiveRun, result: RunResult | None, *, interrupted: str) -> Outcome:
        """Record how ``live`` ended, after its last event: the final run update, its session
        state, its outcome; then wake its readers. ``result`` ``None``: it crashed, because
        ``interrupted``."""
        if result is None:
            result = RunResult("crashed", None, error=interrupted, error_type="ParentInterrupted")
        await self.writer.put_and_wait(WriteItem(run_updates={live.run_id: result.run_update()}))
        await self.keep_state(live.run_id)
        outcome = Outcome.of(live.run_id, result)
        live._ended(outcome)
        self.hub.wake(live.run_id)
        log.info("run %s ended %s", live.run_id, result.status)
        return outcome

    async def keep_state(self, run_id: str) -> None:
        """Fold the ended run's state into ``session_states`` (see :mod:`isolane.tracking.state`),
        and refuse the answers posted for it that no worker will take now (their text erased:
        an answer may be a password)."""
        try:
            await anyio.to_thread.run_sync(current_state, self.store, run_id)
        except IsolaneError as exc:  # the store is down: a resume rebuilds it from the log
            log.warning("run %s: its session state was not kept: %s", run_id, exc)
        try:
            await anyio.to_thread.run_sync(lambda: answers.abandon(
                self.store, run_id, reason="the run ended before the answer reached it"))
        except IsolaneError as exc:
            log.warning("run %s: answers posted for it were not cleared: %s", run_id, exc)

    async def update(self, run_id: str, fields: Mapping[str, Any]) -> None:
        """Queue a change of the run's row (ordered with its events)."""
        await self.writer.put(WriteItem(run_updates={run_id: dict(fields)}))
