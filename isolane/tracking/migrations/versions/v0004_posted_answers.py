"""Answers posted for a run another process drives (``isolane answer``).

Revision ID: 0004
Revises: 0003
Create Date: 2027-02-02

A human-input request could be answered only by the process driving the run (its control pipe
reaches the worker). ``posted_answers`` is the durable hand-over: any process posts a row, the
run's owner delivers it and settles the row (see :mod:`isolane.tracking.answers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``posted_answers``."""
    op.create_table(
        "posted_answers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("posted_at", sa.Double(), nullable=False),
        sa.Column("settled_at", sa.Double(), nullable=True),
        sa.Column("refused", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_posted_answers_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posted_answers")),
    )
    op.create_index(op.f("ix_posted_answers_run_id_settled_at"), "posted_answers",
                    ["run_id", "settled_at"])


def downgrade() -> None:
    """Drop ``posted_answers`` (answers not yet delivered are lost with it)."""
    op.drop_table("posted_answers")
