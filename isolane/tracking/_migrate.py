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
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

__all__ = ["HEAD_REVISION", "REVISION_QUERY", "SCRIPT_LOCATION", "VERSION_TABLE", "alembic_config", "at_head",
           "upgrade"]

logger = logging.getLogger(__name__)

#: Where the migration scripts live, as an importlib resource (works from a wheel or a checkout).
SCRIPT_LOCATION: Final = "isolane.tracking:migrations"

#: isolane's own version table, so a service keeping its own Alembic history in the same
#: PostgreSQL database (``alembic_version``) does not collide with it.
VERSION_TABLE: Final = "isolane_alembic_version"

#: The newest revision shipped (a test checks it against the migration scripts): a database
#: already there is opened without loading Alembic at all.
HEAD_REVISION: Final = "0004"
#: The one query telling the schema's revision (this module imports no SQLAlchemy at load, so a
#: reader without it, :mod:`isolane.tracking.listing`, asks the same question).
REVISION_QUERY: Final = f"SELECT version_num FROM {VERSION_TABLE}"


def at_head(engine: Engine) -> bool:
    """Whether the database's schema is :data:`HEAD_REVISION` (one plain query, no Alembic);
    ``False`` when it cannot tell (no version table yet, or the query failed)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as conn:
            found = conn.execute(text(REVISION_QUERY)).scalars().all()
    except DBAPIError:
        return False
    return found == [HEAD_REVISION]


def alembic_config(connection: Connection) -> Config:
    """An Alembic :class:`Config` built in code that runs on ``connection`` (no ``alembic.ini``)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Migrate to head inside the caller's open transaction (the caller commits)."""
    from alembic import command

    command.upgrade(alembic_config(connection), "head")
