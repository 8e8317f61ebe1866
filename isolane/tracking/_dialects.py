"""What differs between database backends, one :class:`Backend` per dialect, chosen by name.

:data:`DIALECTS` maps a SQLAlchemy dialect name to the few things that differ: engine options,
connection set-up, the hot-path event insert, the "insert, ignore duplicates" statement and the
lock that serializes migrations. Everything else in :mod:`isolane.tracking` is portable Core.

* **SQLite** — ``PRAGMA`` set-up on every new connection; SQLAlchemy emits ``BEGIN`` itself
  (``BEGIN IMMEDIATE`` for writes, so a writer takes the lock up front and waits
  ``busy_timeout`` instead of failing on a read-to-write upgrade); events go in through the
  ``sqlite3`` cursor, up to 128 rows per ``INSERT OR IGNORE`` statement; migrations are
  serialized by the ``BEGIN IMMEDIATE`` write lock itself.
* **PostgreSQL** (psycopg 3) — events go in as one ``INSERT … SELECT FROM unnest(arrays) ON
  CONFLICT DO NOTHING`` (one round trip per batch); migrations hold a transaction-scoped
  advisory lock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.dml import Insert

from isolane.errors import ConfigError, StoreUnavailable
from isolane.schemas.envelope import EventRow

__all__ = ["DIALECTS", "WRITE_OPTION", "Backend"]

logger = logging.getLogger(__name__)


#: Execution option marking a connection that will write (SQLite then begins ``IMMEDIATE``).
WRITE_OPTION: Final = "isolane_write"

_EVENT_COLUMNS: Final = "run_id, seq, ts, type, node_id, data"


@dataclass(frozen=True, slots=True)
class Backend:
    """The dialect-specific half of the store; see the module docstring for each backend."""

    #: SQLAlchemy dialect name (``url.get_backend_name()``).
    name: str
    #: The one driver isolane uses for this backend.
    driver: str
    #: Checks and completes a URL of this backend (raises ConfigError when it cannot be used).
    normalize_url: Callable[[URL], URL]
    #: Creates what must exist before connecting (raises StoreUnavailable when it cannot).
    create_location: Callable[[URL], None]
    #: Extra :func:`sqlalchemy.create_engine` keyword arguments for a URL.
    engine_options: Callable[[URL], dict[str, Any]]
    #: Installs event listeners on a new engine.
    prepare: Callable[[Engine], None]
    #: Inserts events, ignoring ``(run_id, seq)`` duplicates; returns how many rows were new.
    insert_events: Callable[[Connection, Sequence[EventRow]], int]
    #: ``INSERT`` into a table that skips rows conflicting on the given unique columns.
    insert_ignore: Callable[[Table, Sequence[str]], Insert]
    #: Takes the migration lock inside the current transaction.
    lock_migrations: Callable[[Connection], None]


# -- SQLite ----------------------------------------------------------------------------------------

_SQLITE_PRAGMAS: Final = (
    # busy_timeout first: switching to WAL needs the lock another process may hold.
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
#: Rows per ``INSERT`` statement, largest first: a batch goes in as few statements as these sizes
#: make up, each compiled once and kept in the connection's statement cache. 128 rows are 768
#: parameters: below 999, the limit of SQLite before 3.32 (Ubuntu 20.04's, for one).
_SQLITE_ROWS_PER_INSERT: Final = (128, 16, 4, 1)
_SQLITE_INSERT_EVENTS: Final = {
    rows: f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) VALUES "
          + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    for rows in _SQLITE_ROWS_PER_INSERT
}


def _sqlite_normalize_url(url: URL) -> URL:
    if url.database in (None, "", ":memory:") or url.database.startswith("file::memory:"):
        raise ConfigError(
            "an in-memory SQLite database cannot be shared by the store's threads; give a file, "
            "e.g. sqlite:///.isolane/isolane.db")
    return url.set(database=str(Path(url.database).expanduser().absolute()))


def _sqlite_create_location(url: URL) -> None:
    path = Path(str(url.database))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the directory of the SQLite database {path}: {exc.strerror or exc}; "
            "choose another location (--db / $ISOLANE_DB_URL / home)") from None


def _sqlite_engine_options(url: URL) -> dict[str, Any]:
    # The pool hands connections to whichever thread asks; each is used by one thread at a time.
    return {"connect_args": {"check_same_thread": False}}


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the sqlite3 module (it skips it for DDL and SELECT); _sqlite_begin
    # emits it instead, so migrations are transactional and reads are repeatable.
    dbapi_connection.isolation_level = None
    for pragma in _SQLITE_PRAGMAS:
        dbapi_connection.execute(pragma)


def _sqlite_begin(conn: Connection) -> None:
    writes = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _sqlite_prepare(engine: Engine) -> None:
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)


def _sqlite_insert_events(conn: Connection, events: Sequence[EventRow]) -> int:
    """Insert through the driver's cursor, many rows per statement.

    ``executemany`` steps the statement once per row, and the ``sqlite3`` module lets go of the
    GIL around every step: with the event loop busy on the same GIL, each row then waits for it
    again, up to a switch interval. A statement of 128 rows is bound in one C loop and stepped
    once, so the insert runs mostly outside the GIL (and about 1.5x faster alone). No per-row
    work in SQLAlchemy either; errors are wrapped as SQLAlchemy would wrap them (the store
    tells an outage from a refused row by those types).
    """
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    inserted = at = 0
    sql = _SQLITE_INSERT_EVENTS[1]
    try:
        for rows in _SQLITE_ROWS_PER_INSERT:
            sql = _SQLITE_INSERT_EVENTS[rows]
            while len(events) - at >= rows:
                cursor.execute(sql, list(chain.from_iterable(events[at:at + rows])))
                inserted += cursor.rowcount
                at += rows
        return inserted
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
    except (OverflowError, TypeError, ValueError) as exc:  # a value sqlite3 cannot bind
        raise StatementError(str(exc), sql, None, exc) from exc
    finally:
        cursor.close()


def _sqlite_insert_ignore(table: Table, keys: Sequence[str]) -> Insert:
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))


def _sqlite_lock_migrations(conn: Connection) -> None:
    """Nothing to add: the migration transaction began ``IMMEDIATE`` and holds the write lock."""


SQLITE: Final = Backend(
    name="sqlite",
    driver="pysqlite",
    normalize_url=_sqlite_normalize_url,
    create_location=_sqlite_create_location,
    engine_options=_sqlite_engine_options,
    prepare=_sqlite_prepare,
    insert_events=_sqlite_insert_events,
    insert_ignore=_sqlite_insert_ignore,
    lock_migrations=_sqlite_lock_migrations,
)


# -- PostgreSQL ------------------------------------------------------------------------------------

_PG_INSERT_EVENTS: Final = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) "
    "SELECT r, s, t, y, n, d::jsonb FROM unnest("
    "%s::text[], %s::bigint[], %s::float8[], %s::text[], %s::text[], %s::text[]) AS u(r, s, t, y, n, d) "
    "ON CONFLICT (run_id, seq) DO NOTHING"
)
#: Key of the advisory lock that serializes migrations; fixed, so every isolane version agrees.
_PG_MIGRATION_LOCK_KEY: Final = 0x1501A4E0001


def _pg_normalize_url(url: URL) -> URL:
    return url


def _pg_create_location(url: URL) -> None:
    """Nothing: the server and its database must exist (isolane creates only tables)."""


def _pg_engine_options(url: URL) -> dict[str, Any]:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    # pre_ping: a long-lived parent outlives server restarts and idle-connection reapers.
    return {"pool_pre_ping": True, "connect_args": connect_args}


def _pg_prepare(engine: Engine) -> None:
    """Nothing to install: psycopg 3 begins transactions the PEP 249 way."""


def _pg_insert_events(conn: Connection, events: Sequence[EventRow]) -> int:
    columns = tuple(list(column) for column in zip(*events, strict=True))
    result = conn.exec_driver_sql(_PG_INSERT_EVENTS, columns)
    return int(result.rowcount)


def _pg_insert_ignore(table: Table, keys: Sequence[str]) -> Insert:
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))


def _pg_lock_migrations(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})


POSTGRESQL: Final = Backend(
    name="postgresql",
    driver="psycopg",
    normalize_url=_pg_normalize_url,
    create_location=_pg_create_location,
    engine_options=_pg_engine_options,
    prepare=_pg_prepare,
    insert_events=_pg_insert_events,
    insert_ignore=_pg_insert_ignore,
    lock_migrations=_pg_lock_migrations,
)

#: Every supported backend by dialect name.
DIALECTS: Final[dict[str, Backend]] = {backend.name: backend for backend in (SQLITE, POSTGRESQL)}
