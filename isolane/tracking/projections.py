"""Projections: tables derived from the event log inside the transaction that stores the events.

::

    write_batch(events)  ──insert (ignore duplicates)──▶ events
          │
          └─ events whose type is in PROJECTIONS and that were not stored before
               ──decode payload (the wire contract's own types)──▶ Projection.apply
                    dag_created / dag_node_added / dag_node_update ──▶ dag_nodes, dag_edges
                    phase_change                                   ──▶ runs.phase
                    llm_call                                       ──▶ llm_calls
                    file_created / file_modified                   ──▶ files

Contracts:

* Only events new to the database are projected, in ``(run_id, seq)`` order, so storing the same
  batch twice changes nothing.
* An event that fills a gap (its seq is not above what the run had stored before) is *stale*: a
  newer event may already have set the state it would set. Stale updates never overwrite newer
  ones (they only fill what is still empty); append-only rows are keyed by ``(run_id, seq)``.
* A payload that does not fit its declared type becomes a ``projection_error`` diagnostic, never
  a failed batch: the event itself is stored regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from msgspec import Struct
from sqlalchemy import Connection, Table, bindparam, exists, func, select, update

from isolane.errors import InvalidEvent
from isolane.schemas.envelope import EventRow
from isolane.schemas.payloads import (
    DagCreated,
    DagNodeAdded,
    DagNodeUpdate,
    FileDeleted,
    FileEvent,
    LlmCall,
    PhaseChange,
    validate_payload,
)
from isolane.tracking._dialects import Backend
from isolane.tracking.models import (
    EDGES_TABLE,
    EVENTS_TABLE,
    FILES_TABLE,
    LLM_CALLS_TABLE,
    NODES_TABLE,
    RUNS_TABLE,
)
from isolane.tracking.rows import DiagnosticRow

__all__ = ["PROJECTIONS", "Projection", "ProjectionContext", "apply_projections", "to_project"]

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=Struct)


_TERMINAL_NODE_STATUSES: Final = frozenset({"completed", "failed", "skipped", "cancelled"})
_EDGE_KEY: Final = ("run_id", "source", "target", "kind")
_NODE_KEY: Final = ("run_id", "node_id")
_EVENT_KEY: Final = ("run_id", "seq")

# Statements are built once: constructing them per event would cost more than running them.
#: The node columns a projection may change.
_NODE_STATE: Final = ("label", "node_type", "parent_node_id", "depth", "status", "error",
                      "started_at", "ended_at", "meta")
_SELECT_NODE: Final = select(*(NODES_TABLE.c[name] for name in (*_NODE_KEY, *_NODE_STATE))).where(
    NODES_TABLE.c.run_id == bindparam("run_id"), NODES_TABLE.c.node_id == bindparam("node_id"))
_UPDATE_NODE: Final = update(NODES_TABLE).where(
    NODES_TABLE.c.run_id == bindparam("key_run_id"), NODES_TABLE.c.node_id == bindparam("key_node_id"),
).values({name: bindparam(name) for name in _NODE_STATE})
_INSERT_NODE: Final = NODES_TABLE.insert()
_NEXT_POSITION: Final = select(func.coalesce(func.max(NODES_TABLE.c.position) + 1, 0)).where(
    NODES_TABLE.c.run_id == bindparam("run_id"))
_LATER_OF_TYPE: Final = (EVENTS_TABLE.c.run_id == bindparam("run_id"),
                         EVENTS_TABLE.c.type == bindparam("type"), EVENTS_TABLE.c.seq > bindparam("seq"))
_SUPERSEDED: Final = select(exists().where(*_LATER_OF_TYPE))
_SUPERSEDED_FOR_NODE: Final = select(exists().where(
    *_LATER_OF_TYPE, EVENTS_TABLE.c.node_id == bindparam("node_id")))
_SET_PHASE: Final = update(RUNS_TABLE).where(RUNS_TABLE.c.id == bindparam("run_id")).values(
    phase=bindparam("phase"))


def _pending_node(run_id: str, node_id: str, **values: Any) -> dict[str, Any]:
    """The state of a node just declared: pending, defaults overridden by ``values``."""
    state: dict[str, Any] = {
        "run_id": run_id, "node_id": node_id, "label": "", "node_type": "step",
        "parent_node_id": None, "depth": 0, "status": "pending", "error": None,
        "started_at": None, "ended_at": None, "meta": {}}
    state.update(values)
    return state


@dataclass(slots=True)
class ProjectionContext:
    """What a projection works with during one :meth:`Store.write_batch` transaction.

    DAG nodes are read once per batch and written back once at :meth:`flush`, however many
    events of the batch change them.
    """

    conn: Connection
    backend: Backend
    #: ``runs.last_seq`` of each run before this batch: an event at or below it is stale.
    stored_before: Mapping[str, int]
    #: Problems found while projecting; the store records them in the same transaction.
    diagnostics: list[DiagnosticRow] = field(default_factory=list)
    _appends: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    _next_position: dict[str, int] = field(default_factory=dict)
    _nodes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _dirty: set[tuple[str, str]] = field(default_factory=set)

    def is_stale(self, event: EventRow) -> bool:
        """Whether ``event`` fills a gap below what the run had already stored."""
        return event[1] <= self.stored_before.get(event[0], 0)

    def append(self, table: Table, row: dict[str, Any]) -> None:
        """Queue an append-only row (keyed by ``(run_id, seq)``), inserted at :meth:`flush`."""
        self._appends.setdefault(table, []).append(row)

    def node(self, run_id: str, node_id: str) -> dict[str, Any] | None:
        """The node's current state (a dict to change and :meth:`save_node`), or ``None``."""
        key = (run_id, node_id)
        state = self._nodes.get(key)
        if state is None:
            row = self.conn.execute(_SELECT_NODE, {"run_id": run_id, "node_id": node_id}).first()
            if row is None:
                return None
            state = self._nodes[key] = dict(row._mapping)
        return state

    def add_node(self, run_id: str, node_id: str, **values: Any) -> dict[str, Any]:
        """Insert a node now (pending unless ``values`` say otherwise) and return its state."""
        state = _pending_node(run_id, node_id, **values)
        self.conn.execute(_INSERT_NODE, {**state, "position": self.take_positions(run_id, 1)})
        self._nodes[(run_id, node_id)] = state
        return state

    def save_node(self, state: dict[str, Any]) -> None:
        """Mark a node state from :meth:`node` as changed; it is written at :meth:`flush`."""
        self._dirty.add((state["run_id"], state["node_id"]))

    def flush(self) -> None:
        """Write changed nodes and queued append-only rows (duplicates ignored)."""
        if self._dirty:
            self.conn.execute(_UPDATE_NODE, [
                {"key_run_id": run_id, "key_node_id": node_id,
                 **{name: self._nodes[(run_id, node_id)][name] for name in _NODE_STATE}}
                for run_id, node_id in self._dirty])
            self._dirty.clear()
        for table, rows in self._appends.items():
            self.conn.execute(self.backend.insert_ignore(table, _EVENT_KEY), rows)
        self._appends.clear()

    def take_positions(self, run_id: str, count: int) -> int:
        """Reserve ``count`` node positions of ``run_id``; returns the first one."""
        start = self._next_position.get(run_id)
        if start is None:
            start = int(self.conn.execute(_NEXT_POSITION, {"run_id": run_id}).scalar_one())
        self._next_position[run_id] = start + count
        return start

    def superseded(self, event: EventRow, *, same_node: bool) -> bool:
        """Whether a later event of the same type (and node) is stored: only asked when stale."""
        run_id, seq, _, type_, node_id, _ = event
        params = {"run_id": run_id, "type": type_, "seq": seq}
        if same_node:
            return bool(self.conn.execute(_SUPERSEDED_FOR_NODE, {**params, "node_id": node_id})
                        .scalar())
        return bool(self.conn.execute(_SUPERSEDED, params).scalar())


@dataclass(frozen=True, slots=True)
class Projection(Generic[P]):
    """How one event type changes derived tables: decode to ``payload``, then ``apply``."""

    payload: type[P]
    apply: Callable[[ProjectionContext, EventRow, P], None]
    #: Whether the event must name a DAG node (``node_id`` in the envelope).
    needs_node: bool = False


# -- DAG -------------------------------------------------------------------------------------------


def _insert_edges(ctx: ProjectionContext, rows: list[dict[str, Any]]) -> None:
    if rows:
        ctx.conn.execute(ctx.backend.insert_ignore(EDGES_TABLE, _EDGE_KEY), rows)


def _dag_created(ctx: ProjectionContext, event: EventRow, data: DagCreated) -> None:
    run_id = event[0]
    if data.nodes:
        first = ctx.take_positions(run_id, len(data.nodes))
        rows = [{**_pending_node(run_id, node.id, label=node.label, node_type=node.node_type,
                                 parent_node_id=node.parent_node_id, depth=node.depth),
                 "position": first + i} for i, node in enumerate(data.nodes)]
        # Nodes already known (a resumed run declaring its template again) keep their state.
        ctx.conn.execute(ctx.backend.insert_ignore(NODES_TABLE, _NODE_KEY), rows)
    _insert_edges(ctx, [{"run_id": run_id, "source": e.source, "target": e.target,
                         "kind": e.kind, "condition": e.condition} for e in data.edges])


def _dag_node_added(ctx: ProjectionContext, event: EventRow, data: DagNodeAdded) -> None:
    run_id, node_id = event[0], event[4]
    assert node_id is not None
    shape = {"label": data.label, "node_type": data.node_type,
             "parent_node_id": data.parent_node_id, "depth": data.depth}
    node = ctx.node(run_id, node_id)
    if node is None:
        ctx.add_node(run_id, node_id, meta=dict(data.meta), **shape)
    elif ctx.is_stale(event):
        # A late addition only fills meta keys nobody has set since.
        node["meta"] = {**data.meta, **node["meta"]}
        ctx.save_node(node)
    else:
        node.update(shape, meta={**node["meta"], **data.meta})
        ctx.save_node(node)
    _insert_edges(ctx, [{"run_id": run_id, "source": source, "target": node_id,
                         "kind": data.edge_kind, "condition": data.condition} for source in data.after]
                  + [{"run_id": run_id, "source": node_id, "target": target, "kind": "next",
                      "condition": None} for target in data.before])


def _dag_node_update(ctx: ProjectionContext, event: EventRow, data: DagNodeUpdate) -> None:
    run_id, _, ts, _, node_id, _ = event
    assert node_id is not None
    # An update for an undeclared node still shows up in the DAG rather than vanishing.
    node = ctx.node(run_id, node_id) or ctx.add_node(run_id, node_id)
    if ctx.is_stale(event) and ctx.superseded(event, same_node=True):
        # A newer update set the state: only fill what it left empty.
        node["meta"] = {**data.meta, **node["meta"]}
        if data.status == "running" and node["started_at"] is None:
            node["started_at"] = ts
    else:
        node.update(status=data.status, error=data.error, meta={**node["meta"], **data.meta})
        if data.status == "running":
            node.update(started_at=ts, ended_at=None)
        elif data.status in _TERMINAL_NODE_STATUSES:
            node["ended_at"] = ts
    ctx.save_node(node)


# -- run -------------------------------------------------------------------------------------------


def _phase_change(ctx: ProjectionContext, event: EventRow, data: PhaseChange) -> None:
    if ctx.is_stale(event) and ctx.superseded(event, same_node=False):
        return
    ctx.conn.execute(_SET_PHASE, {"run_id": event[0], "phase": data.phase})


# -- append-only -----------------------------------------------------------------------------------


def _llm_call(ctx: ProjectionContext, event: EventRow, data: LlmCall) -> None:
    run_id, seq, ts, _, node_id, _ = event
    ctx.append(LLM_CALLS_TABLE, {
        "run_id": run_id, "seq": seq, "node_id": node_id, "agent": data.agent,
        "model": data.model, "prompt_tokens": data.prompt_tokens,
        "completion_tokens": data.completion_tokens,
        "total_tokens": data.total_tokens or data.prompt_tokens + data.completion_tokens,
        "cost": data.cost, "cost_source": data.cost_source, "duration_s": data.duration_s,
        "cached": data.cached, "ts": ts})


def _file_event(ctx: ProjectionContext, event: EventRow, data: FileEvent) -> None:
    run_id, seq, ts, type_, node_id, _ = event
    ctx.append(FILES_TABLE, {
        "run_id": run_id, "seq": seq, "path": data.path, "sha256": data.sha256,
        "size": data.size, "version": data.version, "node_id": node_id, "phase": data.phase,
        "agent": data.agent, "kind": type_.removeprefix("file_"), "ts": ts})


def _file_deleted(ctx: ProjectionContext, event: EventRow, data: FileDeleted) -> None:
    run_id, seq, ts, _, node_id, _ = event
    ctx.append(FILES_TABLE, {
        "run_id": run_id, "seq": seq, "path": data.path, "sha256": "", "size": 0,
        "version": data.version, "node_id": node_id, "phase": data.phase, "agent": data.agent,
        "kind": "deleted", "ts": ts})


#: Event type → projection. Types not listed are stored and not projected.
PROJECTIONS: Final[dict[str, Projection[Any]]] = {
    "dag_created": Projection(DagCreated, _dag_created),
    "dag_node_added": Projection(DagNodeAdded, _dag_node_added, needs_node=True),
    "dag_node_update": Projection(DagNodeUpdate, _dag_node_update, needs_node=True),
    "phase_change": Projection(PhaseChange, _phase_change),
    "llm_call": Projection(LlmCall, _llm_call),
    "file_created": Projection(FileEvent, _file_event),
    "file_modified": Projection(FileEvent, _file_event),
    "file_deleted": Projection(FileDeleted, _file_deleted),
}


def to_project(conn: Connection, events: Sequence[EventRow],
               stored_before: Mapping[str, int]) -> list[EventRow]:
    """The events of a batch to project: those with a projection that the insert will add.

    Call before inserting the batch. Returns the first occurrence of each ``(run_id, seq)``, in
    that key order. An event above its run's ``last_seq`` cannot be stored yet, so only the
    others (gap refills, repeated batches) are looked up.
    """
    candidates = [event for event in events if event[3] in PROJECTIONS]
    maybe: dict[str, set[int]] = {}
    for run_id, seq, *_ in candidates:
        if seq <= stored_before.get(run_id, 0):
            maybe.setdefault(run_id, set()).add(seq)
    stored = {(run_id, seq) for run_id, seqs in maybe.items() for seq in conn.execute(
        select(EVENTS_TABLE.c.seq).where(EVENTS_TABLE.c.run_id == run_id, EVENTS_TABLE.c.seq.in_(seqs))
    ).scalars()}
    fresh: dict[tuple[str, int], EventRow] = {}
    for event in candidates:
        key = (event[0], event[1])
        if key not in stored and key not in fresh:
            fresh[key] = event
    return [fresh[key] for key in sorted(fresh)]


def apply_projections(ctx: ProjectionContext, events: Sequence[EventRow]) -> None:
    """Apply the projection of each event, in the given order; bad payloads become diagnostics."""
    for event in events:
        projection = PROJECTIONS[event[3]]
        problem: str | None = None
        try:
            payload = validate_payload(event[3], event[5].encode())
        except InvalidEvent as exc:
            problem = exc.reason
        else:
            if not isinstance(payload, projection.payload):
                problem = f"payload of {event[3]!r} decoded as {type(payload).__name__}"
            elif projection.needs_node and event[4] is None:
                problem = f"{event[3]!r} event has no node_id"
        if problem is not None:
            ctx.diagnostics.append(DiagnosticRow(
                event[0], event[2], "projection_error", f"seq {event[1]}: {problem}", event[5]))
            continue
        projection.apply(ctx, event, payload)
    ctx.flush()
