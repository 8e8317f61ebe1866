"""Recovering runs whose parent died: adopt live workers, settle dead ones, optionally resume.

::

    store.unfinished_runs()  (queued | starting | running)
        │ owner alive (isolane.executor.ownership: pid here, heartbeat elsewhere)? ─▶ leave it
        ├─ remote worker (meta.worker: ray relay) ─▶ re-attach through the backend: replay after
        │                                       the store's last seq, then supervise it live
        ├─ worker alive (pid + create time)  ─▶ adopt: tail its spool into the store until the
        │                                       process exits (pidfd sentinel), then settle
        └─ worker gone / never started       ─▶ import the spool rows the store lacks, settle
    settle: the worker's own terminal event decides (completed / failed / cancelled;
            isolane.schemas.outcome); without one the run is ``crashed``; with ``resume`` a
            crashed run continues at once.

A run taken over is driven like any other (:meth:`isolane.executor.live.LiveRuns.start`): its
driver returns how it ended, and it is settled in the one place every run is.

Every import goes through the store's idempotent ``(run_id, seq)`` insert, so running recovery
twice, or while a spool is still growing, never duplicates an event.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from isolane.backends.interface import WorkerHandle
from isolane.executor.live import LiveRun, LiveRuns
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.ownership import owner_alive, owner_stamp
from isolane.executor.run import Outcome, RunHandle, RunSpec
from isolane.executor.spool import SpoolFollower, import_spool
from isolane.executor.writer import WriteItem
from isolane.schemas.envelope import WireEvent
from isolane.schemas.outcome import last_terminal, verdict
from isolane.schemas.spec import EXIT_CODES
from isolane.schemas.spool import spool_path
from isolane.tracking.rows import DiagnosticRow, RunRow
from isolane.worker.proctree import kill_process_tree, process_alive

if TYPE_CHECKING:
    from isolane.executor.executor import Executor

__all__ = ["RecoveryReport", "adopt", "reattach", "recover_runs"]

log = logging.getLogger(__name__)

#: How often an adopted worker's spool is read; a file has no readiness fd to wait on.
_TAIL_INTERVAL: Final = 0.1


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery did with one run."""

    run_id: str
    action: str  # "adopted" | "reattached" | "settled" | "resumed" | "skipped"
    status: str
    imported: int
    detail: str = ""


def _verdict(terminal: WireEvent | None, *, cause: str) -> RunResult:
    """How an orphaned worker ended: its own terminal event, else a crash (``cause``)."""
    if terminal is None:
        return RunResult("crashed", None, error=cause, error_type="WorkerCrashed")
    reported = verdict(terminal)
    return RunResult.of(reported, exit_code=EXIT_CODES[reported.status])


class _Adoption:
    """Follows one orphaned worker's spool into the store until the worker exits."""

    def __init__(self, runs: LiveRuns, row: RunRow) -> None:
        self.runs = runs
        self.row = row
        self.spool = SpoolFollower(spool_path(row.work_dir), row.id)
        self.terminal: WireEvent | None = None
        self.imported = 0

    async def pump_once(self, *, final: bool = False) -> None:
        """Store what the worker completed since the last call (``final``: it has exited, take
        everything up to its last complete record)."""
        events, problems = await anyio.to_thread.run_sync(
            self.spool.finish if final else self.spool.read)
        now = time.time()
        if not events and not problems:
            return
        self.terminal = last_terminal(events) or self.terminal
        self.imported += len(events)
        await self.runs.writer.put(WriteItem(
            run_id=self.row.id, events=[e.row() for e in events],
            diagnostics=[DiagnosticRow(self.row.id, now, "spool_invalid", p) for p in problems],
            run_updates={self.row.id: {"heartbeat_at": now}}))

    async def follow(self) -> None:
        pid = self.row.worker_pid or 0
        exited = anyio.Event()

        async def wait_exit() -> None:
            try:
                fd = os.pidfd_open(pid)
            except (OSError, AttributeError):
                while process_alive(pid, self.row.worker_create_time):
                    await anyio.sleep(_TAIL_INTERVAL)
            else:
                try:
                    await anyio.wait_readable(fd)
                finally:
                    os.close(fd)
            exited.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_exit)
            while not exited.is_set():
                await self.pump_once()
                with anyio.move_on_after(_TAIL_INTERVAL):
                    await exited.wait()
            await self.pump_once(final=True)  # what it wrote before exiting

    def kill(self) -> None:
        if self.row.worker_pid and process_alive(self.row.worker_pid, self.row.worker_create_time):
            kill_process_tree(self.row.worker_pid, self.row.worker_create_time)


async def recover_runs(executor: Executor, runs: LiveRuns, *, resume: bool = False) -> list[RecoveryReport]:
    """Adopt or settle every unfinished run no live isolane process owns; see the module docstring.

    Adopted runs are driven in ``runs`` (the executor's live runs; their handles are live);
    with ``resume`` runs that end up ``crashed`` are resumed.
    """
    store = executor.store
    rows = await anyio.to_thread.run_sync(store.unfinished_runs)
    reports: list[RecoveryReport] = []
    for row in rows:
        if executor.is_live(row.id):
            continue
        if await anyio.to_thread.run_sync(owner_alive, row):
            reports.append(RecoveryReport(row.id, "skipped", row.status, 0,
                                          f"owned by live process {row.meta.get('parent_pid')} "
                                          f"on {row.meta.get('parent_host', 'this host')}"))
            continue
        worker_meta: Mapping[str, Any] = row.meta.get("worker") or {}
        remote = worker_meta.get("backend", "local")
        if remote != "local":
            if remote != executor.backend.name:
                reports.append(RecoveryReport(
                    row.id, "skipped", row.status, 0,
                    f"its worker ran on the {remote} backend, which may still be running it; open "
                    f"the executor with backend={remote!r} (ISOLANE_BACKEND={remote}) to re-attach"))
                continue
            if await reattach(executor, runs, row, worker_meta, resume=resume) is not None:
                reports.append(RecoveryReport(row.id, "reattached", "running", 0,
                                              f"its worker still runs on {remote}"))
                continue
            # The relay is gone, and its worker with it: settle from what was stored.
        elif process_alive(row.worker_pid, row.worker_create_time):
            adopt(executor, runs, row, resume=resume)
            reports.append(RecoveryReport(row.id, "adopted", "running", 0,
                                          f"worker pid {row.worker_pid} still running"))
            continue
        adoption = _Adoption(runs, row)
        await adoption.pump_once(final=True)
        cause = ("the parent died before the worker started" if row.worker_pid is None
                 else "the worker died while no parent was watching it")
        result = _verdict(adoption.terminal, cause=cause)
        await runs.writer.put_and_wait(WriteItem(run_updates={row.id: result.run_update()}))
        if resume and _resumable(result):
            await executor.resume(row.id)
            reports.append(RecoveryReport(row.id, "resumed", "running", adoption.imported, cause))
        else:
            reports.append(RecoveryReport(row.id, "settled", result.status, adoption.imported, cause))
    return reports


def _resumable(result: RunResult | Outcome) -> bool:
    """Crashed, or stopped because nobody could answer its question any more (parent gone)."""
    return result.status == "crashed" or (
        result.status == "failed" and (result.error_type or "").endswith("HumanInputUnavailable"))


# -- taking a run over: this executor supervises it from now on -------------------------------


def _take_over(executor: Executor, runs: LiveRuns, row: RunRow,
               drive: Callable[[LiveRun], Awaitable[RunResult | None]], *, resume: bool) -> LiveRun:
    """Drive ``row`` in ``runs``; once settled, resume it when asked and it crashed."""

    async def then(outcome: Outcome) -> None:
        if resume and _resumable(outcome):
            # The resumed attempt gets its own handle; this one ended with the take-over.
            await executor.resume(outcome.run_id)

    async def own_then_drive(live: LiveRun) -> RunResult | None:
        await runs.update(row.id, {"meta": {**row.meta, **owner_stamp()}})
        return await drive(live)

    return runs.start(row.id, own_then_drive, interrupted="the parent stopped following the run",
                      then=then)


def adopt(executor: Executor, runs: LiveRuns, row: RunRow, *, resume: bool = False) -> RunHandle:
    """Follow a live local worker whose parent died, through its spool, until it exits."""
    adoption = _Adoption(runs, row)

    async def drive(live: LiveRun) -> RunResult | None:
        await adoption.follow()
        return _verdict(adoption.terminal,
                        cause="the adopted worker exited without reporting an outcome")

    live = _take_over(executor, runs, row, drive, resume=resume)
    live.kill = adoption.kill  # before the driver runs: a cancel may come at once
    return RunHandle(executor, row.id, live)


async def reattach(executor: Executor, runs: LiveRuns, row: RunRow, worker_meta: Mapping[str, Any],
                   *, resume: bool = False) -> RunHandle | None:
    """Re-attach to a remote worker that outlived its parent; None if it is gone.

    The backend replays what the worker wrote after the last event the store holds, then
    streams live; the run is supervised as if this executor had started it.
    """
    attach = getattr(executor.backend, "attach", None)
    if attach is None:
        return None
    store = executor.store
    await anyio.to_thread.run_sync(import_spool, store, row.id, spool_path(row.work_dir))
    _, _, high = await anyio.to_thread.run_sync(store.seq_stats, row.id)
    worker = await attach(row.id, worker_meta, since_seq=high or 0,
                          blob_dir=str((executor.home / "blobs").resolve()))
    if worker is None:
        return None
    monitor = _monitor_for(runs, row, worker, since_seq=high or 0)

    async def drive(live: LiveRun) -> RunResult | None:
        log.info("run %s: re-attached to its worker on %s after seq %d", row.id,
                 monitor.worker.location, monitor.start_seq)
        try:
            return await monitor.supervise()
        finally:
            live.monitor = None

    live = _take_over(executor, runs, row, drive, resume=resume)
    # The monitor is in place before the driver runs: a cancel (or the executor's shutdown) may
    # come at once, and it goes through the monitor.
    live.monitor = monitor
    return RunHandle(executor, row.id, live)


def _monitor_for(runs: LiveRuns, row: RunRow, worker: WorkerHandle, *, since_seq: int) -> RunMonitor:
    """A monitor for a re-attached worker, with the run's own options."""
    options = row.meta.get("options", {})
    spec = RunSpec.from_stored(row.workflow, row.task, options)
    timeout = spec.timeout
    if timeout is not None and row.started_at is not None:
        # The run's clock did not stop while no parent watched it: only what is left of it.
        timeout = max(timeout - (time.time() - row.started_at), _TAIL_INTERVAL)
    return RunMonitor(worker, runs.writer, start_seq=since_seq, timeout=timeout,
                      heartbeat_timeout=spec.heartbeat_timeout, cancel_grace=spec.cancel_grace,
                      limits=spec.limits)
