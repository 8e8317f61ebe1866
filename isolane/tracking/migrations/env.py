"""Alembic environment of isolane's schema: online only, on a connection handed in by code.

:func:`isolane.tracking._migrate.upgrade` passes the connection (already in a transaction, with
the migration lock held) through ``config.attributes["connection"]``; the DDL runs inside that
transaction, which the caller commits.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from isolane.tracking._migrate import VERSION_TABLE
from isolane.tracking.models import METADATA

__all__: list[str] = []


def run_migrations_online(connection: Connection) -> None:
    """Run the pending migrations on ``connection``."""
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        # SQLite can only ALTER much through "move and copy"; batch mode renders that.
        render_as_batch=True,
        # SQLite's DDL is transactional too: keep the whole upgrade in the caller's transaction.
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("isolane migrations run online only (Store.open runs them)")
_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError(
        "isolane migrations need a connection in config.attributes['connection']; "
        "open the database with isolane.tracking.Store.open, which migrates it")
run_migrations_online(_connection)
