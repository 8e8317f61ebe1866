"""The database schema as SQLAlchemy 2.x typed declarative models.

These classes describe the tables; they never create them. The only schema path is the Alembic
migrations in ``isolane/tracking/migrations/`` (run by :meth:`isolane.tracking.Store.open`), and
a conformance test checks that migrating an empty database yields exactly this metadata.

Conventions, so every table reads the same way:

* ids are strings (run ids, session ids, node ids), except the surrogate integer keys of
  append-only tables (``events``, ``diagnostics``, …);
* every time is a float of seconds since the Unix epoch, UTC, like the wire ``ts``;
* JSON columns are ``JSON`` (text on SQLite) with a ``JSONB`` variant on PostgreSQL; a Python
  ``None`` is stored as SQL ``NULL``. Columns that code edits in place (``meta``) track mutation
  with :class:`~sqlalchemy.ext.mutable.MutableDict`; the others are always replaced whole;
* constraint and index names come from :data:`NAMING_CONVENTION`, so migrations name them the
  same way on every backend.

The ORM classes end in ``Record``; the frozen values :class:`~isolane.tracking.Store` returns
end in ``Row`` (see :mod:`isolane.tracking.rows`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, mapped_column
from sqlalchemy.types import TypeEngine

from isolane.tracking.rows import RUN_STATUSES

__all__ = [
    "BRANCHES_TABLE",
    "DIAGNOSTICS_TABLE",
    "EDGES_TABLE",
    "EVENTS_TABLE",
    "FILES_TABLE",
    "GROUPS_TABLE",
    "LLM_CALLS_TABLE",
    "NAMING_CONVENTION",
    "NODES_TABLE",
    "NODE_STATUSES",
    "RUNS_TABLE",
    "RUN_STATUSES",
    "SESSIONS_TABLE",
    "STATES_TABLE",
    "Base",
    "BranchRecord",
    "DagEdgeRecord",
    "DagNodeRecord",
    "DiagnosticRecord",
    "EventRecord",
    "FileRecord",
    "JSONType",
    "LlmCallRecord",
    "RacingGroupRecord",
    "RunRecord",
    "SessionRecord",
    "SessionStateRecord",
    "table_of",
]

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Every status a DAG node can have.
NODE_STATUSES: Final = frozenset({"pending", "running", "completed", "failed", "skipped", "cancelled"})

#: JSON as text on SQLite, JSONB on PostgreSQL; Python ``None`` becomes SQL ``NULL``.
JSONType: Final[TypeEngine[Any]] = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_MutableJSON: Final = MutableDict.as_mutable(JSONType)

# SQLite only aliases the rowid (a cheap autoincrement key) for a column declared exactly
# ``INTEGER PRIMARY KEY``; PostgreSQL gets a 64-bit key for the tables that grow without bound.
_BigId: Final = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> float:
    return time.time()


class Base(DeclarativeBase):
    """Declarative base of every isolane table; its metadata is what the migrations must yield."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        float: Double(), str: String(), dict[str, Any]: _MutableJSON}


def table_of(record: type[Base]) -> Table:
    """The :class:`~sqlalchemy.Table` of a mapped class (typed, for Core statements)."""
    table = record.__table__
    assert isinstance(table, Table)
    return table


def _run_fk(*, nullable: bool = False, ondelete: str = "CASCADE",
            primary_key: bool = False) -> MappedColumn[Any]:
    return mapped_column(String, ForeignKey("runs.id", ondelete=ondelete), nullable=nullable,
                         primary_key=primary_key)


class SessionRecord(Base):
    """A named group of runs (one user session, one experiment)."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str | None]
    created_at: Mapped[float] = mapped_column(default=_now)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RunRecord(Base):
    """One run of a workflow in one worker process; a branch is a run with a parent.

    ``last_seq`` is the highest event ``seq`` stored for the run; only
    :meth:`~isolane.tracking.Store.write_batch` raises it, so no stored event has a larger seq.
    """

    __tablename__ = "runs"
    __table_args__ = (
        Index(None, "status"),
        Index(None, "created_at"),
        Index(None, "parent_run_id"),
        Index(None, "session_id"),
    )

    id: Mapped[str] = mapped_column(primary_key=True)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id", ondelete="SET NULL"))
    parent_run_id: Mapped[str | None] = _run_fk(nullable=True, ondelete="SET NULL")
    branch_point_node: Mapped[str | None]
    workflow: Mapped[str]
    task: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(default="queued")
    phase: Mapped[str | None]
    attempt: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    created_at: Mapped[float] = mapped_column(default=_now)
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    heartbeat_at: Mapped[float | None]
    worker_pid: Mapped[int | None]
    worker_create_time: Mapped[float | None]
    exit_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None]
    result: Mapped[Any | None] = mapped_column(JSONType)
    work_dir: Mapped[str] = mapped_column(default="")
    last_seq: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    name: Mapped[str | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EventRecord(Base):
    """The event log: one row per envelope, ``data`` kept as the worker wrote it.

    Keyed by ``(run_id, seq)``: every insert is idempotent, lookups by run are range scans of
    the key, and there is no other index to slow the hot path (migration 0002 says why).
    """

    __tablename__ = "events"
    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 - SQLAlchemy declares it

    run_id: Mapped[str] = _run_fk(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[float]
    type: Mapped[str]
    node_id: Mapped[str | None]
    data: Mapped[Any] = mapped_column(JSONType)


class DiagnosticRecord(Base):
    """Something the parent noticed and kept instead of crashing (``invalid_event``, ``seq_gap``…).

    ``run_id`` is deliberately not a foreign key: a diagnostic about a frame naming an unknown run
    must still be recorded.
    """

    __tablename__ = "diagnostics"
    __table_args__ = (Index(None, "run_id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None]
    ts: Mapped[float] = mapped_column(default=_now)
    kind: Mapped[str]
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text, default="")


class DagNodeRecord(Base):
    """A node of a run's DAG; ``node_id`` is a string stable across branches (``step_3``)."""

    __tablename__ = "dag_nodes"
    __table_args__ = (UniqueConstraint("run_id", "node_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    node_id: Mapped[str]
    label: Mapped[str] = mapped_column(default="")
    node_type: Mapped[str] = mapped_column(default="step")
    parent_node_id: Mapped[str | None]
    depth: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    status: Mapped[str] = mapped_column(default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    position: Mapped[int] = mapped_column(default=0, server_default=text("0"))


class DagEdgeRecord(Base):
    """A directed edge between two nodes of a run's DAG."""

    __tablename__ = "dag_edges"
    __table_args__ = (UniqueConstraint("run_id", "source", "target", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    source: Mapped[str]
    target: Mapped[str]
    kind: Mapped[str] = mapped_column(default="next")
    condition: Mapped[str | None] = mapped_column(Text)


class LlmCallRecord(Base):
    """One LLM call, projected from an ``llm_call`` event; ``cost`` is ``NULL`` when unpriced."""

    __tablename__ = "llm_calls"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    node_id: Mapped[str | None]
    agent: Mapped[str | None]
    model: Mapped[str]
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    total_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float | None]
    cost_source: Mapped[str]
    duration_s: Mapped[float] = mapped_column(default=0.0)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    ts: Mapped[float]


class FileRecord(Base):
    """One version of a file in a run's workspace, projected from ``file_created``/``file_modified``."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("run_id", "seq"), Index(None, "run_id", "path"))

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str]
    size: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(default=1)
    node_id: Mapped[str | None]
    phase: Mapped[str | None]
    agent: Mapped[str | None]
    kind: Mapped[str]
    ts: Mapped[float]


class SessionStateRecord(Base):
    """The latest consistent session state of a run (what resume starts from)."""

    __tablename__ = "session_states"

    run_id: Mapped[str] = mapped_column(String, ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    seq: Mapped[int]
    state: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(default=_now)


class RacingGroupRecord(Base):
    """Several branches started at once from one node, judged by ``strategy``."""

    __tablename__ = "racing_groups"
    __table_args__ = (Index(None, "parent_run_id"),)

    id: Mapped[str] = mapped_column(primary_key=True)
    parent_run_id: Mapped[str] = _run_fk()
    from_node: Mapped[str]
    strategy: Mapped[str]
    status: Mapped[str] = mapped_column(default="running")
    winner_run_id: Mapped[str | None] = _run_fk(nullable=True, ondelete="SET NULL")
    budget_usd: Mapped[float | None]
    created_at: Mapped[float] = mapped_column(default=_now)


class BranchRecord(Base):
    """Why a run is a branch: where it starts, its name and hypothesis, its racing group."""

    __tablename__ = "branches"
    __table_args__ = (Index(None, "parent_run_id"), Index(None, "racing_group_id"))

    run_id: Mapped[str] = mapped_column(String, ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    parent_run_id: Mapped[str] = _run_fk()
    from_node: Mapped[str]
    name: Mapped[str | None]
    hypothesis: Mapped[str | None] = mapped_column(Text)
    racing_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("racing_groups.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(default="running")


# -- the tables, for SQLAlchemy Core statements (the store, projections, branching) ------------

RUNS_TABLE: Final = table_of(RunRecord)
EVENTS_TABLE: Final = table_of(EventRecord)
SESSIONS_TABLE: Final = table_of(SessionRecord)
DIAGNOSTICS_TABLE: Final = table_of(DiagnosticRecord)
NODES_TABLE: Final = table_of(DagNodeRecord)
EDGES_TABLE: Final = table_of(DagEdgeRecord)
LLM_CALLS_TABLE: Final = table_of(LlmCallRecord)
FILES_TABLE: Final = table_of(FileRecord)
STATES_TABLE: Final = table_of(SessionStateRecord)
GROUPS_TABLE: Final = table_of(RacingGroupRecord)
BRANCHES_TABLE: Final = table_of(BranchRecord)
