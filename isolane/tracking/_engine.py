"""Connecting: from a URL to a migrated engine, and transactions that fail in isolane's terms.

::

    url ─resolve_url─▶ URL ─DIALECTS[name]─▶ Backend
        ─create_location─▶ (SQLite: the file's directory)
        ─create_engine + Backend.prepare─▶ Engine
        ─at head already (one plain query)?─▶ done (no lock, no Alembic)
        ─else: write transaction + Backend.lock_migrations─▶ Alembic upgrade to head ─▶ commit

Every driver failure met here becomes :class:`StoreUnavailable` (or :class:`ConfigError` for a
URL that cannot be used) with the driver's one-line reason, the password masked and what to do
next; the SQLAlchemy traceback only goes to the debug log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)

from isolane.errors import StoreRefused, StoreUnavailable
from isolane.tracking._dialects import DIALECTS, WRITE_OPTION, Backend
from isolane.tracking._migrate import at_head, upgrade
from isolane.tracking.listing import json_loads
from isolane.tracking.storable import storable_json
from isolane.tracking.urls import ENV_URL, display_url, resolve_url

__all__ = ["open_engine", "transaction"]

logger = logging.getLogger(__name__)


def _json_dumps(value: Any) -> str:
    # Same fallback as the wire encoder: keep the row, render an odd value as its repr. Every
    # JSON column goes through here, so none holds a NUL (see isolane.tracking.storable).
    try:
        text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:  # orjson's JSONEncodeError: nested too deep, an integer too large
        # Raised while a statement binds its values, so the driver may not wrap it: say at
        # once that this value can never be stored.
        raise StoreRefused(f"a JSON value cannot be stored: {exc}",
                           reason=f"the JSON value cannot be encoded ({exc})") from None
    return storable_json(text)


def _reason(exc: StatementError, url: URL) -> str:
    """The driver's own first line, with the password (if any) masked."""
    text = str(exc.orig).strip() if exc.orig is not None else str(exc).strip()
    text = text.splitlines()[0] if text else type(exc.orig or exc).__name__
    return text.replace(url.password, "***") if url.password else text


def open_engine(url: str | URL | None, *, home: Path | str | None) -> tuple[Engine, Backend]:
    """Resolve ``url`` (see :func:`resolve_url`), connect, and migrate the database to head."""
    target = resolve_url(url, home=home)
    backend = DIALECTS[target.get_backend_name()]
    backend.create_location(target)
    engine = create_engine(target, json_serializer=_json_dumps, json_deserializer=json_loads,
                           **backend.engine_options(target))
    backend.prepare(engine)
    if at_head(engine):  # the common case: no migration lock, no Alembic import
        logger.debug("store open at %s", display_url(target))
        return engine, backend
    from alembic.util import CommandError

    try:
        # Any driver error while opening means the store cannot be used (e.g. "file is not a
        # database", permission denied to create tables), not only a lost connection.
        with transaction(engine, write=True, action="open", failures=(DBAPIError,),
                         refusals=False) as conn:
            backend.lock_migrations(conn)
            upgrade(conn)
    except CommandError as exc:
        engine.dispose()
        raise StoreUnavailable(
            f"cannot migrate the database at {display_url(target)}: {exc}; it was probably "
            "written by a newer isolane: upgrade isolane") from None
    except BaseException:
        engine.dispose()
        raise
    logger.debug("store open at %s", display_url(target))
    return engine, backend


#: Driver errors that mean "the database cannot be reached" once the store is open (refused
#: connections, lost ones, a server shutting down, timeouts, locks, a full disk): writing again
#: later can succeed. Programming errors are bugs and propagate as they are.
_UNREACHABLE: tuple[type[DBAPIError], ...] = (OperationalError, InterfaceError)
#: Driver errors about the content written: the same statement can never succeed.
_CONTENT: Final = (DataError, IntegrityError)
#: SQLSTATE classes that psycopg reports as OperationalError but that are about the content
#: ("54": program limit exceeded, e.g. an index row or a jsonb value too large).
_CONTENT_SQLSTATE_CLASSES: Final = frozenset({"54"})


def _refused_for_content(exc: StatementError) -> bool:
    """Whether the database (or the driver, binding a value) refused what was written."""
    if not isinstance(exc, DBAPIError):
        return True  # a value could not be bound at all (a serializer or encoding error)
    if isinstance(exc, _CONTENT):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _CONTENT_SQLSTATE_CLASSES


@contextmanager
def transaction(engine: Engine, *, write: bool, action: str = "use",
                failures: tuple[type[DBAPIError], ...] = _UNREACHABLE,
                refusals: bool = True) -> Iterator[Connection]:
    """A connection in a transaction, committed when the block ends without an exception.

    ``write=True`` marks the connection as a writer (SQLite then takes the write lock at
    ``BEGIN``). With ``refusals``, an error for the content written (a value the database or the
    driver refuses) raises :class:`StoreRefused`; otherwise a driver error of ``failures`` raises
    :class:`StoreUnavailable` saying what to check. Either way nothing of the transaction is kept.
    """
    try:
        with engine.connect() as conn:
            if write:
                conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
    except StatementError as exc:
        url = engine.url
        logger.debug("cannot %s the database at %s", action, display_url(url), exc_info=True)
        reason = _reason(exc, url)
        if isinstance(exc.orig, StoreRefused):  # _json_dumps said so, under SQLAlchemy's wrapper
            raise exc.orig from None
        if refusals and _refused_for_content(exc):
            raise StoreRefused(f"the database at {display_url(url)} refused what was written: "
                               f"{reason}", reason=reason) from None
        if isinstance(exc, failures):
            raise StoreUnavailable(
                f"cannot {action} the database at {display_url(url)}: {reason}; check that it "
                f"is running and reachable and that the URL (--db / ${ENV_URL}) is right") from None
        raise
