"""Bring a database to the newest schema: the Alembic migrations shipped in this package.

The migrations in ``isolane/tracking/migrations/`` are the only way tables come to exist.
:func:`upgrade` runs them on a connection the caller has already opened a transaction on, after
the backend's migration lock is taken (SQLite: the ``BEGIN IMMEDIATE`` write lock; PostgreSQL: a
transaction-scoped advisory lock), so processes opening the same fresh database at once
migrate it one after the other: the first creates the tables, the others find them at head.

To write a new revision against a scratch database::

    from alembic import command
    from isolane.tracking._migrate import alembic_config
    # with an open connection `conn` on a database migrated to head:
    command.revision(alembic_config(conn), message="…", autogenerate=True)
"""

from __future__ import annotations

import logging
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

__all__ = ["SCRIPT_LOCATION", "VERSION_TABLE", "alembic_config", "upgrade"]

logger = logging.getLogger(__name__)

#: Where the migration scripts live, as an importlib resource (works from a wheel or a checkout).
SCRIPT_LOCATION: Final = "isolane.tracking:migrations"

#: isolane's own version table, so a service keeping its own Alembic history in the same
#: PostgreSQL database (``alembic_version``) does not collide with it.
VERSION_TABLE: Final = "isolane_alembic_version"


def alembic_config(connection: Connection) -> Config:
    """An Alembic :class:`Config` built in code that runs on ``connection`` (no ``alembic.ini``)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Migrate to head inside the caller's open transaction (the caller commits)."""
    command.upgrade(alembic_config(connection), "head")
