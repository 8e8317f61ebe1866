"""Recovering runs whose parent died: adopt live workers, settle dead ones, optionally resume.

::

    store.unfinished_runs()  (queued | starting | running)
        │ owner alive (isolane.executor.ownership: pid here, heartbeat elsewhere)? ─▶ leave it
        ├─ remote worker (meta.worker: ray relay) ─▶ re-attach through the backend: replay after
        │                                       the store's last seq, then supervise it live
        ├─ worker alive: its pid (+ create time), or, with no pid recorded, its spool's writer
        │  lock (a "starting" run gets LAUNCH_GRACE for its worker to appear)
        │                                    ─▶ adopt: tail its spool into the store until the
        │                                       worker is gone (pidfd, lock released), settle
        └─ worker gone / never started       ─▶ import the spool rows the store lacks, settle
    settle: the worker's own terminal event decides (completed / failed / cancelled;
            isolane.schemas.outcome); without one the run is ``crashed``; with ``resume`` a
            crashed run continues at once.
    store.list_runs(status="crashed")        a recent crashed run whose spool holds more than
                                             the store (it ended while the store was down):
                                             import it; its terminal event, if any, settles
                                             it again (a "resettled" diagnostic says so)

A parent commits a run's ``starting`` status before it launches a worker, and the worker takes
its spool's writer lock before it runs anything: so a worker that can be running is always
findable, and a run is never resumed while its first worker still writes (two workers never
write one spool: the lock refuses the second).

A run taken over is driven like any other (:meth:`isolane.executor.live.LiveRuns.start`): its
driver returns how it ended, and it is settled in the one place every run is.

Every import goes through the store's idempotent ``(run_id, seq)`` insert, so running recovery
twice, or while a spool is still growing, never duplicates an event.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import orjson
import psutil

from isolane.backends.interface import WorkerHandle
from isolane.executor.live import LiveRun, LiveRuns
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.ownership import owner_alive, owner_stamp
from isolane.executor.run import Outcome, RunHandle, RunSpec
from isolane.executor.spool import SpoolFollower, import_spool, probe_spool
from isolane.executor.writer import WriteItem
from isolane.schemas.envelope import WireEvent, event_rows
from isolane.schemas.outcome import last_terminal, verdict
from isolane.schemas.spec import EXIT_CODES
from isolane.schemas.spool import SpoolError, spool_path
from isolane.tracking.rows import DiagnosticRow, RunRow
from isolane.worker.proctree import kill_process_tree, process_alive

if TYPE_CHECKING:
    from isolane.executor.executor import Executor

__all__ = ["RecoveryReport", "adopt", "reattach", "recover_runs"]

log = logging.getLogger(__name__)

#: How often an adopted worker's spool is read; a file has no readiness fd to wait on.
_TAIL_INTERVAL: Final = 0.1
#: How long after a parent committed ``starting`` its worker may take to appear (fork from the
#: forkserver, take the spool's lock) before recovery decides it never started.
LAUNCH_GRACE: Final = 15.0
#: How many of the latest ``crashed`` runs recovery checks for a spool holding more.
_RESETTLE_LIMIT: Final = 200


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery did with one run."""

    run_id: str
    action: str  # "adopted" | "reattached" | "settled" | "resettled" | "resumed" | "skipped"
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
    """Follows one orphaned worker's spool into the store until the worker is gone."""

    def __init__(self, runs: LiveRuns, row: RunRow) -> None:
        self.runs = runs
        self.row = row
        self.spool = SpoolFollower(spool_path(row.work_dir), row.id)
        self.terminal: WireEvent | None = None
        self.imported = 0
        #: The worker process, when known: recorded by its parent, or read from its run_started.
        self.pid = row.worker_pid
        self.create_time = row.worker_create_time

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
        update: dict[str, Any] = {"heartbeat_at": now}
        if self.pid is None and not final and self._learn_pid():
            update.update(worker_pid=self.pid, worker_create_time=self.create_time)
        await self.runs.writer.put(WriteItem(
            run_id=self.row.id, events=event_rows(events),
            diagnostics=[DiagnosticRow(self.row.id, now, "spool_invalid", p) for p in problems],
            run_updates={self.row.id: update}))

    def _learn_pid(self) -> bool:
        """Take the worker's pid from its ``run_started`` (no parent recorded it), while its
        lock is held: the lock proves a process of the run lives, the event names it."""
        pid, create_time = _started_process(self.spool.result.started)
        if pid is None or not self.spool.writer_alive():
            return False
        self.pid, self.create_time = pid, create_time
        return True

    async def follow(self) -> None:
        exited = anyio.Event()

        async def wait_exit() -> None:
            # With a pid: its exit (pidfd). Then, and without one: the writer lock released
            # (every process that could still write the spool is gone).
            if self.pid is not None and process_alive(self.pid, self.create_time):
                try:
                    fd = os.pidfd_open(self.pid)
                except (OSError, AttributeError):
                    pass
                else:
                    try:
                        await anyio.wait_readable(fd)
                    finally:
                        os.close(fd)
            while self.spool.writer_alive():
                await anyio.sleep(_TAIL_INTERVAL)
            exited.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_exit)
            while not exited.is_set():
                await self.pump_once()
                with anyio.move_on_after(_TAIL_INTERVAL):
                    await exited.wait()
            await self.pump_once(final=True)  # what it wrote before exiting

    def kill(self) -> None:
        if self.pid is None:
            self._learn_pid()
        if self.pid and process_alive(self.pid, self.create_time):
            kill_process_tree(self.pid, self.create_time)


def _started_process(started: WireEvent | None) -> tuple[int | None, float | None]:
    """``(pid, create_time)`` of the process a ``run_started`` names, if it runs on this host."""
    if started is None:
        return None, None
    try:
        data = orjson.loads(bytes(started.data))
    except orjson.JSONDecodeError:
        return None, None
    pid = data.get("pid") if isinstance(data, dict) else None
    if not isinstance(pid, int) or pid <= 1 or data.get("host") != socket.gethostname():
        return None, None
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None, None


async def _local_worker_alive(row: RunRow) -> bool:
    """Whether a worker of ``row`` runs on this machine: its recorded pid, else its spool's
    writer lock; a ``starting`` run's worker gets until :data:`LAUNCH_GRACE` after the
    intent was committed to appear."""
    if row.worker_pid is not None and process_alive(row.worker_pid, row.worker_create_time):
        return True
    path = spool_path(row.work_dir)
    deadline = (row.heartbeat_at or 0.0) + LAUNCH_GRACE if row.status == "starting" else 0.0
    while True:
        if await anyio.to_thread.run_sync(probe_spool, path):
            return True
        if time.time() >= deadline:
            return False
        await anyio.sleep(_TAIL_INTERVAL)


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
        elif await _local_worker_alive(row):
            adopt(executor, runs, row, resume=resume)
            which = f"pid {row.worker_pid}" if row.worker_pid is not None else "holding its spool"
            reports.append(RecoveryReport(row.id, "adopted", "running", 0, f"worker {which} still running"))
            continue
        adoption = _Adoption(runs, row)
        await adoption.pump_once(final=True)
        cause = ("the parent died before the worker started"
                 if row.worker_pid is None and not adoption.imported
                 else "the worker died while no parent was watching it")
        result = _verdict(adoption.terminal, cause=cause)
        await runs.writer.put_and_wait(WriteItem(run_updates={row.id: result.run_update()}))
        await runs.keep_state(row.id)
        if resume and _resumable(result):
            await executor.resume(row.id)
            reports.append(RecoveryReport(row.id, "resumed", "running", adoption.imported, cause))
        else:
            reports.append(RecoveryReport(row.id, "settled", result.status, adoption.imported, cause))
    reports.extend(await _resettle_crashed(executor, runs, resume=resume))
    return reports


async def _resettle_crashed(executor: Executor, runs: LiveRuns, *, resume: bool) -> list[RecoveryReport]:
    """Recent ``crashed`` runs whose spool holds more than the store: import the rest; a
    terminal event among it decides their status again (a ``resettled`` diagnostic says so)."""
    store = executor.store
    rows = await anyio.to_thread.run_sync(
        lambda: store.list_runs(status="crashed", limit=_RESETTLE_LIMIT))
    reports: list[RecoveryReport] = []
    for row in rows:
        if executor.is_live(row.id) or row.meta.get("worker", {}).get("backend", "local") != "local":
            continue
        if await anyio.to_thread.run_sync(probe_spool, spool_path(row.work_dir)):
            continue  # a worker still writes it (a resume of another parent): not ours
        _, _, stored_high = await anyio.to_thread.run_sync(store.seq_stats, row.id)
        try:
            imported = await anyio.to_thread.run_sync(import_spool, store, row.id, spool_path(row.work_dir))
        except SpoolError as exc:
            log.warning("run %s: its spool was not read: %s", row.id, exc)
            continue
        if not imported.inserted:
            continue
        terminal = imported.terminal
        if terminal is None or terminal.seq <= (stored_high or 0):
            reports.append(RecoveryReport(row.id, "settled", "crashed", imported.inserted,
                                          "imported the events its spool held beyond the store"))
            continue
        result = _verdict(terminal, cause="")
        await runs.writer.put_and_wait(WriteItem(
            diagnostics=[DiagnosticRow(row.id, time.time(), "resettled",
                                       f"the run was marked crashed ({row.error}), but its spool held "
                                       f"{imported.inserted} more events ending in {terminal.type}: "
                                       f"it is {result.status} now")],
            run_updates={row.id: result.run_update()}))
        await runs.keep_state(row.id)
        log.info("run %s: resettled as %s from its spool", row.id, result.status)
        reports.append(RecoveryReport(row.id, "resettled", result.status, imported.inserted,
                                      "its spool held its outcome"))
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
