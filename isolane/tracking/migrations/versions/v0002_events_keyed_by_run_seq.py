"""The event log keyed by ``(run_id, seq)``: no surrogate id, no ``(run_id, type)`` index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Measured on the hot path (SQLite, 1000-row transactions): the surrogate rowid plus the unique
index plus the type index cost 40 % of the insert rate. Keying the table by ``(run_id, seq)``
(``WITHOUT ROWID`` on SQLite, a clustered-order primary key elsewhere) keeps one B-tree per
event. Lookups by type within a run scan that run's key range; the per-type tables (LLM calls,
files, DAG) serve the frequent typed queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

__all__ = ["downgrade", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON: Any = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_COLUMNS = "run_id, seq, ts, type, node_id, data"


def _events_table(name: str, **kwargs: Any) -> None:
    op.create_table(
        name,
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_events")),
        **kwargs,
    )


def upgrade() -> None:
    """Rebuild ``events`` keyed by ``(run_id, seq)``, keeping every row."""
    op.rename_table("events", "events_0001")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events_0001 RENAME CONSTRAINT pk_events TO pk_events_0001")
        op.execute("ALTER TABLE events_0001 RENAME CONSTRAINT fk_events_run_id_runs TO fk_events_0001_run_id_runs")
        op.execute("ALTER INDEX uq_events_run_id_seq RENAME TO uq_events_0001_run_id_seq")
        op.execute("ALTER INDEX ix_events_run_id_type RENAME TO ix_events_0001_run_id_type")
    else:
        op.drop_index("ix_events_run_id_type", table_name="events_0001")
    _events_table("events", sqlite_with_rowid=False)
    op.execute(f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_0001")
    op.drop_table("events_0001")


def downgrade() -> None:
    """Back to a surrogate id with a unique ``(run_id, seq)`` and a ``(run_id, type)`` index."""
    op.rename_table("events", "events_0002")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events_0002 RENAME CONSTRAINT pk_events TO pk_events_0002")
        op.execute("ALTER TABLE events_0002 RENAME CONSTRAINT fk_events_run_id_runs TO fk_events_0002_run_id_runs")
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_events_run_id_seq")),
    )
    op.create_index(op.f("ix_events_run_id_type"), "events", ["run_id", "type"])
    op.execute(f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_0002 ORDER BY run_id, seq")
    op.drop_table("events_0002")
