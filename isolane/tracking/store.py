"""The store: every read and write of isolane's database, behind one narrow class.

::

    Executor / CLI ──Store.open(url)──▶ resolve URL ─▶ engine (backend by dialect name)
                                         └─▶ migrate to head (under the migration lock)
    StoreWriter (one thread) ──write_batch(events, diagnostics, run_updates)──▶ ONE transaction
         (isolane.tracking.writes): runs (lock + last_seq) → events (multi-row INSERTs, duplicates
         ignored) → projections (dag, phase, llm_calls, files) → diagnostics → run updates
    readers (any thread) ──get_run / list_runs / events / dag / …──▶ frozen rows

Threading: one writer thread plus any number of reader threads may share a :class:`Store`; each
call checks a connection out of the engine's pool for its own duration. Times are float epoch
seconds (UTC), like the wire ``ts``. Connection-level failures raise :class:`StoreUnavailable`
(retry later; the events are safe in the run's spool), never a raw driver error. Every text
written (event data, node ids, run fields, diagnostics, JSON columns) is stored in the one form
of :mod:`isolane.tracking.storable`: U+0000, which PostgreSQL refuses, becomes U+FFFD on every
backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.sql.selectable import TextualSelect

from isolane.errors import ConfigError, RunNotFound
from isolane.schemas.envelope import Event, EventRow, events_from_rows
from isolane.tracking._dialects import Backend
from isolane.tracking._engine import open_engine, transaction
from isolane.tracking.listing import count_events_query, list_runs_query
from isolane.tracking.models import (
    DIAGNOSTICS_TABLE,
    EDGES_TABLE,
    EVENTS_TABLE,
    FILES_TABLE,
    LLM_CALLS_TABLE,
    NODES_TABLE,
    RUNS_TABLE,
    STATES_TABLE,
)
from isolane.tracking.rows import (
    DagEdgeRow,
    DagNodeRow,
    DiagnosticRow,
    FileRow,
    LlmCallRow,
    RunRow,
    columns_of,
)
from isolane.tracking.storable import storable_text
from isolane.tracking.urls import display_url
from isolane.tracking.writes import (
    RUN_COLUMNS,
    check_fields,
    check_status,
    insert_run,
    update_run_in,
    write_in,
)

__all__ = ["MIN_PREFIX", "UNFINISHED_STATUSES", "Store"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: A run id prefix must have at least this many characters to be looked up.
MIN_PREFIX: Final = 4
#: Statuses of a run that has not reached an outcome (what recovery looks at).
UNFINISHED_STATUSES: Final = ("queued", "starting", "running")


_EVENT_READ: Final = (EVENTS_TABLE.c.run_id, EVENTS_TABLE.c.seq, EVENTS_TABLE.c.ts, EVENTS_TABLE.c.type,
                      EVENTS_TABLE.c.node_id, EVENTS_TABLE.c.data)

class Store:
    """isolane's database: runs, their event log and what is derived from it.

    Open with :meth:`Store.open`; the constructor takes an engine already migrated by it.
    """

    def __init__(self, engine: Engine, backend: Backend) -> None:
        self._engine = engine
        self._backend = backend
        self.url: Final = display_url(engine.url)
        """The database URL with its password masked."""
        self.dialect: Final = backend.name
        """The backend's dialect name: ``"sqlite"`` or ``"postgresql"``."""

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | URL | None = None, *, home: Path | str | None = None) -> Store:
        """Open (and migrate to the newest schema) the database at ``url``.

        ``url`` defaults to ``$ISOLANE_DB_URL``, else ``sqlite:///<home>/isolane.db`` with
        ``home`` defaulting to ``./.isolane``; a SQLite file's directory is created if missing.
        Safe when several processes open the same fresh database at once.

        Raises :class:`ConfigError` for a malformed or unsupported URL and
        :class:`StoreUnavailable` when the database cannot be reached or migrated.
        """
        return cls(*open_engine(url, home=home))

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def backend(self) -> Backend:
        """The dialect's behaviour (event inserts, upserts), for statements of other modules."""
        return self._backend

    def transaction(self, *, write: bool) -> AbstractContextManager[Connection]:
        """One transaction, with the store's outage and retry semantics; tracking modules that
        write several tables at once (branching) use it with :func:`insert_run`/:func:`write_in`."""
        return transaction(self._engine, write=write, action="write to" if write else "read")

    # -- runs --------------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        task: str = "",
        config: Mapping[str, Any] | None = None,
        status: str = "queued",
        work_dir: str = "",
        name: str | None = None,
        session_id: str | None = None,
        parent_run_id: str | None = None,
        branch_point_node: str | None = None,
        attempt: int = 1,
        meta: Mapping[str, Any] | None = None,
        created_at: float | None = None,
    ) -> RunRow:
        """Record a new run and return it.

        A ``session_id`` not seen before creates that session. Raises :class:`ConfigError` for
        a duplicate ``run_id`` or an unknown status, :class:`RunNotFound` for an unknown
        ``parent_run_id``.
        """
        check_status(status)
        row = RunRow(
            id=run_id, workflow=workflow, task=task, config=dict(config or {}), status=status,
            created_at=time.time() if created_at is None else created_at, work_dir=work_dir,
            last_seq=0, attempt=attempt, meta=dict(meta or {}), session_id=session_id,
            parent_run_id=parent_run_id, branch_point_node=branch_point_node, name=name)
        with self.transaction(write=True) as conn:
            insert_run(conn, self._backend, row)
        return row

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set the given columns of a run (``status="running"``, ``started_at=…``).

        Raises :class:`ConfigError` for an unknown field name (or ``id``/``last_seq``, which
        are not caller-settable) or status, :class:`RunNotFound` for an unknown run.
        """
        check_fields(fields)
        with self.transaction(write=True) as conn:
            update_run_in(conn, run_id, fields)

    def get_run(self, run_id_or_prefix: str) -> RunRow:
        """The run with this exact id, else the one run whose id starts with it.

        A prefix needs at least :data:`MIN_PREFIX` characters. Raises :class:`RunNotFound` when
        nothing matches and :class:`ConfigError` listing the candidates when several do.
        """
        key = storable_text(run_id_or_prefix.strip())  # no stored id holds a NUL
        with self.transaction(write=False) as conn:
            found = conn.execute(select(*RUN_COLUMNS).where(RUNS_TABLE.c.id == key)).first()
            if found is not None:
                return RunRow(**found._mapping)
            if len(key) < MIN_PREFIX:
                raise RunNotFound(key, hint=f"give the full id or at least {MIN_PREFIX} characters")
            # LIKE is case-insensitive on SQLite: filter exactly in Python.
            rows = [row for row in conn.execute(
                select(*RUN_COLUMNS).where(RUNS_TABLE.c.id.startswith(key, autoescape=True))
                .order_by(RUNS_TABLE.c.id).limit(50)) if row.id.startswith(key)]
        if not rows:
            raise RunNotFound(key)
        if len(rows) > 1:
            shown = ", ".join(row.id for row in rows[:10]) + (", …" if len(rows) > 10 else "")
            raise ConfigError(
                f"run id prefix {key!r} is ambiguous: it matches {shown}; give more characters")
        return RunRow(**rows[0]._mapping)

    def list_runs(self, *, limit: int = 50, status: str | Sequence[str] | None = None,
                  parent_run_id: str | None = None) -> list[RunRow]:
        """Runs, newest first; optionally only those with ``status`` (one or several) or the
        children of ``parent_run_id``."""
        sql, params = list_runs_query(limit=limit, status=status, parent_run_id=parent_run_id)
        return self._rows(text(sql).bindparams(**params).columns(*RUN_COLUMNS), RunRow)

    def count_runs_by_status(self) -> dict[str, int]:
        """How many runs the store holds in each status (metrics)."""
        stmt = select(RUNS_TABLE.c.status, func.count()).group_by(RUNS_TABLE.c.status)
        with self.transaction(write=False) as conn:
            return {str(status): int(count) for status, count in conn.execute(stmt)}

    def unfinished_runs(self) -> list[RunRow]:
        """Runs still queued, starting or running, oldest first (what recovery inspects)."""
        stmt = select(*RUN_COLUMNS).where(RUNS_TABLE.c.status.in_(UNFINISHED_STATUSES)).order_by(
            RUNS_TABLE.c.created_at, RUNS_TABLE.c.id)
        return self._rows(stmt, RunRow)

    # -- the hot path ------------------------------------------------------------------------------

    def write_batch(
        self,
        *,
        events: Sequence[EventRow] = (),
        diagnostics: Sequence[DiagnosticRow | tuple[str | None, float, str, str, str]] = (),
        run_updates: Mapping[str, Mapping[str, Any]] | None = None,
        storable: bool = False,
    ) -> int:
        """Store events, diagnostics and run changes in ONE transaction; return new event rows.

        ``events`` are ``(run_id, seq, ts, type, node_id, data_json_text)``, stored in the form
        :mod:`isolane.tracking.storable` gives every text (U+0000 becomes U+FFFD); a ``(run_id, seq)``
        already stored (or repeated in the batch) is skipped, so a batch can be written again
        harmlessly. ``storable=True`` says the caller already passed ``events`` through
        :func:`~isolane.tracking.storable.storable_events` (the writer does, to publish the
        stored form), so they are not searched again. Events new to the database are projected (see
        :mod:`isolane.tracking.projections`); each run's ``last_seq`` rises to the largest seq
        written. Diagnostics are ``DiagnosticRow`` or ``(run_id, ts, kind, reason, excerpt)``.
        ``run_updates`` maps a run id to columns to set, as :meth:`update_run`.

        Raises :class:`RunNotFound` (nothing written) when an event or update names an unknown
        run, :class:`StoreUnavailable` when the database cannot be reached.
        """
        updates = run_updates or {}
        for fields in updates.values():
            check_fields(fields)
        if not events and not diagnostics and not updates:
            return 0
        with self.transaction(write=True) as conn:
            return write_in(conn, self._backend, events=events, diagnostics=diagnostics,
                            run_updates=updates, storable=storable)

    # -- reads -------------------------------------------------------------------------------------

    def events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None,
               types: Sequence[str] | None = None) -> list[Event]:
        """The run's events with ``seq > after_seq``, in seq order (at most ``limit``)."""
        stmt = select(*_EVENT_READ).where(EVENTS_TABLE.c.run_id == run_id, EVENTS_TABLE.c.seq > after_seq)
        if types is not None:
            stmt = stmt.where(EVENTS_TABLE.c.type.in_(types))
        stmt = stmt.order_by(EVENTS_TABLE.c.seq).limit(limit)
        with self.transaction(write=False) as conn:
            return events_from_rows(conn.execute(stmt).all())

    def count_events(self, run_id: str, *, types: Sequence[str] | None = None) -> int:
        """How many events of the run are stored (only of ``types`` when given)."""
        sql, params = count_events_query(run_id, types=types)
        with self.transaction(write=False) as conn:
            return int(conn.execute(text(sql), params).scalar_one())

    def seq_stats(self, run_id: str) -> tuple[int, int | None, int | None]:
        """``(count, min seq, max seq)`` of the run's stored events (``(0, None, None)`` if none);
        ``count == max - min + 1`` means no gap."""
        stmt = select(func.count(), func.min(EVENTS_TABLE.c.seq), func.max(EVENTS_TABLE.c.seq)).where(
            EVENTS_TABLE.c.run_id == run_id)
        with self.transaction(write=False) as conn:
            count, low, high = conn.execute(stmt).one()
        return int(count), low, high

    def dag(self, run_id: str) -> tuple[list[DagNodeRow], list[DagEdgeRow]]:
        """The run's DAG: nodes in the order they were added, edges in insertion order."""
        nodes = self._rows(select(*(NODES_TABLE.c[n] for n in columns_of(DagNodeRow)))
                           .where(NODES_TABLE.c.run_id == run_id)
                           .order_by(NODES_TABLE.c.position, NODES_TABLE.c.id), DagNodeRow)
        edges = self._rows(select(*(EDGES_TABLE.c[n] for n in columns_of(DagEdgeRow)))
                           .where(EDGES_TABLE.c.run_id == run_id).order_by(EDGES_TABLE.c.id), DagEdgeRow)
        return nodes, edges

    def diagnostics(self, run_id: str | None = None) -> list[DiagnosticRow]:
        """Recorded diagnostics, oldest first; only the run's when ``run_id`` is given."""
        stmt = select(*(DIAGNOSTICS_TABLE.c[n] for n in columns_of(DiagnosticRow))).order_by(
            DIAGNOSTICS_TABLE.c.id)
        if run_id is not None:
            stmt = stmt.where(DIAGNOSTICS_TABLE.c.run_id == run_id)
        return self._rows(stmt, DiagnosticRow)

    def llm_calls(self, run_id: str) -> list[LlmCallRow]:
        """The run's LLM calls in seq order."""
        stmt = select(*(LLM_CALLS_TABLE.c[n] for n in columns_of(LlmCallRow))).where(
            LLM_CALLS_TABLE.c.run_id == run_id).order_by(LLM_CALLS_TABLE.c.seq)
        return self._rows(stmt, LlmCallRow)

    def files(self, run_id: str) -> list[FileRow]:
        """The run's file versions in seq order."""
        stmt = select(*(FILES_TABLE.c[n] for n in columns_of(FileRow))).where(
            FILES_TABLE.c.run_id == run_id).order_by(FILES_TABLE.c.seq)
        return self._rows(stmt, FileRow)

    def put_session_state(self, run_id: str, seq: int, state: Mapping[str, Any]) -> None:
        """Keep ``state`` as the run's latest consistent state, as of event ``seq``."""
        with self.transaction(write=True) as conn:
            conn.execute(delete(STATES_TABLE).where(STATES_TABLE.c.run_id == run_id))
            conn.execute(insert(STATES_TABLE).values(run_id=run_id, seq=seq, state=dict(state),
                                                updated_at=time.time()))

    def session_state(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """``(seq, state)`` kept by :meth:`put_session_state`, or None."""
        stmt = select(STATES_TABLE.c.seq, STATES_TABLE.c.state).where(STATES_TABLE.c.run_id == run_id)
        with self.transaction(write=False) as conn:
            row = conn.execute(stmt).first()
        return None if row is None else (int(row.seq), dict(row.state))

    def _rows(self, stmt: Select[Any] | TextualSelect, row_type: type[R]) -> list[R]:
        with self.transaction(write=False) as conn:
            return [row_type(**row._mapping) for row in conn.execute(stmt)]
