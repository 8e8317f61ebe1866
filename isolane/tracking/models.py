"""The database schema as SQLAlchemy 2.x Core tables: one :class:`~sqlalchemy.Table` a table.

These tables describe the schema; they never create it. The only schema path is the Alembic
migrations in ``isolane/tracking/migrations/`` (run by :meth:`isolane.tracking.Store.open`), and
a conformance test checks that migrating an empty database yields exactly :data:`METADATA`.

Conventions, so every table reads the same way:

* ids are strings (run ids, session ids, node ids), except the surrogate integer keys of
  append-only tables (``events``, ``diagnostics``, …);
* every time is a float of seconds since the Unix epoch, UTC, like the wire ``ts``;
* JSON columns are ``JSON`` (text on SQLite) with a ``JSONB`` variant on PostgreSQL; a Python
  ``None`` is stored as SQL ``NULL``. isolane reads and writes through Core statements only, so
  a JSON value (``meta``) is always replaced whole, never edited in place;
* constraint and index names come from :data:`NAMING_CONVENTION`, so migrations name them the
  same way on every backend.

Core, not ORM classes: the store never used a session, and the ORM is a large import that every
``isolane`` command opening the store would pay for. The frozen values
:class:`~isolane.tracking.Store` returns are in :mod:`isolane.tracking.rows`.
"""

from __future__ import annotations

import time
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
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
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from isolane.tracking.rows import RUN_STATUSES

__all__ = [
    "ANSWERS_TABLE",
    "BRANCHES_TABLE",
    "DIAGNOSTICS_TABLE",
    "EDGES_TABLE",
    "EVENTS_TABLE",
    "FILES_TABLE",
    "GROUPS_TABLE",
    "LLM_CALLS_TABLE",
    "METADATA",
    "NAMING_CONVENTION",
    "NODES_TABLE",
    "NODE_STATUSES",
    "RUNS_TABLE",
    "RUN_STATUSES",
    "SESSIONS_TABLE",
    "STATES_TABLE",
    "JSONType",
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

class _JSON(TypeDecorator[Any]):
    """JSON as text on SQLite, JSONB on PostgreSQL; Python ``None`` becomes SQL ``NULL``.

    The PostgreSQL type is chosen when a PostgreSQL dialect asks, so a store on SQLite never
    imports SQLAlchemy's PostgreSQL dialect (DESIGN.md, "Performance targets")."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


#: JSON as text on SQLite, JSONB on PostgreSQL; Python ``None`` becomes SQL ``NULL``.
JSONType: Final[TypeEngine[Any]] = _JSON()

# SQLite only aliases the rowid (a cheap autoincrement key) for a column declared exactly
# ``INTEGER PRIMARY KEY``; PostgreSQL gets a 64-bit key for the tables that grow without bound.
_BigId: Final = BigInteger().with_variant(Integer(), "sqlite")
#: An event ``seq`` (the wire allows ``1 <= seq < 2**63``): 64-bit everywhere, spelled INTEGER on
#: SQLite, whose integers are 64-bit whatever the declared type (migration 0003 says why).
_Seq: Final = BigInteger().with_variant(Integer(), "sqlite")

#: What the migrations must yield (the conformance test compares a migrated database with it).
METADATA: Final = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> float:
    return time.time()


def _run_fk(name: str, *, nullable: bool = False, ondelete: str = "CASCADE",
            primary_key: bool = False) -> Column[Any]:
    return Column(name, String(), ForeignKey("runs.id", ondelete=ondelete), nullable=nullable,
                  primary_key=primary_key)


def _col(name: str, type_: Any, *, null: bool = False, **options: Any) -> Column[Any]:
    """A column, ``NOT NULL`` unless ``null`` (as a non-optional field would be)."""
    return Column(name, type_, nullable=null, **options)


#: A named group of runs (one user session, one experiment).
SESSIONS_TABLE: Final = Table(
    "sessions", METADATA,
    _col("id", String(), primary_key=True),
    _col("name", String(), null=True),
    _col("created_at", Double(), default=_now),
    _col("meta", JSONType, default=dict),
)

#: One run of a workflow in one worker process; a branch is a run with a parent.
#: ``last_seq`` is the highest event ``seq`` stored for the run; only
#: :meth:`~isolane.tracking.Store.write_batch` raises it, so no stored event has a larger seq.
RUNS_TABLE: Final = Table(
    "runs", METADATA,
    _col("id", String(), primary_key=True),
    Column("session_id", String(), ForeignKey("sessions.id", ondelete="SET NULL"), nullable=True),
    _run_fk("parent_run_id", nullable=True, ondelete="SET NULL"),
    _col("branch_point_node", String(), null=True),
    _col("workflow", String()),
    _col("task", Text(), default=""),
    _col("config", JSONType, default=dict),
    _col("status", String(), default="queued"),
    _col("phase", String(), null=True),
    _col("attempt", Integer(), default=1, server_default=text("1")),
    _col("created_at", Double(), default=_now),
    _col("started_at", Double(), null=True),
    _col("ended_at", Double(), null=True),
    _col("heartbeat_at", Double(), null=True),
    _col("worker_pid", Integer(), null=True),
    _col("worker_create_time", Double(), null=True),
    _col("exit_code", Integer(), null=True),
    _col("error", Text(), null=True),
    _col("error_type", String(), null=True),
    _col("result", JSONType, null=True),
    _col("work_dir", String(), default=""),
    _col("last_seq", _Seq, default=0, server_default=text("0")),
    _col("name", String(), null=True),
    _col("meta", JSONType, default=dict),
    Index(None, "status"),
    Index(None, "created_at"),
    Index(None, "parent_run_id"),
    Index(None, "session_id"),
)

#: The event log: one row per envelope, ``data`` kept as the worker wrote it. Keyed by
#: ``(run_id, seq)``: every insert is idempotent, lookups by run are range scans of the key, and
#: there is no other index to slow the hot path (migration 0002 says why).
EVENTS_TABLE: Final = Table(
    "events", METADATA,
    _run_fk("run_id", primary_key=True),
    _col("seq", BigInteger(), primary_key=True, autoincrement=False),
    _col("ts", Double()),
    _col("type", String()),
    _col("node_id", String(), null=True),
    _col("data", JSONType),
    sqlite_with_rowid=False,
)

#: Something the parent noticed and kept instead of crashing (``invalid_event``, ``seq_gap``…).
#: ``run_id`` is deliberately not a foreign key: a diagnostic about a frame naming an unknown
#: run must still be recorded.
DIAGNOSTICS_TABLE: Final = Table(
    "diagnostics", METADATA,
    _col("id", _BigId, primary_key=True, autoincrement=True),
    _col("run_id", String(), null=True),
    _col("ts", Double(), default=_now),
    _col("kind", String()),
    _col("reason", Text()),
    _col("excerpt", Text(), default=""),
    Index(None, "run_id"),
)

#: A node of a run's DAG; ``node_id`` is a string stable across branches (``step_3``).
NODES_TABLE: Final = Table(
    "dag_nodes", METADATA,
    _col("id", Integer(), primary_key=True, autoincrement=True),
    _run_fk("run_id"),
    _col("node_id", String()),
    _col("label", String(), default=""),
    _col("node_type", String(), default="step"),
    _col("parent_node_id", String(), null=True),
    _col("depth", Integer(), default=0, server_default=text("0")),
    _col("status", String(), default="pending"),
    _col("error", Text(), null=True),
    _col("started_at", Double(), null=True),
    _col("ended_at", Double(), null=True),
    _col("meta", JSONType, default=dict),
    _col("position", Integer(), default=0, server_default=text("0")),
    UniqueConstraint("run_id", "node_id"),
)

#: A directed edge between two nodes of a run's DAG.
EDGES_TABLE: Final = Table(
    "dag_edges", METADATA,
    _col("id", Integer(), primary_key=True, autoincrement=True),
    _run_fk("run_id"),
    _col("source", String()),
    _col("target", String()),
    _col("kind", String(), default="next"),
    _col("condition", Text(), null=True),
    UniqueConstraint("run_id", "source", "target", "kind"),
)

#: One LLM call, projected from an ``llm_call`` event; ``cost`` is ``NULL`` when unpriced.
LLM_CALLS_TABLE: Final = Table(
    "llm_calls", METADATA,
    _col("id", _BigId, primary_key=True, autoincrement=True),
    _run_fk("run_id"),
    _col("seq", _Seq),
    _col("node_id", String(), null=True),
    _col("agent", String(), null=True),
    _col("model", String()),
    _col("prompt_tokens", Integer(), default=0),
    _col("completion_tokens", Integer(), default=0),
    _col("total_tokens", Integer(), default=0),
    _col("cost", Double(), null=True),
    _col("cost_source", String()),
    _col("duration_s", Double(), default=0.0),
    _col("cached", Boolean(), default=False),
    _col("ts", Double()),
    UniqueConstraint("run_id", "seq"),
)

#: One version of a file in a run's workspace, projected from ``file_created``/``file_modified``.
FILES_TABLE: Final = Table(
    "files", METADATA,
    _col("id", _BigId, primary_key=True, autoincrement=True),
    _run_fk("run_id"),
    _col("seq", _Seq),
    _col("path", Text()),
    _col("sha256", String()),
    _col("size", BigInteger()),
    _col("version", Integer(), default=1),
    _col("node_id", String(), null=True),
    _col("phase", String(), null=True),
    _col("agent", String(), null=True),
    _col("kind", String()),
    _col("ts", Double()),
    UniqueConstraint("run_id", "seq"),
    Index(None, "run_id", "path"),
)

#: The latest consistent session state of a run (what resume starts from).
STATES_TABLE: Final = Table(
    "session_states", METADATA,
    _run_fk("run_id", primary_key=True),
    _col("seq", _Seq),
    _col("state", JSONType),
    _col("updated_at", Double(), default=_now),
)

#: Several branches started at once from one node, judged by ``strategy``.
GROUPS_TABLE: Final = Table(
    "racing_groups", METADATA,
    _col("id", String(), primary_key=True),
    _run_fk("parent_run_id"),
    _col("from_node", String()),
    _col("strategy", String()),
    _col("status", String(), default="running"),
    _run_fk("winner_run_id", nullable=True, ondelete="SET NULL"),
    _col("budget_usd", Double(), null=True),
    _col("created_at", Double(), default=_now),
    Index(None, "parent_run_id"),
)

#: Why a run is a branch: where it starts, its name and hypothesis, its racing group.
BRANCHES_TABLE: Final = Table(
    "branches", METADATA,
    _run_fk("run_id", primary_key=True),
    _run_fk("parent_run_id"),
    _col("from_node", String()),
    _col("name", String(), null=True),
    _col("hypothesis", Text(), null=True),
    Column("racing_group_id", String(), ForeignKey("racing_groups.id", ondelete="SET NULL"),
           nullable=True),
    _col("status", String(), default="running"),
    Index(None, "parent_run_id"),
    Index(None, "racing_group_id"),
)

#: Answers posted for a run another process drives (``isolane answer``, a second service): the
#: run's owner delivers each to its worker and settles the row (``settled_at``, ``refused`` with
#: the reason, or ``NULL`` once delivered); a settled answer's text is erased (it may be a password).
ANSWERS_TABLE: Final = Table(
    "posted_answers", METADATA,
    _col("id", _BigId, primary_key=True, autoincrement=True),
    _run_fk("run_id"),
    _col("request_id", String()),
    _col("text", Text()),
    _col("source", String()),
    _col("posted_at", Double(), default=_now),
    _col("settled_at", Double(), null=True),
    _col("refused", Text(), null=True),
    Index(None, "run_id", "settled_at"),
)
