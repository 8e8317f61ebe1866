"""Driving a run this parent started: a worker slot, one attempt after another, until it ends.

::

    Attempts.drive(live)                       (a Driver of isolane.executor.live.LiveRuns)
      wait for a worker slot (CapacityLimiter)   a cancel while queued ends it ``cancelled``
      build the first worker spec                a resume's reads the store: after the slot,
                                                 through an outage (LiveRuns.read_store)
      loop:
        attempt: status starting, committed ─▶ WorkerBackend.launch(spec) ─▶ status running
                 (the intent is durable before any worker can exist: a parent killed while
                 the worker starts leaves "starting", and recovery looks for the worker by its
                 spool's writer lock before it settles or resumes the run)
                 RunMonitor.supervise()          frames + exit + watchdog until the worker is gone
        crashed, and restarts left? ─▶ a "restart" diagnostic, status queued, backoff,
                 a resumed spec (WorkerSpecs.resumed), again
      return the last attempt's RunResult        LiveRuns settles it
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from isolane.backends.interface import WorkerBackend
from isolane.executor.live import LiveRun, LiveRuns
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.run import RunSpec
from isolane.executor.writer import WriteItem
from isolane.schemas.spec import WorkerSpec
from isolane.schemas.spool import SpoolError
from isolane.tracking.rows import DiagnosticRow

__all__ = ["Attempts"]

log = logging.getLogger(__name__)


class Attempts:
    """Starts and restarts the workers of the runs one executor submitted, branched or resumed."""

    def __init__(self, *, backend: WorkerBackend, runs: LiveRuns, max_workers: int,
                 resumed_spec: Callable[[str, WorkerSpec], WorkerSpec]) -> None:
        self.backend = backend
        self._runs = runs
        self._slots = anyio.CapacityLimiter(max_workers)
        self._resumed_spec = resumed_spec  # blocking: called in a thread

    def start(self, run_id: str, spec: RunSpec, worker_spec: WorkerSpec | Callable[[], WorkerSpec], *,
              meta: Mapping[str, Any]) -> LiveRun:
        """Drive ``run_id`` from a queue slot to its end, in the executor's task group.

        ``worker_spec`` may be a blocking builder (a resume's reads the store): it is called in a
        thread once the run has a slot. ``meta`` is the run's stored ``meta`` (it gains where
        each attempt's worker runs), kept here so a launch reads nothing from the store.
        """
        async def drive(live: LiveRun) -> RunResult | None:
            return await self._drive(live, spec, worker_spec, dict(meta))

        return self._runs.start(run_id, drive, interrupted="the parent stopped supervising the run")

    async def _drive(self, live: LiveRun, spec: RunSpec, worker_spec: WorkerSpec | Callable[[], WorkerSpec],
                     meta: dict[str, Any]) -> RunResult | None:
        with anyio.CancelScope() as queue_scope:
            live.queue_scope = queue_scope
            await self._slots.acquire_on_behalf_of(live)
        live.queue_scope = None
        if queue_scope.cancelled_caught:
            return RunResult("cancelled", None, error=live.cancel_requested, error_type="cancelled")
        try:
            if not isinstance(worker_spec, WorkerSpec):
                worker_spec = await self._runs.read_store(worker_spec, what=f"preparing run {live.run_id}")
            restarts = 0
            while True:
                result = await self._attempt(live, spec, worker_spec, meta)
                if result.status != "crashed" or restarts >= spec.max_restarts \
                        or live.cancel_requested is not None:
                    return result
                restarts += 1
                delay = spec.restart_backoff * 2 ** (restarts - 1)
                log.warning("run %s crashed (%s); restart %d of %d in %.1f s", live.run_id,
                            result.error, restarts, spec.max_restarts, delay)
                await self._runs.writer.put_and_wait(WriteItem(
                    diagnostics=[DiagnosticRow(live.run_id, time.time(), "restart",
                                               f"attempt {worker_spec.attempt} crashed: {result.error}; "
                                               f"restarting ({restarts}/{spec.max_restarts})")],
                    run_updates={live.run_id: {"status": "queued", "error": result.error}}))
                await anyio.sleep(delay)
                worker_spec = await self._runs.read_store(
                    functools.partial(self._resumed_spec, live.run_id, worker_spec),
                    what=f"restarting run {live.run_id}")
        finally:
            self._slots.release_on_behalf_of(live)

    async def _attempt(self, live: LiveRun, spec: RunSpec, worker_spec: WorkerSpec,
                       meta: dict[str, Any]) -> RunResult:
        """Start one worker for the run and supervise it until it is gone."""
        if live.cancel_requested is not None:
            return RunResult("cancelled", None, error=live.cancel_requested, error_type="cancelled")
        run_id = live.run_id
        # The intent, committed before a worker can exist. heartbeat_at dates it: recovery
        # gives a worker that many seconds to appear and take its spool.
        meta.pop("worker", None)
        await self._runs.writer.put_and_wait(WriteItem(run_updates={run_id: {
            "status": "starting", "attempt": worker_spec.attempt, "heartbeat_at": time.time(),
            "worker_pid": None, "worker_create_time": None, "meta": dict(meta)}}))
        if live.cancel_requested is not None:  # asked while the intent waited for the store
            return RunResult("cancelled", None, error=live.cancel_requested, error_type="cancelled")
        try:
            worker = await self.backend.launch(worker_spec)
        except SpoolError as exc:  # a spool a live worker still writes, or one a worker replaced
            return RunResult("failed", None, error=str(exc), error_type="SpoolError")
        except (OSError, RuntimeError) as exc:
            return RunResult("crashed", None, error=f"could not start the worker "
                             f"({self.backend.name} backend): {exc}", error_type="WorkerStartError")
        monitor = RunMonitor(worker, self._runs.writer, start_seq=worker_spec.start_seq,
                             timeout=spec.timeout, heartbeat_timeout=spec.heartbeat_timeout,
                             cancel_grace=spec.cancel_grace, limits=spec.limits)
        live.monitor = monitor
        # Where a new parent finds this worker after a crash of ours (see recovery).
        meta["worker"] = {"backend": self.backend.name, "location": worker.location, "pid": worker.pid,
                          **(getattr(worker, "reattach", None) or {})}
        await self._runs.update(run_id, {
            "status": "running", "started_at": time.time(), "ended_at": None, "worker_pid": worker.pid,
            "worker_create_time": worker.create_time, "attempt": worker_spec.attempt, "meta": dict(meta)})
        if worker.location != "local":
            log.info("run %s: attempt %d runs on %s", run_id, worker_spec.attempt, worker.location)
        if live.cancel_requested is not None:
            self._runs.start_soon(monitor.cancel, live.cancel_requested)
        try:
            return await monitor.supervise()
        except Exception:
            # A fault of ours while supervising: the worker must not run on unwatched.
            with anyio.CancelScope(shield=True):
                await worker.kill_tree()
            raise
        finally:
            live.monitor = None
