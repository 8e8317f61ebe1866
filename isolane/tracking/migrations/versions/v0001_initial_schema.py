"""Initial schema: sessions, runs, the event log, diagnostics, the DAG, LLM calls, files,
session states, branches and racing groups.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

A migration is history: it spells its types out here instead of importing the models, which
keep changing after it is released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

__all__ = ["downgrade", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON: Any = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
# INTEGER PRIMARY KEY aliases SQLite's rowid; PostgreSQL gets 64 bits.
_BIG_ID: Any = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _run_fk(column: str = "run_id", *, ondelete: str = "CASCADE", table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["runs.id"], name=op.f(f"fk_{table}_{column}_runs"), ondelete=ondelete)


def upgrade() -> None:
    """Create every table of the first release."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("meta", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("parent_run_id", sa.String(), nullable=True),
        sa.Column("branch_point_node", sa.String(), nullable=True),
        sa.Column("workflow", sa.String(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("phase", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("heartbeat_at", sa.Double(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_create_time", sa.Double(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("work_dir", sa.String(), nullable=False),
        sa.Column("last_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("meta", _JSON, nullable=False),
        _run_fk("parent_run_id", ondelete="SET NULL", table="runs"),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name=op.f("fk_runs_session_id_sessions"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    for column in ("created_at", "parent_run_id", "session_id", "status"):
        op.create_index(op.f(f"ix_runs_{column}"), "runs", [column])

    op.create_table(
        "events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        _run_fk(table="events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_events_run_id_seq")),
    )
    op.create_index(op.f("ix_events_run_id_type"), "events", ["run_id", "type"])

    op.create_table(
        "diagnostics",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),  # not a foreign key, on purpose
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_diagnostics")),
    )
    op.create_index(op.f("ix_diagnostics_run_id"), "diagnostics", ["run_id"])

    op.create_table(
        "dag_nodes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("node_type", sa.String(), nullable=False),
        sa.Column("parent_node_id", sa.String(), nullable=True),
        sa.Column("depth", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("meta", _JSON, nullable=False),
        sa.Column("position", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _run_fk(table="dag_nodes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dag_nodes")),
        sa.UniqueConstraint("run_id", "node_id", name=op.f("uq_dag_nodes_run_id_node_id")),
    )
    op.create_table(
        "dag_edges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("condition", sa.Text(), nullable=True),
        _run_fk(table="dag_edges"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dag_edges")),
        sa.UniqueConstraint("run_id", "source", "target", "kind",
                            name=op.f("uq_dag_edges_run_id_source_target_kind")),
    )
    op.create_table(
        "llm_calls",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("cost_source", sa.String(), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        _run_fk(table="llm_calls"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_calls")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_llm_calls_run_id_seq")),
    )
    op.create_table(
        "files",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("phase", sa.String(), nullable=True),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        _run_fk(table="files"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_files_run_id_seq")),
    )
    op.create_index(op.f("ix_files_run_id_path"), "files", ["run_id", "path"])

    op.create_table(
        "session_states",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", _JSON, nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        _run_fk(table="session_states"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_session_states")),
    )
    op.create_table(
        "racing_groups",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("parent_run_id", sa.String(), nullable=False),
        sa.Column("from_node", sa.String(), nullable=False),
        sa.Column("strategy", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("winner_run_id", sa.String(), nullable=True),
        sa.Column("budget_usd", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        _run_fk("parent_run_id", table="racing_groups"),
        _run_fk("winner_run_id", ondelete="SET NULL", table="racing_groups"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_racing_groups")),
    )
    op.create_index(op.f("ix_racing_groups_parent_run_id"), "racing_groups", ["parent_run_id"])

    op.create_table(
        "branches",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("parent_run_id", sa.String(), nullable=False),
        sa.Column("from_node", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("hypothesis", sa.Text(), nullable=True),
        sa.Column("racing_group_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        _run_fk(table="branches"),
        _run_fk("parent_run_id", table="branches"),
        sa.ForeignKeyConstraint(["racing_group_id"], ["racing_groups.id"],
                                name=op.f("fk_branches_racing_group_id_racing_groups"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_branches")),
    )
    op.create_index(op.f("ix_branches_parent_run_id"), "branches", ["parent_run_id"])
    op.create_index(op.f("ix_branches_racing_group_id"), "branches", ["racing_group_id"])


def downgrade() -> None:
    """Drop every table (children first); the event log goes with them."""
    for table in ("branches", "racing_groups", "session_states", "files", "llm_calls",
                  "dag_edges", "dag_nodes", "diagnostics", "events", "runs", "sessions"):
        op.drop_table(table)
