"""Branches and racing groups as stored facts.

A branch is a run with a parent. Its history up to the branch node is the parent's: the events
that define state (DAG, phase, session snapshots, files) from before the node first started are
copied into the child, renumbered ``1..k`` so the child's log stays gap-free; its own events
follow from ``k + 1``. The parent's other history (messages, LLM calls, output) stays with the
parent, so a branch's cost and conversation are its own. Everything is written in ONE
transaction: the child run, its inherited events (projected like any others), the ``branches``
row and a ``branch_point`` node on the parent's DAG.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, insert, select, update

from isolane.errors import ConfigError, RunStateError
from isolane.schemas.envelope import Event
from isolane.tracking.models import (
    BRANCHES_TABLE,
    EDGES_TABLE,
    GROUPS_TABLE,
    NODES_TABLE,
)
from isolane.tracking.rows import RunRow
from isolane.tracking.store import Store
from isolane.tracking.writes import insert_run, write_in

__all__ = ["INHERITED_TYPES", "BranchPlan", "RacingGroup", "create_branch", "create_racing_group",
           "finish_racing_group", "plan_branch", "racing_group"]

#: Event types a branch inherits from its parent (what the state of a run is made of).
INHERITED_TYPES: Final = frozenset({
    "dag_created", "dag_node_added", "dag_node_update", "phase_change", "state_snapshot",
    "file_created", "file_modified", "file_deleted",
})


@dataclass(frozen=True, slots=True)
class BranchPlan:
    """Where a branch of ``parent`` starts: just before ``from_node`` first ran (``cut_seq``)."""

    parent: RunRow
    from_node: str
    cut_seq: int
    inherited: list[Event]


@dataclass(frozen=True, slots=True)
class RacingGroup:
    id: str
    parent_run_id: str
    from_node: str
    strategy: str
    budget_usd: float | None


def plan_branch(store: Store, parent_id: str, from_node: str) -> BranchPlan:
    """Find the cut point for branching ``parent_id`` at ``from_node`` (blocking).

    Raises :class:`ConfigError` naming the nodes that did run when ``from_node`` never ran.
    """
    parent = store.get_run(parent_id)
    updates = store.events(parent.id, types=["dag_node_update"])
    started = [e.seq for e in updates if e.node_id == from_node and e.data.get("status") == "running"]
    if not started:
        ran = sorted({e.node_id for e in updates if e.node_id and e.data.get("status") == "running"})
        raise ConfigError(
            f"node {from_node!r} never ran in run {parent.id}; branch from one that did: "
            + (", ".join(ran) if ran else "(no node has run yet)"))
    cut = started[0] - 1
    inherited = [e for e in store.events(parent.id, types=sorted(INHERITED_TYPES)) if e.seq <= cut]
    return BranchPlan(parent, from_node, cut, inherited)


def create_branch(
    store: Store,
    plan: BranchPlan,
    *,
    run_id: str,
    work_dir: str,
    config: Mapping[str, Any],
    name: str | None = None,
    hypothesis: str | None = None,
    racing_group_id: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> RunRow:
    """Record the child run with its inherited history, in one transaction (blocking)."""
    parent = plan.parent
    now = time.time()
    inherited_through = len(plan.inherited)
    row = RunRow(
        id=run_id, workflow=parent.workflow, task=parent.task, config=dict(config),
        status="queued", created_at=now, work_dir=work_dir, last_seq=0, attempt=0,
        meta={**dict(meta or {}), "inherited_through": inherited_through,
              "parent_cut_seq": plan.cut_seq},
        session_id=parent.session_id, parent_run_id=parent.id, branch_point_node=plan.from_node,
        name=name, phase=None)
    events = [(run_id, i, e.ts, e.type, e.node_id, e.to_json_data())
              for i, e in enumerate(plan.inherited, start=1)]
    with store.transaction(write=True) as conn:
        insert_run(conn, store.backend, row)
        if events:
            write_in(conn, store.backend, events=events)
        conn.execute(insert(BRANCHES_TABLE).values(
            run_id=run_id, parent_run_id=parent.id, from_node=plan.from_node, name=name,
            hypothesis=hypothesis, racing_group_id=racing_group_id, status="running"))
        # A branch_point node on the parent's DAG, hanging off the node the branch starts at.
        position = conn.execute(select(func.coalesce(func.max(NODES_TABLE.c.position), 0)).where(
            NODES_TABLE.c.run_id == parent.id)).scalar_one()
        point = f"branch@{plan.from_node}#{run_id[:8]}"
        conn.execute(insert(NODES_TABLE).values(
            run_id=parent.id, node_id=point, label=name or f"branch {run_id[:8]}",
            node_type="branch_point", parent_node_id=None, depth=0, status="completed",
            error=None, started_at=now, ended_at=now, position=position + 1,
            meta={"branch_run_id": run_id, "from_node": plan.from_node, "hypothesis": hypothesis,
                  "racing_group_id": racing_group_id}))
        conn.execute(insert(EDGES_TABLE).values(
            run_id=parent.id, source=plan.from_node, target=point, kind="branch",
            condition=hypothesis or name))
    return row


def create_racing_group(store: Store, *, parent_run_id: str, from_node: str, strategy: str,
                        budget_usd: float | None) -> RacingGroup:
    group = RacingGroup(uuid.uuid4().hex, parent_run_id, from_node, strategy, budget_usd)
    with store.transaction(write=True) as conn:
        conn.execute(insert(GROUPS_TABLE).values(
            id=group.id, parent_run_id=parent_run_id, from_node=from_node, strategy=strategy,
            status="running", winner_run_id=None, budget_usd=budget_usd, created_at=time.time()))
    return group


def finish_racing_group(store: Store, group_id: str, *, winner_run_id: str | None,
                        statuses: Mapping[str, str]) -> None:
    """Record the winner and each racer's final status (``won``/``lost``/``cancelled``)."""
    with store.transaction(write=True) as conn:
        conn.execute(update(GROUPS_TABLE).where(GROUPS_TABLE.c.id == group_id).values(
            status="finished" if winner_run_id else "no_winner", winner_run_id=winner_run_id))
        for run_id, status in statuses.items():
            conn.execute(update(BRANCHES_TABLE).where(BRANCHES_TABLE.c.run_id == run_id).values(status=status))
            write_in(conn, store.backend, run_updates={run_id: {"status": status}})


def racing_group(store: Store, group_id: str) -> dict[str, Any]:
    """The stored racing group with its racers (for ``show``/``compare``)."""
    with store.transaction(write=False) as conn:
        group = conn.execute(select(GROUPS_TABLE).where(GROUPS_TABLE.c.id == group_id)).mappings().first()
        if group is None:
            raise RunStateError(f"no racing group {group_id!r}")
        racers = conn.execute(select(BRANCHES_TABLE).where(BRANCHES_TABLE.c.racing_group_id == group_id)
                              ).mappings().all()
    return {**dict(group), "racers": [dict(r) for r in racers]}
