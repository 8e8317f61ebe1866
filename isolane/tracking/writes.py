"""Writing inside one transaction: the statements behind :meth:`Store.write_batch
<isolane.tracking.store.Store.write_batch>`, :meth:`~isolane.tracking.store.Store.create_run` and
the branching writes that put several tables in one transaction.

::

    write_in(conn, events, diagnostics, run_updates)
        text in its stored form (isolane.tracking.storable: U+0000 becomes U+FFFD)
        runs (lock + last_seq) → events (many rows per INSERT, duplicates ignored)
        → projections (dag, phase, llm_calls, files) → diagnostics → run updates
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import Connection, bindparam, select, update

from isolane.errors import ConfigError, RunNotFound
from isolane.schemas.envelope import EventRow
from isolane.tracking._dialects import Backend
from isolane.tracking.models import (
    DIAGNOSTICS_TABLE,
    RUN_STATUSES,
    RUNS_TABLE,
    SESSIONS_TABLE,
)
from isolane.tracking.projections import (
    ProjectionContext,
    apply_projections,
    to_project,
)
from isolane.tracking.rows import EXCERPT_LIMIT, DiagnosticRow, RunRow, columns_of
from isolane.tracking.storable import storable_events, storable_fields

__all__ = ["RUN_COLUMNS", "check_fields", "check_status", "insert_run", "update_run_in", "write_in"]

#: The ``runs`` columns a :class:`RunRow` is read from.
RUN_COLUMNS: Final = tuple(RUNS_TABLE.c[name] for name in columns_of(RunRow))
#: Run fields callers may set; ``last_seq`` is kept by write_batch (the projections rely on it).
_UPDATABLE: Final = frozenset(c.name for c in RUNS_TABLE.c) - {"id", "last_seq"}
_DIAGNOSTIC_FIELDS: Final = ("run_id", "ts", "kind", "reason", "excerpt")
# Built once: the hot path should not pay for constructing statements.
# FOR UPDATE: a second writer of the same run (PostgreSQL) waits for this one to commit.
_LOCK_RUNS: Final = select(RUNS_TABLE.c.id, RUNS_TABLE.c.last_seq).where(
    RUNS_TABLE.c.id.in_(bindparam("ids", expanding=True))).with_for_update()
_RAISE_LAST_SEQ: Final = update(RUNS_TABLE).where(
    RUNS_TABLE.c.id == bindparam("run"), RUNS_TABLE.c.last_seq < bindparam("top")).values(
    last_seq=bindparam("top"))


def insert_run(conn: Connection, backend: Backend, row: RunRow) -> None:
    """Insert ``row`` inside the caller's transaction (see :meth:`Store.create_run`)."""
    if conn.execute(select(RUNS_TABLE.c.id).where(RUNS_TABLE.c.id == row.id)).first() is not None:
        raise ConfigError(f"a run with id {row.id!r} already exists; run ids are unique")
    if row.parent_run_id is not None and conn.execute(
            select(RUNS_TABLE.c.id).where(RUNS_TABLE.c.id == row.parent_run_id)).first() is None:
        raise RunNotFound(row.parent_run_id, hint="the parent of a branch must be stored first")
    if row.session_id is not None:
        conn.execute(backend.insert_ignore(SESSIONS_TABLE, ("id",)),
                     {"id": row.session_id, "name": None, "created_at": row.created_at, "meta": {}})
    conn.execute(RUNS_TABLE.insert().values(
        storable_fields({c.name: getattr(row, c.name) for c in RUN_COLUMNS})))


def write_in(
    conn: Connection,
    backend: Backend,
    *,
    events: Sequence[EventRow] = (),
    diagnostics: Sequence[DiagnosticRow | tuple[str | None, float, str, str, str]] = (),
    run_updates: Mapping[str, Mapping[str, Any]] | None = None,
    storable: bool = False,
) -> int:
    """The body of :meth:`Store.write_batch`, inside the caller's transaction."""
    if not storable:
        events = storable_events(events)
    top_seq = _top_seq_per_run(events)
    problems = [_diagnostic_params(d) for d in diagnostics]
    inserted = 0
    if top_seq:
        stored_before = dict(conn.execute(_LOCK_RUNS, {"ids": list(top_seq)}).all())
        missing = top_seq.keys() - stored_before.keys()
        if missing:
            raise RunNotFound(min(missing), hint="create the run before writing its events")
        fresh = to_project(conn, events, stored_before)  # asked before inserting
        inserted = backend.insert_events(conn, events)
        conn.execute(_RAISE_LAST_SEQ,
                     [{"run": run_id, "top": seq} for run_id, seq in top_seq.items()])
        if fresh:
            ctx = ProjectionContext(conn, backend, stored_before)
            apply_projections(ctx, fresh)
            problems += map(_diagnostic_params, ctx.diagnostics)
    if problems:
        conn.execute(DIAGNOSTICS_TABLE.insert(), problems)
    for run_id, fields in (run_updates or {}).items():
        if fields:
            update_run_in(conn, run_id, fields)
    return inserted


def check_status(status: str) -> None:
    """Raise :class:`ConfigError` for a status runs cannot have."""
    if status not in RUN_STATUSES:
        raise ConfigError(f"unknown run status {status!r}; one of {', '.join(sorted(RUN_STATUSES))}")


def check_fields(fields: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for run fields a caller may not set (or a bad status)."""
    unknown = fields.keys() - _UPDATABLE
    if unknown:
        raise ConfigError(
            f"cannot set run field(s) {', '.join(sorted(unknown))}; settable fields: "
            f"{', '.join(sorted(_UPDATABLE))}")
    if "status" in fields:
        check_status(fields["status"])


def update_run_in(conn: Connection, run_id: str, fields: Mapping[str, Any]) -> None:
    """Set ``fields`` of run ``run_id`` inside the caller's transaction; :class:`RunNotFound`."""
    stmt = update(RUNS_TABLE).where(RUNS_TABLE.c.id == run_id).values(storable_fields(fields))
    if conn.execute(stmt).rowcount == 0:
        raise RunNotFound(run_id)


def _top_seq_per_run(events: Sequence[EventRow]) -> dict[str, int]:
    if not events:
        return {}
    run_ids = set(map(itemgetter(0), events))
    if len(run_ids) == 1:  # the common case: one run's batch
        return {run_ids.pop(): max(map(itemgetter(1), events))}
    top: dict[str, int] = {}
    for run_id, seq, *_ in events:
        if seq > top.get(run_id, 0):
            top[run_id] = seq
    return top


def _diagnostic_params(diagnostic: DiagnosticRow | tuple[str | None, float, str, str, str]
                       ) -> dict[str, Any]:
    if isinstance(diagnostic, DiagnosticRow):
        values: tuple[Any, ...] = (diagnostic.run_id, diagnostic.ts, diagnostic.kind,
                                   diagnostic.reason, diagnostic.excerpt)
    else:
        values = tuple(diagnostic)
    params = dict(zip(_DIAGNOSTIC_FIELDS, values, strict=True))
    params["excerpt"] = (params["excerpt"] or "")[:EXCERPT_LIMIT]
    return storable_fields(params)
