"""The public API a parent service embeds: submit runs, follow their events, wait, cancel.

::

    Executor (a facade; one anyio task group)
      ├─ StoreWriter.run()                 the only database writer
      ├─ liveness stamps                   heartbeat_at of every run it owns (ownership.py)
      └─ per run: LiveRuns.start(drive)    one LiveRun each (live.py), settled in one place
             Attempts.drive                waits for a worker slot (CapacityLimiter),
               WorkerBackend.launch()      starts the worker (local: forkserver, preloaded;
                                           ray: one relay actor per run, see isolane.backends)
               RunMonitor.supervise()      frames + exit + watchdog until the worker is gone
             LiveRuns.settle()             final run update, committed after the run's last event
         recovery (recovery.py) drives runs whose parent died; racing (racing.py) branches

``RunHandle.events()`` replays stored events and then follows live ones, in ``seq`` order, with no
gap and no duplicate at the seam (:func:`isolane.executor.hub.replay_then_live`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from isolane import settings
from isolane.backends.environment import DEFAULT_ENV_ALLOW
from isolane.backends.interface import WorkerBackend
from isolane.backends.registry import create_backend
from isolane.errors import ConfigError, RunStateError
from isolane.executor import human
from isolane.executor.attempts import Attempts
from isolane.executor.continuing import Continued, new_run_dir, prepare_branch, prepare_resume
from isolane.executor.hub import Hub
from isolane.executor.live import LiveRun, LiveRuns
from isolane.executor.ownership import owner_stamp, stamp_liveness
from isolane.executor.racing import Race, RaceOutcome, start_race
from isolane.executor.reading import EventReading
from isolane.executor.recovery import RecoveryReport, recover_runs
from isolane.executor.run import (
    TERMINAL_STATUSES,
    Outcome,
    RunHandle,
    RunSpec,
)
from isolane.executor.specs import WorkerSpecs, jsonable, portable_ref, stored_options
from isolane.executor.writer import StoreWriter
from isolane.references import check_workflow_ref
from isolane.schemas.blobs import DEFAULT_MAX_BLOB_BYTES
from isolane.schemas.spec import WorkerSpec
from isolane.tracking.compare import Comparison, compare_runs
from isolane.tracking.store import Store
from isolane.workflow import WorkflowFn

__all__ = ["TERMINAL_STATUSES", "Executor", "Outcome", "RunHandle", "RunSpec"]

_NOT_OPEN = "the executor is not open: use `async with Executor(...)`"


class Executor(EventReading):
    """Runs workflows in isolated worker processes and persists everything they report.

    Use as ``async with Executor(...) as ex``. ``db_url`` defaults to ``ISOLANE_DB_URL`` or a SQLite
    file under ``home`` (default ``ISOLANE_HOME`` or ``./.isolane``). More runs than ``max_workers``
    queue. ``backend`` names where workers run (``"local"``, ``"ray"``: see
    :data:`~isolane.backends.registry.BACKENDS`; default ``ISOLANE_BACKEND`` or ``"local"``), with
    ``backend_options`` for it; or it is a ready :class:`WorkerBackend`. ``telemetry`` sends
    every run as an OpenTelemetry trace, live, to a collector's URL (default
    ``$OTEL_EXPORTER_OTLP_ENDPOINT`` when set; ``False``: never; needs ``isolane[otel]``).
    ``shutdown_grace`` (default ``ISOLANE_SHUTDOWN_GRACE`` or 30 s) bounds how long the exit waits
    for an unreachable database: past it the active runs are stopped, what was not written stays
    in the runs' spools for recovery, and a warning counts it.
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
        telemetry: str | bool | None = None,
        shutdown_grace: float | None = None,
    ) -> None:
        self.shutdown_grace = settings.shutdown_grace() if shutdown_grace is None else shutdown_grace
        if not self.shutdown_grace >= 0:
            raise ConfigError(f"shutdown_grace cannot be negative, got {shutdown_grace!r}")
        if max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {max_workers}")
        if max_blob_bytes < 0:
            raise ConfigError(f"max_blob_bytes cannot be negative, got {max_blob_bytes}")
        #: Files up to this size are stored in ``<home>/blobs`` (larger ones: hash only).
        self.max_blob_bytes = max_blob_bytes
        self.home = Path(home) if home is not None else settings.home()
        self.db_url = db_url or settings.db_url()
        self.max_workers = max_workers
        env_allow = frozenset(env_allow)
        if backend is None:
            backend = settings.backend()
        if isinstance(backend, str):
            backend = create_backend(backend, start_method=start_method, env_allow=env_allow,
                                     **dict(backend_options or {}))
        elif backend_options:
            raise ConfigError("backend_options apply to a backend given by name; configure a "
                              "backend instance when you create it")
        self.backend: WorkerBackend = backend
        self._specs = WorkerSpecs(env_allow=env_allow, flush_interval=flush_interval,
                                  heartbeat_interval=heartbeat_interval,
                                  blob_dir=self.home / "blobs", max_blob_bytes=max_blob_bytes)
        self._hub = Hub()
        self._store: Store | None = None
        self._writer: StoreWriter | None = None
        self._runs: LiveRuns | None = None
        self._attempts: Attempts | None = None
        self._liveness_scope: anyio.CancelScope | None = None
        self._answers_scope: anyio.CancelScope | None = None  # delivers answers posted elsewhere
        self._recover = recover
        #: Callable workflows by run id: they can be resumed only by the process that has them.
        self._callables: dict[str, WorkflowFn] = {}
        self._resume_recovered = resume_recovered
        self.recovered: list[RecoveryReport] = []
        self._otlp: Any = None
        endpoint = _telemetry_endpoint(telemetry)
        if endpoint is not None:
            from isolane.telemetry.otlp import OtlpSink  # OpenTelemetry: loaded only when asked for

            self._otlp = OtlpSink(endpoint)  # a bad URL or a missing SDK fails here, at once
        #: The live OpenTelemetry exporter (``isolane.telemetry``), when one runs.
        self.telemetry: Any = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RunStateError(_NOT_OPEN)
        return self._store

    def _open(self) -> LiveRuns:
        if self._runs is None:
            raise RunStateError(_NOT_OPEN)
        return self._runs

    async def __aenter__(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        self._store = store = await anyio.to_thread.run_sync(
            lambda: Store.open(self.db_url, home=self.home))
        await anyio.to_thread.run_sync(self.backend.start)
        self._hub = Hub()  # a new one each time: the last one was closed with its writer
        self._writer = StoreWriter(store, self._hub)
        self._tg_cm = anyio.create_task_group()
        tg = await self._tg_cm.__aenter__()
        self._runs = LiveRuns(store=store, writer=self._writer, hub=self._hub, task_group=tg)
        self._attempts = Attempts(
            backend=self.backend, runs=self._runs, max_workers=self.max_workers,
            resumed_spec=lambda run_id, previous: self._specs.resumed(store, run_id, previous))
        tg.start_soon(self._writer.run)
        self._liveness_scope = anyio.CancelScope()
        tg.start_soon(stamp_liveness, self._runs, self._liveness_scope)
        if self._otlp is not None:
            from isolane.telemetry.live import start_live_export

            self.telemetry = start_live_export(self, task_group=tg, sink=self._otlp)
        self._answers_scope = anyio.CancelScope()
        tg.start_soon(human.deliver_posted, self._runs, store, self._answers_scope)
        if self._recover:
            self.recovered = await self.recover(resume=self._resume_recovered)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        runs = self._open()
        assert self._writer is not None
        # From here an outage cannot hold the exit longer than the grace: the writer then stops
        # waiting for the store (the events are in the spools) and the runs are stopped, below.
        self._writer.give_up_after(self.shutdown_grace)
        try:
            try:
                if exc is None:
                    await runs.join_unless_store_lost()  # a cancel meanwhile stops the runs
            finally:
                # Shielded, and the drivers and the writer are too: a cancel from outside
                # reaches every task of the group, and only this ends the runs with their last
                # events stored (or, past the grace of an outage, left to the spools) and no
                # worker left behind.
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as stopping:
                        for live in runs.active():  # none, unless failed, cancelled or store lost
                            stopping.start_soon(live.cancel, "the executor is shutting down")
                    await runs.join()
                    if self._liveness_scope is not None:
                        self._liveness_scope.cancel()
                    if self._answers_scope is not None:
                        self._answers_scope.cancel()
                    await self._writer.close()
        finally:
            try:
                result = await self._tg_cm.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                    return None  # the block's own error, and nothing else failed: raised as it was
                raise
            finally:
                if self._store is not None:
                    self._store.close()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.backend.close)
        return result

    def _start(self, run_id: str, spec: RunSpec, worker_spec: WorkerSpec | Callable[[], WorkerSpec],
               meta: Mapping[str, Any]) -> RunHandle:
        assert self._attempts is not None
        return RunHandle(self, run_id, self._attempts.start(run_id, spec, worker_spec, meta=meta))

    def _continue(self, run: Continued) -> RunHandle:
        return self._start(run.run_id, run.spec, run.build, run.meta)

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, spec: RunSpec) -> RunHandle:
        """Record the run as ``queued`` and start it as soon as a worker slot is free."""
        self._open()
        # Fail now, in the caller, for a bad reference; its module is imported by the worker only.
        wf = await anyio.to_thread.run_sync(check_workflow_ref, spec.workflow)
        run_id = uuid.uuid4().hex
        run_dir = await new_run_dir(self.home, run_id)
        work_dir = run_dir / "work"
        workflow_ref = portable_ref(spec.workflow)
        config = {**wf.defaults, **dict(spec.config)}
        meta = {"workflow_ref": workflow_ref if isinstance(workflow_ref, str) else None,
                "options": stored_options(spec), **owner_stamp()}
        await anyio.to_thread.run_sync(lambda: self.store.create_run(
            run_id=run_id, workflow=wf.name, task=spec.task, config=jsonable(config),
            status="queued", work_dir=str(work_dir), name=spec.name, session_id=spec.session_id,
            meta=meta))
        if not isinstance(workflow_ref, str):
            self._callables[run_id] = workflow_ref
        return self._start(run_id, spec, self._specs.first(run_id, spec, workflow_ref, run_dir), meta)

    async def run(self, spec: RunSpec) -> Outcome:
        """Submit and wait."""
        return await (await self.submit(spec)).wait()

    # -- live runs ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunHandle:
        """A handle on a run: the live one if this executor runs it, else a stored view."""
        return RunHandle(self, *self._resolve(run_id))

    def _resolve(self, run_id: str) -> tuple[str, LiveRun | None]:
        """The run's full id (``run_id`` may be a prefix) and its live record here, if any."""
        live = self._open().get(run_id)
        if live is None:
            run_id = self.store.get_run(run_id).id
            live = self._open().get(run_id)
        return run_id, live

    def is_live(self, run_id: str) -> bool:
        """Whether this executor is driving ``run_id`` (an exact id) now."""
        live = self._open().get(run_id)
        return live is not None and not live.done

    def live_runs(self) -> list[RunHandle]:
        """Handles of the runs this executor is driving now."""
        return [RunHandle(self, live.run_id, live) for live in self._open().active()]

    async def join(self) -> None:
        """Wait until every run this executor drives has ended (runs started meanwhile too)."""
        await self._open().join()

    # -- questions to a person ----------------------------------------------------------------

    async def pending_requests(self, run_id: str) -> list[human.HumanRequest]:
        """The run's human-input requests still waiting for an answer, oldest first."""
        return await human.pending(self.store, run_id)

    async def answer(self, run_id: str, request_id: str, text: str, *, source: str = "api") -> None:
        """Answer the pending human-input request ``request_id`` of a run this executor runs
        (see :func:`isolane.executor.human.answer` for the errors)."""
        run_id, live = await anyio.to_thread.run_sync(self._resolve, run_id)
        await human.answer(self.store, live, run_id, request_id, text, source=source)

    # -- recovery ----------------------------------------------------------------------------

    async def recover(self, *, resume: bool = False) -> list[RecoveryReport]:
        """Adopt or settle runs whose parent died (see :mod:`isolane.executor.recovery`)."""
        return await recover_runs(self, self._open(), resume=resume)

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
        self._open()
        return self._continue(await prepare_branch(
            self.store, self._specs, self._callables, run_id, from_node, home=self.home, name=name,
            hypothesis=hypothesis, config=config, env=env, timeout=timeout,
            racing_group_id=racing_group_id, cancel_grace=cancel_grace))

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
        runs = self._open()
        race: Race = await start_race(self, run_id, from_node, variants, strategy=strategy,
                                      scorer=scorer, budget_usd=budget_usd, timeout=timeout, env=env)
        runs.start_soon(race.settle_in_background)
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
        self._open()
        return self._continue(await prepare_resume(self.store, self._specs, self._callables, run_id,
                                                   is_live=self.is_live, env=env, config=config))


def _telemetry_endpoint(telemetry: str | bool | None) -> str | None:
    """Where live traces go: ``telemetry=URL``, else (unless ``telemetry=False``)
    ``$OTEL_EXPORTER_OTLP_ENDPOINT``."""
    if isinstance(telemetry, str):
        return telemetry
    if telemetry is False:
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if endpoint is None and telemetry is True:
        raise ConfigError("telemetry=True needs OTEL_EXPORTER_OTLP_ENDPOINT; or give the collector's "
                          "URL: Executor(telemetry='http://127.0.0.1:4318')")
    return endpoint
