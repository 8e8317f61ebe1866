"""Every column that holds an event ``seq`` is 64-bit, as the wire allows (``1 <= seq < 2**63``).

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12

``events.seq`` was already ``BIGINT``; ``runs.last_seq``, ``llm_calls.seq``, ``files.seq`` and
``session_states.seq`` were 32-bit ``INTEGER`` on PostgreSQL, so an event with ``seq >= 2**31``
was refused (``integer out of range``) although the decoder had accepted it.

SQLite stores every integer in up to 8 bytes whatever the declared type (``INTEGER`` affinity),
so its columns already hold 64-bit values and nothing changes there: rebuilding ``runs`` would
also be unsafe, since dropping it with foreign keys on cascades into every table that refers to
it. The models declare these columns ``BIGINT`` with an ``INTEGER`` variant on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, column) of every seq column that was 32-bit.
_SEQ_COLUMNS = (("runs", "last_seq"), ("llm_calls", "seq"), ("files", "seq"),
                ("session_states", "seq"))


def upgrade() -> None:
    """Widen the seq columns to ``BIGINT`` (PostgreSQL; SQLite integers are 64-bit already)."""
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _SEQ_COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)


def downgrade() -> None:
    """Back to 32-bit columns; fails (and changes nothing) when a stored seq does not fit."""
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _SEQ_COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False)
