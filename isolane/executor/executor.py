"""The public API a parent service embeds: submit runs, follow their events, wait, cancel.

::

    Executor (one anyio task group)
      ├─ StoreWriter.run()                 the only database writer
      └─ per submitted run: _drive(run)    waits for a worker slot (CapacityLimiter),
             WorkerBackend.launch()         starts the worker (local: forkserver, preloaded;
                                            ray: one async actor per run, see backend.py)
             RunMonitor.supervise()         frames + exit + watchdog until the worker is gone
             final run update               committed after the run's last event

``RunHandle.events()`` replays stored events and then follows live ones, in ``seq`` order, with no
gap and no duplicate at the seam (see :mod:`isolane.executor.hub`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from isolane import settings
from isolane.backends.environment import DEFAULT_ENV_ALLOW, worker_environment
from isolane.backends.interface import WorkerBackend
from isolane.backends.registry import create_backend
from isolane.errors import ConfigError, IsolaneError, RunStateError
from isolane.executor import human
from isolane.executor.hub import Hub
from isolane.executor.monitor import RunMonitor, RunResult
from isolane.executor.ownership import LIVENESS_INTERVAL, owner_alive, owner_stamp
from isolane.executor.racing import Race, RaceOutcome, start_race
from isolane.executor.recovery import (
    RecoveryReport,
    recover_runs,
)
from isolane.executor.run import (
    _STORED_OPTIONS,
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    Outcome,
    RunHandle,
    RunSpec,
)
from isolane.executor.spool import import_spool
from isolane.executor.writer import StoreWriter, WriteItem
from isolane.schemas.blobs import DEFAULT_MAX_BLOB_BYTES
from isolane.schemas.limits import Limits
from isolane.schemas.redaction import secret_values
from isolane.schemas.spec import HUMAN_RESUME_KEY, WorkerSpec
from isolane.schemas.spool import spool_path
from isolane.tracking.branching import create_branch, plan_branch
from isolane.tracking.compare import Comparison, compare_runs
from isolane.tracking.state import current_state
from isolane.tracking.store import Store
from isolane.workflow import WorkflowFn, resolve_workflow

__all__ = ["TERMINAL_STATUSES", "Executor", "Outcome", "RunHandle", "RunSpec"]

log = logging.getLogger(__name__)


class Executor:
    """Runs workflows in isolated worker processes and persists everything they report.

    Use as ``async with Executor(...) as ex``. ``db_url`` defaults to ``ISOLANE_DB_URL`` or a SQLite
    file under ``home`` (default ``./.isolane``). More runs than ``max_workers`` queue.
    ``backend`` names where workers run (``"local"``, ``"ray"``: see
    :data:`~isolane.backends.registry.BACKENDS`; default ``ISOLANE_BACKEND`` or ``"local"``), with
    ``backend_options`` for it; or it is a ready :class:`WorkerBackend`.
    """

    def __init__(
        self,
        *,
        db_url: str | None = None,
        home: str | os.PathLike[str] | None = None,
        max_workers: int = 4,
        start_method: str | None = None,
        env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
        flush_interval: float = 0.005,
        heartbeat_interval: float = 5.0,
        recover: bool = False,
        resume_recovered: bool = False,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        backend: str | WorkerBackend | None = None,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {max_workers}")
        if max_blob_bytes < 0:
            raise ConfigError(f"max_blob_bytes cannot be negative, got {max_blob_bytes}")
        #: Files up to this size are stored in ``<home>/blobs`` (larger ones: hash only).
        self.max_blob_bytes = max_blob_bytes
        self.home = Path(home) if home is not None else settings.home()
        self.db_url = db_url or settings.db_url()
        self.max_workers = max_workers
        self._env_allow = frozenset(env_allow)
        if backend is None:
            backend = settings.backend()
        if isinstance(backend, str):
            backend = create_backend(backend, start_method=start_method, env_allow=self._env_allow,
                                     **dict(backend_options or {}))
        elif backend_options:
            raise ConfigError("backend_options apply to a backend given by name; configure a "
                              "backend instance when you create it")
        self.backend: WorkerBackend = backend
        self._flush_interval = flush_interval
        self._heartbeat_interval = heartbeat_interval
        self._hub = Hub()
        self._handles: dict[str, RunHandle] = {}
        self._store: Store | None = None
        self._writer: StoreWriter | None = None
        self._tg: TaskGroup | None = None
        self._liveness_scope: anyio.CancelScope | None = None
        self._slots = anyio.CapacityLimiter(max_workers)
        self._recover = recover
        #: Callable workflows by run id: they can be resumed only by the process that has them.
        self._callables: dict[str, WorkflowFn] = {}
        self._resume_recovered = resume_recovered
        self.recovered: list[RecoveryReport] = []

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RunStateError("the executor is not open: use `async with Executor(...)`")
        return self._store

    async def __aenter__(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        self._store = await anyio.to_thread.run_sync(lambda: Store.open(self.db_url, home=self.home))
        await anyio.to_thread.run_sync(self.backend.start)
        self._writer = StoreWriter(self._store, self._hub)
        self._tg_cm = anyio.create_task_group()
        self._tg = await self._tg_cm.__aenter__()
        self._tg.start_soon(self._writer.run)
        self._liveness_scope = anyio.CancelScope()
        self._tg.start_soon(self._stamp_liveness, self._liveness_scope)
        if self._recover:
            self.recovered = await self.recover(resume=self._resume_recovered)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        try:
            if exc is not None:
                for handle in list(self._handles.values()):
                    if not handle.done:
                        with anyio.CancelScope(shield=True):
                            await handle.cancel("the executor is shutting down")
            with anyio.CancelScope(shield=exc is not None):
                for handle in list(self._handles.values()):
                    await handle._done.wait()
                if self._liveness_scope is not None:
                    self._liveness_scope.cancel()
                assert self._writer is not None
                await self._writer.close()
        finally:
            try:
                result = await self._tg_cm.__aexit__(exc_type, exc, tb)
            finally:
                if self._store is not None:
                    self._store.close()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.backend.close)
        return result

    async def _stamp_liveness(self, scope: anyio.CancelScope) -> None:
        """Stamp ``heartbeat_at`` of every run this executor owns, so that parents on other hosts
        sharing the database see its owner alive (see :mod:`isolane.executor.ownership`)."""
        assert self._writer is not None
        with scope:
            while True:
                await anyio.sleep(LIVENESS_INTERVAL)
                now = time.time()
                owned = [h.run_id for h in self._handles.values() if not h.done]
                if owned:
                    await self._writer.put(WriteItem(
                        run_updates={run_id: {"heartbeat_at": now} for run_id in owned}))

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, spec: RunSpec) -> RunHandle:
        """Record the run as ``queued`` and start it as soon as a worker slot is free."""
        if self._tg is None:
            raise RunStateError("the executor is not open: use `async with Executor(...)`")
        wf = resolve_workflow(spec.workflow)  # fail now, in the caller, for an unknown workflow
        run_id = uuid.uuid4().hex
        run_dir = (self.home / "runs" / run_id).resolve()
        work_dir = run_dir / "work"
        await anyio.to_thread.run_sync(lambda: work_dir.mkdir(parents=True, exist_ok=True))
        workflow_ref = _portable_ref(spec.workflow)
        config = {**wf.defaults, **dict(spec.config)}
        meta = {"workflow_ref": workflow_ref if isinstance(workflow_ref, str) else None,
                "options": {k: _json_option(getattr(spec, k)) for k in _STORED_OPTIONS},
                **owner_stamp()}
        await anyio.to_thread.run_sync(lambda: self.store.create_run(
            run_id=run_id, workflow=wf.name, task=spec.task, config=_jsonable(config),
            status="queued", work_dir=str(work_dir), name=spec.name, session_id=spec.session_id,
            meta=meta))
        handle = RunHandle(self, run_id, live=True)
        self._handles[run_id] = handle
        if not isinstance(workflow_ref, str):
            self._callables[run_id] = workflow_ref
        worker_spec = WorkerSpec(
            run_id=run_id, workflow=workflow_ref, task=spec.task, config=dict(spec.config),
            work_dir=str(work_dir), spool_path=str(run_dir / "events.jsonl"),
            env=worker_environment(spec.env, allow=self._env_allow
                                   if spec.env_allow is None else spec.env_allow),
            flush_interval=self._flush_interval, heartbeat_interval=self._heartbeat_interval,
            capture_output=spec.capture_output, sys_path=_parent_sys_path(),
            snapshot_interval=spec.snapshot_interval, human_timeout=spec.human_timeout,
            limits=spec.limits, secrets=secret_values(spec.env, spec.secrets),
            blob_dir=str((self.home / "blobs").resolve()), max_blob_bytes=self.max_blob_bytes,
        )
        self._tg.start_soon(self._drive, handle, spec, worker_spec)
        return handle

    async def answer(self, run_id: str, request_id: str, text: str, *, source: str = "api") -> None:
        """Answer a pending human-input request of a run this executor is running."""
        await self.get(run_id).answer(request_id, text, source=source)

    async def run(self, spec: RunSpec) -> Outcome:
        """Submit and wait."""
        return await (await self.submit(spec)).wait()

    def get(self, run_id: str) -> RunHandle:
        """A handle on a run: the live one if this executor runs it, else a stored view."""
        if run_id in self._handles:
            return self._handles[run_id]
        row = self.store.get_run(run_id)
        return self._handles.get(row.id) or RunHandle(self, row.id, live=False)

    async def _stored_outcome(self, run_id: str) -> Outcome:
        row = await anyio.to_thread.run_sync(lambda: self.store.get_run(run_id))
        return Outcome(run_id=row.id, status=row.status, result=row.result, error=row.error,
                       error_type=row.error_type, exit_code=row.exit_code)

    async def _drive(self, handle: RunHandle, spec: RunSpec, worker_spec: WorkerSpec) -> None:
        """Own one run from its queue slot to its final, committed status (restarts included)."""
        assert self._writer is not None
        result: RunResult | None = None
        try:
            with anyio.CancelScope() as queue_scope:
                handle._queue_scope = queue_scope
                await self._slots.acquire_on_behalf_of(handle)
            handle._queue_scope = None
            if queue_scope.cancelled_caught:
                result = RunResult("cancelled", None, error=handle._cancel_requested,
                                   error_type="cancelled")
                return
            try:
                restarts = 0
                while True:
                    result = await self._attempt(handle, spec, worker_spec)
                    if result.status != "crashed" or restarts >= spec.max_restarts \
                            or handle._cancel_requested is not None:
                        break
                    restarts += 1
                    delay = spec.restart_backoff * 2 ** (restarts - 1)
                    log.warning("run %s crashed (%s); restart %d of %d in %.1f s", handle.run_id,
                                result.error, restarts, spec.max_restarts, delay)
                    await self._writer.put_and_wait(WriteItem(
                        diagnostics=[(handle.run_id, time.time(), "restart",
                                      (f"attempt {worker_spec.attempt} crashed: {result.error}; "
                                       f"restarting ({restarts}/{spec.max_restarts})"), "")],
                        run_updates={handle.run_id: {"status": "queued", "error": result.error}}))
                    await anyio.sleep(delay)
                    worker_spec = await anyio.to_thread.run_sync(
                        self._resume_spec, handle.run_id, worker_spec)
            finally:
                self._slots.release_on_behalf_of(handle)
        finally:
            with anyio.CancelScope(shield=True):
                if result is None:
                    result = RunResult("crashed", None, error="the parent stopped supervising the run",
                                       error_type="ParentInterrupted")
                update = result.run_update()
                await self._writer.put_and_wait(WriteItem(run_updates={handle.run_id: update}))
                await self._keep_state(handle.run_id)
                handle._outcome = Outcome(run_id=handle.run_id, status=result.status,
                                          result=result.result, error=result.error,
                                          error_type=result.error_type, traceback=result.traceback,
                                          exit_code=result.exit_code)
                handle._done.set()
                self._hub.wake(handle.run_id)
                log.info("run %s ended %s", handle.run_id, result.status)

    async def _keep_state(self, run_id: str) -> None:
        """Fold the ended run's state into ``session_states`` (see :mod:`isolane.tracking.state`)."""
        try:
            await anyio.to_thread.run_sync(current_state, self.store, run_id)
        except IsolaneError as exc:  # the store is down: a resume rebuilds it from the log
            log.warning("run %s: its session state was not kept: %s", run_id, exc)

    async def _attempt(self, handle: RunHandle, spec: RunSpec, worker_spec: WorkerSpec) -> RunResult:
        """Start one worker for the run and supervise it until it is gone."""
        assert self._writer is not None and self._tg is not None
        if handle._cancel_requested is not None:
            return RunResult("cancelled", None, error=handle._cancel_requested, error_type="cancelled")
        await self._writer.put(WriteItem(run_updates={handle.run_id: {"status": "starting"}}))
        try:
            worker = await self.backend.launch(worker_spec)
        except (OSError, RuntimeError) as exc:
            return RunResult("crashed", None, error=f"could not start the worker "
                             f"({self.backend.name} backend): {exc}", error_type="WorkerStartError")
        monitor = RunMonitor(worker, self._writer, start_seq=worker_spec.start_seq,
                             timeout=spec.timeout, heartbeat_timeout=spec.heartbeat_timeout,
                             cancel_grace=spec.cancel_grace, limits=spec.limits)
        handle._monitor = monitor
        meta = await anyio.to_thread.run_sync(lambda: self.store.get_run(handle.run_id).meta)
        # Where a new parent finds this worker after a crash of ours (see recovery).
        meta = {**meta, "worker": {"backend": self.backend.name, "location": worker.location,
                                   "pid": worker.pid, **(getattr(worker, "reattach", None) or {})}}
        await self._writer.put(WriteItem(run_updates={handle.run_id: {
            "status": "running", "started_at": time.time(), "ended_at": None, "worker_pid": worker.pid,
            "worker_create_time": worker.create_time, "attempt": worker_spec.attempt, "meta": meta}}))
        if worker.location != "local":
            log.info("run %s: attempt %d runs on %s", handle.run_id, worker_spec.attempt, worker.location)
        if handle._cancel_requested is not None:
            self._tg.start_soon(monitor.cancel, handle._cancel_requested)
        result = await monitor.supervise()
        handle._monitor = None
        return result

    async def join(self) -> None:
        """Wait until every run this executor drives has ended (runs started meanwhile too)."""
        while True:
            pending = [h for h in self._handles.values() if not h.done]
            if not pending:
                return
            for handle in pending:
                await handle._done.wait()

    # -- recovery ----------------------------------------------------------------------------

    async def recover(self, *, resume: bool = False) -> list[RecoveryReport]:
        """Adopt or settle runs whose parent died (see :mod:`isolane.executor.recovery`)."""
        return await recover_runs(self, resume=resume)

    # -- resuming ----------------------------------------------------------------------------

    def _resume_spec(self, run_id: str, previous: WorkerSpec | None = None, *,
                     env: Mapping[str, str] | None = None,
                     config: Mapping[str, Any] | None = None,
                     workflow: str | WorkflowFn | None = None) -> WorkerSpec:
        """A worker spec continuing ``run_id`` from its last consistent state (blocking).

        Imports the spool rows the store lacks first, so ``seq`` continues exactly where the
        worker's own record ends.
        """
        row = self.store.get_run(run_id)
        import_spool(self.store, row.id, spool_path(row.work_dir))
        state = current_state(self.store, row.id)
        state[HUMAN_RESUME_KEY] = human.recorded_answers(self.store.events(row.id, types=human.EVENT_TYPES))
        if previous is not None:
            workflow = previous.workflow
            worker_env = dict(previous.env)
        elif workflow is not None:
            worker_env = {}
        else:
            ref = row.meta.get("workflow_ref") or self._callables.get(row.id)
            if not ref:
                raise RunStateError(
                    f"run {row.id} ran a Python callable, which cannot be restored in another "
                    "process; register the workflow by name or give 'module:function' to resume it")
            workflow = ref
            worker_env = {}
        if env is not None:
            worker_env = dict(env)
        options = row.meta.get("options", {})
        return WorkerSpec(
            run_id=row.id, workflow=workflow, task=row.task, config={**row.config, **(config or {})},
            work_dir=row.work_dir, spool_path=str(spool_path(row.work_dir)),
            env=worker_environment(worker_env, allow=self._env_allow),
            attempt=row.attempt + 1, start_seq=state["last_seq"],
            flush_interval=self._flush_interval, heartbeat_interval=self._heartbeat_interval,
            capture_output=options.get("capture_output", True), sys_path=_parent_sys_path(),
            snapshot_interval=options.get("snapshot_interval", 30.0), resume=state,
            human_timeout=options.get("human_timeout"),
            limits=previous.limits if previous is not None else Limits.coerce(options.get("limits", {})),
            secrets=secret_values(worker_env, previous.secrets if previous is not None else ()),
            blob_dir=str((self.home / "blobs").resolve()), max_blob_bytes=self.max_blob_bytes,
        )

    # -- branching and racing -----------------------------------------------------------------

    async def branch(
        self,
        run_id: str,
        from_node: str,
        *,
        name: str | None = None,
        hypothesis: str | None = None,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        racing_group_id: str | None = None,
        cancel_grace: float | None = None,
    ) -> RunHandle:
        """Start a child run of ``run_id`` from ``from_node``, in its own worker.

        Its history up to the node is the parent's (nodes completed before it stay completed and
        are not executed again), its workspace is the parent's files as they were there, and
        ``config`` changes are applied. Branches of branches work the same way. ``play-from``
        is a branch with no changes.
        """
        if self._tg is None:
            raise RunStateError("the executor is not open: use `async with Executor(...)`")
        plan = await anyio.to_thread.run_sync(lambda: plan_branch(self.store, run_id, from_node))
        parent = plan.parent
        workflow = parent.meta.get("workflow_ref") or self._callables.get(parent.id)
        if not workflow:
            raise RunStateError(
                f"run {parent.id} ran a Python callable this process does not have; register the "
                "workflow by name or give 'module:function' to branch it")
        child_id = uuid.uuid4().hex
        run_dir = (self.home / "runs" / child_id).resolve()
        work_dir = run_dir / "work"
        await anyio.to_thread.run_sync(lambda: work_dir.mkdir(parents=True, exist_ok=True))
        options = dict(parent.meta.get("options", {}))
        if timeout is not None:
            options["timeout"] = timeout
        if cancel_grace is not None:
            options["cancel_grace"] = cancel_grace
        meta = {"workflow_ref": parent.meta.get("workflow_ref"), "options": options,
                **owner_stamp(),
                "hypothesis": hypothesis}
        merged = {**parent.config, **dict(config or {})}
        await anyio.to_thread.run_sync(lambda: create_branch(
            self.store, plan, run_id=child_id, work_dir=str(work_dir), config=_jsonable(merged),
            name=name, hypothesis=hypothesis, racing_group_id=racing_group_id, meta=meta))
        await anyio.to_thread.run_sync(lambda: self._restore_workspace(child_id, work_dir))
        if not isinstance(workflow, str):
            self._callables[child_id] = workflow
        worker_spec = await anyio.to_thread.run_sync(
            lambda: self._resume_spec(child_id, env=env, workflow=workflow))
        spec = RunSpec.from_stored(workflow, parent.task, options, config=merged)
        handle = RunHandle(self, child_id, live=True)
        self._handles[child_id] = handle
        self._tg.start_soon(self._drive, handle, spec, worker_spec)
        return handle

    def _restore_workspace(self, run_id: str, work_dir: Path) -> None:
        """Write the files a branch inherited into its working directory (blocking)."""
        try:
            from isolane.tracking.workspace import restore_inherited
        except ImportError:  # file tracking not installed in this build
            return
        restore_inherited(self.store, self.home, run_id, work_dir)

    async def race(
        self,
        run_id: str,
        from_node: str,
        variants: Sequence[Mapping[str, Any]],
        *,
        strategy: str = "first_complete",
        scorer: str | Callable[..., float] | None = None,
        budget_usd: float | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RaceOutcome:
        """Race one branch per variant from ``from_node``; see :mod:`isolane.executor.racing`."""
        race = await start_race(self, run_id, from_node, variants, strategy=strategy,
                                scorer=scorer, budget_usd=budget_usd, timeout=timeout, env=env)
        return await race.settle()

    async def start_race(
        self,
        run_id: str,
        from_node: str,
        variants: Sequence[Mapping[str, Any]],
        *,
        strategy: str = "first_complete",
        scorer: str | Callable[..., float] | None = None,
        budget_usd: float | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Race:
        """:meth:`race` without waiting: returns once every racer is started.

        The verdict is settled by a task of this executor's task group (``await race.wait()``
        for it); the racers and the group row end as with :meth:`race`.
        """
        if self._tg is None:
            raise RunStateError("the executor is not open: use `async with Executor(...)`")
        race: Race = await start_race(self, run_id, from_node, variants, strategy=strategy,
                                      scorer=scorer, budget_usd=budget_usd, timeout=timeout, env=env)
        self._tg.start_soon(race.settle_in_background)
        return race

    async def compare(self, run_ids: Sequence[str]) -> Comparison:
        """Runs side by side: status, duration, cost and tokens, node statuses, files."""
        return await anyio.to_thread.run_sync(lambda: compare_runs(self.store, run_ids))

    async def resume(self, run_id: str, *, env: Mapping[str, str] | None = None,
                     config: Mapping[str, Any] | None = None) -> RunHandle:
        """Continue a crashed, failed, timed-out, cancelled or interrupted run in a new worker.

        Completed nodes are not run again (see ``ctx.step``/``ctx.is_completed``), the worker gets
        the saved state as ``ctx.resume``, and ``seq`` continues where the log ends. ``env``
        supplies credentials again (they are never stored); ``config`` overrides config keys.
        """
        if self._tg is None:
            raise RunStateError("the executor is not open: use `async with Executor(...)`")
        row = await anyio.to_thread.run_sync(lambda: self.store.get_run(run_id))
        live = self._handles.get(row.id)
        if live is not None and not live.done:
            raise RunStateError(f"run {row.id} is still running here; wait for it or cancel it first")
        if row.status not in RESUMABLE_STATUSES:
            if row.status in ("queued", "starting", "running"):
                if await anyio.to_thread.run_sync(owner_alive, row):
                    raise RunStateError(
                        f"run {row.id} is {row.status} under another live isolane process "
                        f"(pid {row.meta.get('parent_pid')} on {row.meta.get('parent_host', 'this host')});"
                        " cancel it there, or run `isolane recover`"
                        " if that process is stuck")
            else:
                raise RunStateError(
                    f"run {row.id} is {row.status}; only crashed, failed, timed_out, cancelled or "
                    "interrupted runs can be resumed (branch it to run again from a node)")
        worker_spec = await anyio.to_thread.run_sync(
            lambda: self._resume_spec(row.id, env=env, config=config))
        options = row.meta.get("options", {})
        spec = RunSpec.from_stored(worker_spec.workflow, row.task, options, config=worker_spec.config)
        meta = {**row.meta, **owner_stamp()}
        await anyio.to_thread.run_sync(lambda: self.store.update_run(
            row.id, status="queued", error=None, error_type=None, exit_code=None, meta=meta))
        handle = RunHandle(self, row.id, live=True)
        self._handles[row.id] = handle
        self._tg.start_soon(self._drive, handle, spec, worker_spec)
        return handle


def _json_option(value: Any) -> Any:
    """A RunSpec option as stored in ``runs.meta["options"]``."""
    return value.as_dict() if isinstance(value, Limits) else value


def _portable_ref(ref: str | WorkflowFn) -> str | WorkflowFn:
    """Make a file-based reference absolute: the worker runs in another directory."""
    if isinstance(ref, str) and ":" in ref:
        target, _, attr = ref.rpartition(":")
        if target.endswith(".py") or "/" in target:
            return f"{Path(target).resolve()}:{attr}"
    return ref


def _parent_sys_path() -> tuple[str, ...]:
    cwd = os.getcwd()
    return tuple(cwd if entry == "" else entry for entry in sys.path)


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    import orjson

    return dict(orjson.loads(orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)))


SyncCallable = Callable[..., Any]
