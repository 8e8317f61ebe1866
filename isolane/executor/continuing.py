"""Runs that continue stored history in a new worker: a resume, a branch (and so every racer).

::

    Executor.resume(run)          prepare_resume: the run may be resumed (not live here, its
                                  owner gone), status queued ──▶ Attempts.start
    Executor.branch(run, node)    prepare_branch: plan_branch, create_branch (the history up to
                                  the node), the workspace restored as it was there ──▶ Attempts.start

Either way the worker spec is built lazily (``Continued.build``): it imports the spool rows the
store lacks and reads the state a resume starts from, so it runs once the run has a worker slot,
through a store outage if one comes meanwhile (:meth:`isolane.executor.live.LiveRuns.read_store`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from isolane.errors import RunStateError
from isolane.executor.ownership import check_resumable, owner_stamp
from isolane.executor.run import RunSpec
from isolane.executor.specs import WorkerSpecs, jsonable
from isolane.schemas.spec import WorkerSpec
from isolane.tracking.branching import create_branch, plan_branch
from isolane.tracking.store import Store
from isolane.tracking.workspace import restore_inherited
from isolane.workflow import WorkflowFn

__all__ = ["Continued", "new_run_dir", "prepare_branch", "prepare_resume"]


@dataclass(frozen=True, slots=True)
class Continued:
    """A run ready to be started: its options, its stored ``meta``, and how to build its worker
    spec (blocking; call it in a thread once the run has a slot)."""

    run_id: str
    spec: RunSpec
    build: Callable[[], WorkerSpec]
    meta: dict[str, Any]


async def new_run_dir(home: Path, run_id: str) -> Path:
    """``<home>/runs/<run_id>``, with its ``work`` directory made."""
    run_dir = (home / "runs" / run_id).resolve()
    await anyio.to_thread.run_sync(lambda: (run_dir / "work").mkdir(parents=True, exist_ok=True))
    return run_dir


def _workflow_of(run_id: str, meta: Mapping[str, Any], callables: Mapping[str, WorkflowFn],
                 *, doing: str) -> str | WorkflowFn:
    workflow: str | WorkflowFn | None = meta.get("workflow_ref") or callables.get(run_id)
    if not workflow:
        raise RunStateError(
            f"run {run_id} ran a Python callable, which cannot be restored in another process; "
            f"register the workflow by name or give 'module:function' to {doing} it")
    return workflow


async def prepare_resume(store: Store, specs: WorkerSpecs, callables: Mapping[str, WorkflowFn],
                         run_id: str, *, is_live: Callable[[str], bool], env: Mapping[str, str] | None,
                         config: Mapping[str, Any] | None) -> Continued:
    """Check that ``run_id`` may be resumed and mark it ``queued`` (see the module docstring)."""
    row = await anyio.to_thread.run_sync(lambda: store.get_run(run_id))
    if is_live(row.id):
        raise RunStateError(f"run {row.id} is still running here; wait for it or cancel it first")
    await anyio.to_thread.run_sync(check_resumable, row)
    workflow = _workflow_of(row.id, row.meta, callables, doing="resume")
    spec = RunSpec.from_stored(workflow, row.task, row.meta.get("options", {}),
                               config={**row.config, **dict(config or {})})
    meta = {**row.meta, **owner_stamp()}
    await anyio.to_thread.run_sync(lambda: store.update_run(
        row.id, status="queued", error=None, error_type=None, exit_code=None, meta=meta))
    return Continued(row.id, spec, lambda: specs.resumed(
        store, row.id, env=env, config=config, callable_of=callables), meta)


async def prepare_branch(store: Store, specs: WorkerSpecs, callables: MutableMapping[str, WorkflowFn],
                         run_id: str, from_node: str, *, home: Path, name: str | None,
                         hypothesis: str | None, config: Mapping[str, Any] | None,
                         env: Mapping[str, str] | None, timeout: float | None,
                         racing_group_id: str | None, cancel_grace: float | None) -> Continued:
    """Record a child run of ``run_id`` from ``from_node`` with its inherited history and
    workspace (see :meth:`isolane.executor.executor.Executor.branch`)."""
    plan = await anyio.to_thread.run_sync(lambda: plan_branch(store, run_id, from_node))
    parent = plan.parent
    workflow = _workflow_of(parent.id, parent.meta, callables, doing="branch")
    child_id = uuid.uuid4().hex
    work_dir = await new_run_dir(home, child_id) / "work"
    options = dict(parent.meta.get("options", {}))
    if timeout is not None:
        options["timeout"] = timeout
    if cancel_grace is not None:
        options["cancel_grace"] = cancel_grace
    meta = {"workflow_ref": parent.meta.get("workflow_ref"), "options": options,
            **owner_stamp(), "hypothesis": hypothesis}
    merged = {**parent.config, **dict(config or {})}
    await anyio.to_thread.run_sync(lambda: create_branch(
        store, plan, run_id=child_id, work_dir=str(work_dir), config=jsonable(merged),
        name=name, hypothesis=hypothesis, racing_group_id=racing_group_id, meta=meta))
    await anyio.to_thread.run_sync(restore_inherited, store, home, child_id, work_dir)
    if not isinstance(workflow, str):
        callables[child_id] = workflow
    spec = RunSpec.from_stored(workflow, parent.task, options, config=merged)
    return Continued(child_id, spec, lambda: specs.resumed(store, child_id, env=env, workflow=workflow),
                     meta)
