"""What the parent gives each worker of a run: its :class:`~isolane.schemas.spec.WorkerSpec`.

::

    submit ──▶ WorkerSpecs.first(run, spec)    the run's own options, a scrubbed environment
    resume / branch / a restart after a crash
           ──▶ WorkerSpecs.resumed(run_id)     import the spool rows the store lacks, then the
                                               run's last consistent state (tracking.state) and
                                               the answers its questions got; seq continues

The parent stores a run's options in ``runs.meta["options"]`` (:data:`STORED_OPTIONS`), so any
parent can build the spec of a stored run again; credentials are never stored (``env`` is given
again on resume).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from isolane.backends.environment import worker_environment
from isolane.errors import RunStateError
from isolane.executor import human
from isolane.executor.run import STORED_OPTIONS, RunSpec
from isolane.executor.spool import import_spool, quarantine_spool
from isolane.schemas.limits import Limits
from isolane.schemas.redaction import secret_values
from isolane.schemas.spec import HUMAN_RESUME_KEY, WorkerSpec
from isolane.schemas.spool import SpoolError, spool_path
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.state import current_state
from isolane.tracking.store import Store
from isolane.workflow import WorkflowFn

__all__ = ["WorkerSpecs", "jsonable", "portable_ref", "stored_options"]


class WorkerSpecs:
    """Builds worker specs with one executor's settings (environment allow-list, flushing,
    heartbeats, where blobs go)."""

    def __init__(self, *, env_allow: Iterable[str], flush_interval: float,
                 heartbeat_interval: float, blob_dir: Path, max_blob_bytes: int) -> None:
        self.env_allow = frozenset(env_allow)
        self._flush_interval = flush_interval
        self._heartbeat_interval = heartbeat_interval
        self._blob_dir = str(blob_dir.resolve())
        self._max_blob_bytes = max_blob_bytes

    def first(self, run_id: str, spec: RunSpec, workflow: str | WorkflowFn, run_dir: Path) -> WorkerSpec:
        """The spec of a new run's first worker, in ``run_dir`` (its ``work`` directory)."""
        return WorkerSpec(
            run_id=run_id, workflow=workflow, task=spec.task, config=dict(spec.config),
            work_dir=str(run_dir / "work"), spool_path=str(run_dir / "events.jsonl"),
            env=worker_environment(spec.env, allow=self.env_allow
                                   if spec.env_allow is None else spec.env_allow),
            flush_interval=self._flush_interval, heartbeat_interval=self._heartbeat_interval,
            capture_output=spec.capture_output, sys_path=parent_sys_path(),
            snapshot_interval=spec.snapshot_interval, human_timeout=spec.human_timeout,
            limits=spec.limits, secrets=secret_values(spec.env, spec.secrets),
            blob_dir=self._blob_dir, max_blob_bytes=self._max_blob_bytes,
        )

    def resumed(self, store: Store, run_id: str, previous: WorkerSpec | None = None, *,
                env: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None,
                workflow: str | WorkflowFn | None = None,
                callable_of: Mapping[str, WorkflowFn] | None = None) -> WorkerSpec:
        """A worker spec continuing ``run_id`` from its last consistent state (blocking).

        Imports the spool rows the store lacks first, so ``seq`` continues exactly where the
        worker's own record ends. The workflow is ``previous``'s (a restart), ``workflow``, or
        the stored reference (else the callable this process has for the run, in
        ``callable_of``).
        """
        row = store.get_run(run_id)
        path = spool_path(row.work_dir)
        try:
            import_spool(store, row.id, path)
        except SpoolError as exc:
            # A worker replaced its own spool (a link, a FIFO): never read it. The store holds
            # every event the parent received; the next attempt starts a fresh spool.
            aside = quarantine_spool(path)
            store.write_batch(diagnostics=[DiagnosticRow(
                row.id, time.time(), "spool_refused",
                f"{exc}; it was moved to {aside} and the run continues from the stored events")])
        state = current_state(store, row.id)
        state[HUMAN_RESUME_KEY] = human.recorded_answers(store.events(row.id, types=human.EVENT_TYPES))
        if previous is not None:
            workflow = previous.workflow
            worker_env = dict(previous.env)
        elif workflow is not None:
            worker_env = {}
        else:
            ref = row.meta.get("workflow_ref") or (callable_of or {}).get(row.id)
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
            env=worker_environment(worker_env, allow=self.env_allow),
            attempt=row.attempt + 1, start_seq=state["last_seq"],
            flush_interval=self._flush_interval, heartbeat_interval=self._heartbeat_interval,
            capture_output=options.get("capture_output", True), sys_path=parent_sys_path(),
            snapshot_interval=options.get("snapshot_interval", 30.0), resume=state,
            human_timeout=options.get("human_timeout"),
            limits=previous.limits if previous is not None else Limits.coerce(options.get("limits", {})),
            secrets=secret_values(worker_env, previous.secrets if previous is not None else ()),
            blob_dir=self._blob_dir, max_blob_bytes=self._max_blob_bytes,
        )


def stored_options(spec: RunSpec) -> dict[str, Any]:
    """The spec's options as kept in ``runs.meta["options"]``."""
    return {k: _json_option(getattr(spec, k)) for k in STORED_OPTIONS}


def _json_option(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Limits) else value


def portable_ref(ref: str | WorkflowFn) -> str | WorkflowFn:
    """Make a file-based reference absolute: the worker runs in another directory."""
    if isinstance(ref, str) and ":" in ref:
        target, _, attr = ref.rpartition(":")
        if target.endswith(".py") or "/" in target:
            return f"{Path(target).resolve()}:{attr}"
    return ref


def parent_sys_path() -> tuple[str, ...]:
    """The parent's ``sys.path`` with ``""`` made its working directory (the worker's differs)."""
    cwd = os.getcwd()
    return tuple(cwd if entry == "" else entry for entry in sys.path)


def jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as the JSON the store keeps (odd values rendered with ``repr``)."""
    return dict(orjson.loads(orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)))
