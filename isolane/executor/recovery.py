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

from isolane.executor.monitor import RunResult
from isolane.executor.ownership import owner_alive
from isolane.executor.proctree import kill_process_tree, process_alive
from isolane.executor.spool import SpoolTail, spool_path
from isolane.executor.writer import WriteItem
from isolane.schemas.events import TERMINAL_EVENT_TYPES, WireEvent
from isolane.tracking.rows import RunRow

if TYPE_CHECKING:
    from isolane.executor.executor import Executor, RunHandle

__all__ = ["RecoveryReport", "recover_runs"]

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
            attached = await executor._reattach(row, worker_meta)
            if attached is not None:
                reports.append(RecoveryReport(row.id, "reattached", "running", 0,
                                              f"its worker still runs on {remote}"))
                if resume:
                    executor._resume_after(attached)
                continue
            # The relay is gone, and its worker with it: settle from what was stored.
        elif process_alive(row.worker_pid, row.worker_create_time):
            handle = executor._adopt(row)
            reports.append(RecoveryReport(row.id, "adopted", "running", 0,
                                          f"worker pid {row.worker_pid} still running"))
            if resume:
                executor._resume_after(handle)
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


async def follow_adopted(executor: Executor, handle: RunHandle, row: RunRow) -> RunResult:
    """Follow an adopted worker to its end and return its verdict (used by the executor)."""
    adoption = _Adoption(executor, row)
    handle._kill = adoption.kill
    await adoption.follow()
    return _verdict(adoption.terminal, cause="the adopted worker exited without reporting an outcome")
