"""Recovering runs whose parent died: adopt live workers, settle dead ones, optionally resume.

::

    store.unfinished_runs()  (queued | starting | running)
        │ owner alive (isolane.executor.ownership: pid here, heartbeat elsewhere)? ─▶ leave it
        ├─ remote worker (meta.worker: ray relay) ─▶ re-attach through the backend: replay after
        │                                       the store's last seq, then supervise it live
        ├─ worker alive (pid + create time)  ─▶ adopt: tail its spool into the store until the
        │                                       process exits (pidfd sentinel), then settle
        └─ worker gone / never started       ─▶ import the spool rows the store lacks, settle
    settle: the worker's own terminal event decides (completed / failed / cancelled);
            without one the run is ``crashed``; with ``resume`` a crashed run continues at once.

Every import goes through the store's idempotent ``(run_id, seq)`` insert, so running recovery
twice, or while a spool is still growing, never duplicates an event.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import orjson

from isolane.backends.interface import WorkerHandle
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.ownership import owner_alive, owner_stamp
from isolane.executor.run import Outcome, RunHandle, RunSpec
from isolane.executor.spool import import_spool
from isolane.executor.writer import StoreWriter, WriteItem
from isolane.schemas.envelope import WireEvent
from isolane.schemas.payloads import TERMINAL_EVENT_TYPES
from isolane.schemas.spool import SpoolTail, spool_path
from isolane.tracking.rows import RunRow
from isolane.worker.proctree import kill_process_tree, process_alive

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

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
    if terminal is None:
        return RunResult("crashed", None, error=cause, error_type="WorkerCrashed")
    data: dict[str, Any] = orjson.loads(bytes(terminal.data))
    if terminal.type == "run_completed":
        return RunResult("completed", 0, result=data.get("result"))
    if terminal.type == "run_failed":
        return RunResult("failed", 1, error=data.get("error"), error_type=data.get("error_type"),
                         traceback=data.get("traceback"))
    return RunResult("cancelled", 2, error=data.get("reason"), error_type="cancelled")


class _Adoption:
    """Follows one orphaned worker's spool into the store until the worker exits."""

    def __init__(self, executor: Executor, row: RunRow) -> None:
        self.executor = executor
        self.row = row
        self.tail = SpoolTail(spool_path(row.work_dir), row.id, after_seq=0)
        self.terminal: WireEvent | None = None
        self.imported = 0

    async def pump_once(self) -> None:
        events, problems = await anyio.to_thread.run_sync(self.tail.read)
        now = time.time()
        if not events and not problems:
            return
        for event in events:
            if event.type in TERMINAL_EVENT_TYPES:
                self.terminal = event
        rows = [(e.run_id, e.seq, e.ts, e.type, e.node_id, bytes(e.data).decode()) for e in events]
        self.imported += len(rows)
        writer = self.executor._writer
        assert writer is not None
        await writer.put(WriteItem(run_id=self.row.id, events=rows,
                                   diagnostics=[(self.row.id, now, "spool_invalid", p, "") for p in problems],
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
            await self.pump_once()  # what it wrote before exiting

    def kill(self) -> None:
        if self.row.worker_pid and process_alive(self.row.worker_pid, self.row.worker_create_time):
            kill_process_tree(self.row.worker_pid, self.row.worker_create_time)


async def recover_runs(executor: Executor, *, resume: bool = False) -> list[RecoveryReport]:
    """Adopt or settle every unfinished run no live isolane process owns; see the module docstring.

    Adopted runs are followed in the executor's task group (their handles are live); with
    ``resume`` runs that end up ``crashed`` are resumed.
    """
    store = executor.store
    rows = await anyio.to_thread.run_sync(store.unfinished_runs)
    reports: list[RecoveryReport] = []
    for row in rows:
        if row.id in executor._handles and not executor._handles[row.id].done:
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
            attached = await reattach(executor, row, worker_meta)
            if attached is not None:
                reports.append(RecoveryReport(row.id, "reattached", "running", 0,
                                              f"its worker still runs on {remote}"))
                attached._resume_when_crashed = resume
                continue
            # The relay is gone, and its worker with it: settle from what was stored.
        elif process_alive(row.worker_pid, row.worker_create_time):
            handle = adopt(executor, row)
            reports.append(RecoveryReport(row.id, "adopted", "running", 0,
                                          f"worker pid {row.worker_pid} still running"))
            handle._resume_when_crashed = resume
            continue
        adoption = _Adoption(executor, row)
        await adoption.pump_once()
        cause = ("the parent died before the worker started" if row.worker_pid is None
                 else "the worker died while no parent was watching it")
        result = _verdict(adoption.terminal, cause=cause)
        writer = executor._writer
        assert writer is not None
        await writer.put_and_wait(WriteItem(run_updates={row.id: result.run_update()}))
        if resume and _resumable(result):
            await executor.resume(row.id)
            reports.append(RecoveryReport(row.id, "resumed", "running", adoption.imported, cause))
        else:
            reports.append(RecoveryReport(row.id, "settled", result.status, adoption.imported, cause))
    return reports


def _resumable(result: RunResult) -> bool:
    """Crashed, or stopped because nobody could answer its question any more (parent gone)."""
    return result.status == "crashed" or (
        result.status == "failed" and (result.error_type or "").endswith("HumanInputUnavailable"))


# -- taking a run over: this executor supervises it from now on -------------------------------


def adopt(executor: Executor, row: RunRow) -> RunHandle:
    """Follow a live local worker whose parent died, through its spool, until it exits."""
    handle = _take_over(executor, row)
    adoption = _Adoption(executor, row)
    handle._kill = adoption.kill  # before the task starts: a cancel may come at once
    _task_group(executor).start_soon(_drive_adopted, executor, handle, row, adoption)
    return handle


async def reattach(executor: Executor, row: RunRow,
                   worker_meta: Mapping[str, Any]) -> RunHandle | None:
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
    handle = _take_over(executor, row)
    # The monitor exists before the task starts: a cancel (or the executor's shutdown) may
    # come at once, and it goes through the monitor.
    handle._monitor = _monitor_for(executor, row, worker, since_seq=high or 0)
    _task_group(executor).start_soon(_drive_reattached, executor, handle, row)
    return handle


def _take_over(executor: Executor, row: RunRow) -> RunHandle:
    handle = RunHandle(executor, row.id, live=True)
    executor._handles[row.id] = handle
    return handle


async def _drive_adopted(executor: Executor, handle: RunHandle, row: RunRow,
                         adoption: _Adoption) -> None:
    result: RunResult | None = None
    try:
        await _own(executor, row)
        await adoption.follow()
        result = _verdict(adoption.terminal,
                          cause="the adopted worker exited without reporting an outcome")
    finally:
        with anyio.CancelScope(shield=True):
            await _settle(executor, handle, result)


def _monitor_for(executor: Executor, row: RunRow, worker: WorkerHandle, *,
                 since_seq: int) -> RunMonitor:
    """A monitor for a re-attached worker, with the run's own options."""
    options = row.meta.get("options", {})
    spec = RunSpec.from_stored(row.workflow, row.task, options)
    timeout = spec.timeout
    if timeout is not None and row.started_at is not None:
        # The run's clock did not stop while no parent watched it: only what is left of it.
        timeout = max(timeout - (time.time() - row.started_at), _TAIL_INTERVAL)
    return RunMonitor(worker, _writer(executor), start_seq=since_seq, timeout=timeout,
                      heartbeat_timeout=spec.heartbeat_timeout, cancel_grace=spec.cancel_grace,
                      limits=spec.limits)


async def _drive_reattached(executor: Executor, handle: RunHandle, row: RunRow) -> None:
    monitor = handle._monitor
    assert monitor is not None
    log.info("run %s: re-attached to its worker on %s after seq %d", row.id,
             monitor.worker.location, monitor.start_seq)
    result: RunResult | None = None
    try:
        await _own(executor, row)
        result = await monitor.supervise()
    finally:
        handle._monitor = None
        with anyio.CancelScope(shield=True):
            await _settle(executor, handle, result)


async def _own(executor: Executor, row: RunRow) -> None:
    meta = {**row.meta, **owner_stamp()}
    await _writer(executor).put(WriteItem(run_updates={row.id: {"meta": meta}}))


async def _settle(executor: Executor, handle: RunHandle, result: RunResult | None) -> None:
    """Record how a taken-over run ended; resume it when asked and it crashed."""
    if result is None:
        result = RunResult("crashed", None, error="the parent stopped following the run",
                           error_type="ParentInterrupted")
    run_id = handle.run_id
    await _writer(executor).put_and_wait(WriteItem(run_updates={run_id: result.run_update()}))
    await executor._keep_state(run_id)
    handle._outcome = Outcome(run_id=run_id, status=result.status, result=result.result,
                              error=result.error, error_type=result.error_type,
                              traceback=result.traceback, exit_code=result.exit_code)
    handle._done.set()
    executor._hub.wake(run_id)
    if handle._resume_when_crashed and _resumable(result):
        # The resumed attempt gets its own handle; this one ended with the take-over.
        await executor.resume(run_id)


def _task_group(executor: Executor) -> TaskGroup:
    if executor._tg is None:
        raise RuntimeError("the executor is not open")
    return executor._tg


def _writer(executor: Executor) -> StoreWriter:
    if executor._writer is None:
        raise RuntimeError("the executor is not open")
    return executor._writer
