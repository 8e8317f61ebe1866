"""Listing runs, in ONE place: the statements behind :meth:`Store.list_runs` and
:meth:`Store.count_events`, and a reader that runs the same statements on a SQLite file with the
standard library alone.

::

    Store.list_runs / count_events ──text(SQL, :params).columns(…)──▶ SQLAlchemy (any backend)
    isolane runs, default SQLite file ──SqliteRunReader──▶ sqlite3: the same SQL, the same rows
         └─ no file, schema not at head, a URL given, any sqlite3 error ─▶ Store.open (as before)

Why a reader without SQLAlchemy: importing SQLAlchemy alone takes about two thirds of the 300 ms
that ``isolane runs`` may take (DESIGN.md, "Performance targets"), and listing runs needs none of
it. The statements are plain SQL with ``:name`` parameters, which SQLAlchemy's ``text()`` and
``sqlite3`` both bind, so the Store and the reader cannot drift apart; the reader only decodes
the JSON columns the way the Store's engine does (:func:`json_loads`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from isolane.tracking._migrate import HEAD_REVISION, REVISION_QUERY
from isolane.tracking.rows import RunRow, columns_of

if TYPE_CHECKING:
    from isolane.tracking.store import Store

__all__ = [
    "RUN_FIELDS",
    "RUN_JSON_FIELDS",
    "RunLister",
    "SqliteRunReader",
    "count_events_query",
    "json_loads",
    "list_runs_query",
]

logger = logging.getLogger(__name__)

#: The ``runs`` columns a :class:`RunRow` holds, in its field order.
RUN_FIELDS: Final = columns_of(RunRow)
#: The ``runs`` columns of JSON type (a test checks them against the models).
RUN_JSON_FIELDS: Final = frozenset({"config", "meta", "result"})
#: Seconds a read waits for a writer's lock, as the Store's ``busy_timeout``.
_BUSY_TIMEOUT_S: Final = 10.0


def json_loads(value: Any) -> Any:
    """A stored JSON column's value: SQLite hands a number back as a number (NUMERIC affinity),
    not as text, and SQL ``NULL`` as ``None``."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _in(column: str, values: Sequence[str], params: dict[str, Any]) -> str:
    """``column IN (:column_0, …)`` with the values added to ``params`` (false when empty)."""
    if not values:
        return "1 = 0"
    names = [f"{column}_{i}" for i in range(len(values))]
    params.update(zip(names, values, strict=True))
    return f"{column} IN ({', '.join(':' + name for name in names)})"


def list_runs_query(*, limit: int, status: str | Sequence[str] | None = None,
                    parent_run_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(sql, params)``: runs' :data:`RUN_FIELDS`, newest first, optionally only those with
    ``status`` (one or several) or the children of ``parent_run_id``, at most ``limit``."""
    params: dict[str, Any] = {"limit": limit}
    where = []
    if status is not None:
        where.append(_in("status", [status] if isinstance(status, str) else list(status), params))
    if parent_run_id is not None:
        where.append("parent_run_id = :parent_run_id")
        params["parent_run_id"] = parent_run_id
    sql = (f"SELECT {', '.join(RUN_FIELDS)} FROM runs"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY created_at DESC, id DESC LIMIT :limit")
    return sql, params


def count_events_query(run_id: str, *, types: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """``(sql, params)``: how many events of the run are stored (only of ``types`` when given)."""
    params: dict[str, Any] = {"run_id": run_id}
    sql = "SELECT count(*) FROM events WHERE run_id = :run_id"
    if types is not None:
        sql += f" AND {_in('type', list(types), params)}"
    return sql, params


class RunLister(Protocol):
    """What listing runs needs of a store: :class:`Store` and :class:`SqliteRunReader` both are."""

    def list_runs(self, *, limit: int = 50, status: str | Sequence[str] | None = None,
                  parent_run_id: str | None = None) -> list[RunRow]: ...

    def count_events(self, run_id: str, *, types: Sequence[str] | None = None) -> int: ...

    def close(self) -> None: ...


class SqliteRunReader:
    """Lists runs of the SQLite file ``<home>/isolane.db`` through ``sqlite3`` (reads only).

    :meth:`open` gives ``None`` when the reader cannot serve (no file, a schema not at head that
    :meth:`Store.open` would migrate, a file SQLite cannot read): the caller then opens the Store,
    which says what is wrong as it always did. A read that fails later (a lock held past the
    busy timeout, an I/O error) is done again by a Store opened on the spot, so its error is the
    Store's too.
    """

    def __init__(self, connection: sqlite3.Connection, home: Path) -> None:
        self._connection = connection
        self._home = home
        self._store: Store | None = None

    @classmethod
    def open(cls, home: Path) -> SqliteRunReader | None:
        from isolane import settings

        path = settings.default_db_file(home)
        if not path.is_file():
            return None
        try:
            # mode=rw: like the Store (a WAL file may need recovering) but never creating a file.
            connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True,
                                         timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error:
            logger.debug("cannot open %s with sqlite3", path, exc_info=True)
            return None
        try:
            revisions = [row[0] for row in connection.execute(REVISION_QUERY)]
        except sqlite3.Error:
            logger.debug("cannot read the schema revision of %s", path, exc_info=True)
            revisions = []
        if revisions != [HEAD_REVISION]:
            connection.close()
            return None
        return cls(connection, home)

    def _fall_back(self, error: sqlite3.Error) -> Store:
        """The Store, opened on the first failed read."""
        if self._store is None:
            from isolane.tracking.store import Store

            logger.debug("sqlite3 read failed; reading through the Store", exc_info=error)
            self._store = Store.open(None, home=self._home)
        return self._store

    def list_runs(self, *, limit: int = 50, status: str | Sequence[str] | None = None,
                  parent_run_id: str | None = None) -> list[RunRow]:
        """As :meth:`Store.list_runs`."""
        if self._store is not None:
            return self._store.list_runs(limit=limit, status=status, parent_run_id=parent_run_id)
        sql, params = list_runs_query(limit=limit, status=status, parent_run_id=parent_run_id)
        try:
            rows = self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            return self._fall_back(exc).list_runs(limit=limit, status=status, parent_run_id=parent_run_id)
        return [RunRow(**{name: json_loads(value) if name in RUN_JSON_FIELDS else value
                          for name, value in zip(RUN_FIELDS, row, strict=True)})
                for row in rows]

    def count_events(self, run_id: str, *, types: Sequence[str] | None = None) -> int:
        """As :meth:`Store.count_events`."""
        if self._store is not None:
            return self._store.count_events(run_id, types=types)
        sql, params = count_events_query(run_id, types=types)
        try:
            (count,) = self._connection.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            return self._fall_back(exc).count_events(run_id, types=types)
        return int(count)

    def close(self) -> None:
        """Close the connection (and the Store, if a failed read opened one)."""
        self._connection.close()
        if self._store is not None:
            self._store.close()
