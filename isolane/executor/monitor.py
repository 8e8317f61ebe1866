"""The parent's watch over one running worker: read, validate, persist, detect the end.

::

    WorkerHandle.records() ──spans──▶ decode_lines ──▶ WriteItem ──▶ StoreWriter
    WorkerHandle.wait() ──▶ exited ──▶ records() reads the spool to its last complete record,
                                       then the status is decided
    watchdog ──(run timeout | nothing read for heartbeat_timeout)──▶ stop() ──▶ timed_out
    more than max_invalid invalid records (a flood) ──▶ kill_tree() at once ──▶ failed (InvalidEvent)
    cancel() ──────────────────────────────────────────────────▶ stop() ──▶ cancelled

All of it runs in one task group per run, inside the executor's task group. The reader is the only
task that takes records, so they are persisted in the order the worker wrote them. The handle comes
from a worker backend (:mod:`isolane.backends.interface`): the local one waits on the event pipe and
the process sentinel (a SIGKILLed worker is noticed within milliseconds), the Ray one on the
actor's streaming generator. Either way the monitor decodes and validates every record itself.

The status is decided from what the worker reported and how it ended:

========================  ===============================================================
``cancelled``             a cancel was requested while the worker ran (whatever it managed to report)
``timed_out``             the run passed its timeout, or its heartbeats stopped
``completed``/``failed``  the worker reported ``run_completed`` / ``run_failed`` and exited
                          (``failed`` also: a limit, ``LimitExceeded``; a flood of invalid records)
``crashed``               the process ended without reporting (signal, ``os._exit``, OOM, its
                          node lost); SIGXCPU with a CPU limit is ``failed``/``LimitExceeded``;
                          also a terminal event contradicted by the exit (below)
========================  ===============================================================

A worker runs untrusted code, which can write any record into its spool, a forged
``run_completed`` included. A worker that really finished exits with the code of its outcome
(:data:`~isolane.schemas.spec.EXIT_CODES`); a terminal event followed by another exit (a
signal, ``os._exit(3)``) is a contradiction: the run is ``crashed`` (the reported result is
kept for a person to judge) and an ``outcome_contradiction`` diagnostic names both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from isolane.backends.interface import WorkerExit, WorkerHandle
from isolane.errors import describe_exit
from isolane.executor.writer import StoreWriter, WriteItem
from isolane.schemas.envelope import EventRow, WireEvent, decode_lines, event_rows
from isolane.schemas.limits import Limits, crash_hint, limit_crash
from isolane.schemas.outcome import Verdict, last_terminal, verdict
from isolane.schemas.payloads import TERMINAL_EVENT_TYPES
from isolane.schemas.spec import EXIT_CODES, SPOOL_REFUSED_EXIT
from isolane.schemas.spool import SpoolSpan
from isolane.tracking.rows import DiagnosticRow

__all__ = ["RunMonitor", "RunResult"]

log = logging.getLogger(__name__)

_HEARTBEAT_WRITE_EVERY = 5.0


@dataclass(slots=True)
class RunResult:
    """How a worker ended, as the monitor concluded."""

    status: str
    exit_code: int | None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None

    @classmethod
    def of(cls, reported: Verdict, *, exit_code: int | None) -> RunResult:
        """The result a worker's own terminal event reports (see :mod:`isolane.schemas.outcome`)."""
        return cls(reported.status, exit_code, result=reported.result, error=reported.error,
                   error_type=reported.error_type, traceback=reported.traceback)

    def run_update(self) -> dict[str, Any]:
        return {
            "status": self.status, "ended_at": time.time(), "exit_code": self.exit_code,
            "result": self.result, "error": self.error, "error_type": self.error_type,
        }


@dataclass(slots=True)
class _Stop:
    reason: str  # "cancelled" | "timed_out" | "failed"
    message: str
    error_type: str | None = None  # defaults to the reason


@dataclass
class RunMonitor:
    """Supervises one worker (a :class:`WorkerHandle`) until it has ended and its events are stored."""

    worker: WorkerHandle
    writer: StoreWriter
    start_seq: int = 0
    timeout: float | None = None
    heartbeat_timeout: float | None = 60.0
    cancel_grace: float = 3.0
    #: The run's limits, to name the one that ended a worker the kernel killed.
    limits: Limits | None = None
    #: Invalid records stored as diagnostics; one more stops the run (a flood costs the sender).
    max_invalid: int = 1000
    _stop: _Stop | None = None
    _exited: anyio.Event = field(default_factory=anyio.Event)
    _exit: WorkerExit | None = None
    _stopping: bool = False
    _terminal: WireEvent | None = None
    _contradiction: str | None = None
    _last_read: float = field(default_factory=time.monotonic)
    _last_hb_write: float = 0.0

    @property
    def run_id(self) -> str:
        return self.worker.run_id

    async def supervise(self) -> RunResult:
        """Run until the worker has exited and every record it wrote is handed to the writer."""
        self._expected = self.start_seq + 1
        self._invalid = 0
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_exit)
                tg.start_soon(self._watchdog)
                async for batch in self.worker.records():
                    await self._deliver(batch)
                await self._exited.wait()
                tg.cancel_scope.cancel()
            assert self._exit is not None
            # Anything the worker left behind in its process group goes with it.
            await self.worker.kill_tree()
        finally:
            with anyio.CancelScope(shield=True):
                await self.worker.aclose()
        result = self._conclude(self._exit)
        if self._contradiction is not None:
            log.warning("run %s: %s", self.run_id, self._contradiction)
            await self.writer.put(WriteItem(run_id=self.run_id, diagnostics=[DiagnosticRow(
                self.run_id, time.time(), "outcome_contradiction", self._contradiction)]))
        return result

    async def cancel(self, message: str = "cancelled by request") -> None:
        """Stop the run: cooperative request, then SIGKILL of its tree after the grace period.

        A worker that has already exited keeps the outcome it ended with: only the records it
        left are still being handed to the writer (an executor closing during a store outage
        stops every run whose last events are not stored yet)."""
        if self._stop is None and not self._exited.is_set():
            self._stop = _Stop("cancelled", message)
        await self._stop_worker()

    # -- tasks ----------------------------------------------------------------------------------

    async def _watch_exit(self) -> None:
        self._exit = await self.worker.wait()
        self._exited.set()

    async def _watchdog(self) -> None:
        started = time.monotonic()
        while not self._exited.is_set():
            now = time.monotonic()
            checks = []
            if self.timeout is not None:
                checks.append(started + self.timeout)
            if self.heartbeat_timeout is not None:
                checks.append(self._last_read + self.heartbeat_timeout)
            if not checks:
                return
            wake = min(checks)
            if wake > now:
                with anyio.move_on_after(wake - now):
                    await self._exited.wait()
                continue
            if self.timeout is not None and now >= started + self.timeout:
                self._stop = self._stop or _Stop("timed_out", f"run timeout of {self.timeout:g} s passed")
            else:
                self._stop = self._stop or _Stop(
                    "timed_out", f"no heartbeat for {self.heartbeat_timeout:g} s (worker hung?)")
            await self._stop_worker()
            return

    async def _stop_worker(self) -> None:
        if self._stopping or self._exited.is_set():
            return
        self._stopping = True
        self.worker.request_cancel()
        with anyio.move_on_after(self.cancel_grace):
            await self._exited.wait()
        if not self._exited.is_set():
            killed = await self.worker.kill_tree()
            log.info("run %s: worker ignored the cancel for %.1f s; killed %d processes",
                     self.run_id, self.cancel_grace, killed)

    # -- records --------------------------------------------------------------------------------

    async def _deliver(self, span: SpoolSpan) -> None:
        if not span.data and not span.problems:
            return
        now = time.time()
        self._last_read = time.monotonic()
        run_id = self.run_id
        rows: list[EventRow] = []
        diagnostics = [DiagnosticRow(run_id, now, "invalid_event", p.reason, p.excerpt)
                       for p in span.problems]
        # Past the invalid-record cap a run is stopped: its further bad records are only counted.
        decoded = decode_lines(span.data, run_id,
                               max_problems=max(self.max_invalid - self._invalid, 0) + 1)
        for problem in decoded.problems:
            diagnostics.append(DiagnosticRow(run_id, now, "invalid_event", problem.reason,
                                             problem.excerpt))
        events = decoded.events
        if events:
            first = self._expected
            if [e.seq for e in events] != list(range(first, first + len(events))):
                events = self._reorder(events, diagnostics, now)
        if events:
            self._expected = events[-1].seq + 1
            # decode_lines checked that every payload is UTF-8.
            rows.extend(event_rows(events))
            if not decoded.types.isdisjoint(TERMINAL_EVENT_TYPES):
                self._terminal = last_terminal(events) or self._terminal
        if diagnostics and self._invalid + len(diagnostics) > self.max_invalid:
            diagnostics = await self._flood(diagnostics, now)
        self._invalid += len(diagnostics)
        updates: dict[str, dict[str, Any]] = {}
        if now - self._last_hb_write >= _HEARTBEAT_WRITE_EVERY:
            updates[run_id] = {"heartbeat_at": now}
            self._last_hb_write = now
        await self.writer.put(WriteItem(run_id=run_id, events=rows,
                                        diagnostics=diagnostics, run_updates=updates))

    async def _flood(self, diagnostics: list[DiagnosticRow], now: float) -> list[DiagnosticRow]:
        """Past ``max_invalid``: keep no more diagnostics and end the run, at once."""
        kept = diagnostics[:max(self.max_invalid - self._invalid, 0)]
        if self._stop is None:
            message = (f"the worker wrote more than {self.max_invalid} invalid records; the run was "
                       "stopped (a broken or hostile workflow writing into its event log?)")
            kept.append(DiagnosticRow(self.run_id, now, "invalid_event_flood", message))
            self._stop = _Stop("failed", message, "InvalidEvent")
            killed = await self.worker.kill_tree()
            log.warning("run %s: %s; killed %d processes", self.run_id, message, killed)
        return kept

    def _reorder(self, events: list[WireEvent], diagnostics: list[DiagnosticRow],
                 now: float) -> list[WireEvent]:
        """Keep events whose seq moves forward; record each gap and each repeat."""
        kept: list[WireEvent] = []
        expected = self._expected
        for event in events:
            seq = event.seq
            if seq < expected:
                diagnostics.append(DiagnosticRow(self.run_id, now, "seq_duplicate",
                                                 f"seq {seq} arrived again (expected {expected})"))
                continue
            if seq > expected:
                diagnostics.append(DiagnosticRow(self.run_id, now, "seq_gap",
                                                 f"seq jumped from {expected - 1} to {seq}"))
            kept.append(event)
            expected = seq + 1
        return kept

    # -- verdict --------------------------------------------------------------------------------

    def _conclude(self, exit: WorkerExit) -> RunResult:
        exit_code = exit.exit_code
        base: dict[str, Any] = {"exit_code": exit_code}
        if self._stop is not None:
            return RunResult(self._stop.reason, error=self._stop.message,
                             error_type=self._stop.error_type or self._stop.reason,
                             **base)
        if self._terminal is not None:
            return self._reported(verdict(self._terminal), exit_code)
        if exit_code == SPOOL_REFUSED_EXIT:
            return RunResult(
                "failed", error="the worker could not take the run's spool: another live worker of "
                "this run writes it, or the file was replaced (see the worker's stderr); it ran "
                "nothing", error_type="SpoolError", **base)
        limit = limit_crash(exit_code, self.limits)
        if limit is not None:
            return RunResult("failed", error=limit, error_type="LimitExceeded",
                             **base)
        corrupted = (f"; its event stream was corrupted ({self._invalid} invalid records), the "
                     "spool holds what it wrote") if self._invalid else ""
        if exit.cause is not None:  # the backend knows more: a lost node or actor
            return RunResult(
                "crashed", error=f"worker lost before reporting an outcome: {exit.cause}" + corrupted,
                error_type="WorkerCrashed", **base)
        return RunResult(
            "crashed",
            error=f"worker died with {describe_exit(exit_code)} before reporting an outcome"
                  + _likely_cause(exit_code) + crash_hint(exit_code, self.limits) + corrupted,
            error_type="WorkerCrashed", **base)

    def _reported(self, reported: Verdict, exit_code: int | None) -> RunResult:
        """The worker's own outcome, unless how the process ended contradicts it."""
        result = RunResult.of(reported, exit_code=exit_code)
        expected = EXIT_CODES[reported.status]
        if exit_code is None or exit_code == expected:  # None: the backend could not tell
            return result
        seq = self._terminal.seq if self._terminal is not None else "?"
        self._contradiction = (
            f"the worker reported run_{reported.status} (seq {seq}) but then ended with {describe_exit(exit_code)}, not exit code {expected}: the run is "
            "marked crashed; a workflow cannot emit terminal events, so something in the worker "
            "wrote the record itself or the process was killed while ending")
        return RunResult("crashed", exit_code, result=result.result,
                         error=self._contradiction, error_type="OutcomeContradiction")


def _likely_cause(exit_code: int | None) -> str:
    causes = {-9: " (SIGKILL: killed from outside or by the kernel's OOM killer)",
              -11: " (SIGSEGV: a native extension crashed)",
              -6: " (SIGABRT: a native library aborted)"}
    if exit_code is None:
        return ""
    if exit_code in causes:
        return causes[exit_code]
    if exit_code > 0:
        return " (the process called exit without reporting; os._exit or sys.exit from a thread?)"
    return ""
