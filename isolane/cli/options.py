"""Options every command shares (``--db``, ``--home``, ``--json``) and the parsing of their values.

``--config k=v`` items become one nested mapping (:func:`parse_config`); ``--db``/``--home``
become a :class:`Location` that opens the store for the read-only commands (:func:`open_store`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from isolane import settings
from isolane.cli.console import fail

if TYPE_CHECKING:
    from isolane.tracking.listing import RunLister
    from isolane.tracking.store import Store

__all__ = [
    "DbOption",
    "HomeOption",
    "JsonOption",
    "Location",
    "RunArg",
    "open_lister",
    "open_store",
    "parse_config",
]


#: A run named on the command line: an id or a unique prefix of one.
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="A run id or a unique prefix of one.")]
DbOption = Annotated[
    str | None,
    typer.Option("--db", metavar="URL", envvar=settings.DB_URL_ENV, show_envvar=True,
                 help="Database URL (sqlite:///path or postgresql+psycopg://…); "
                      "default: the SQLite file in --home."),
]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", metavar="DIR", envvar=settings.HOME_ENV, show_envvar=True,
                 help=f"isolane's directory (runs' work dirs, default database); default {settings.DEFAULT_HOME}.",
                 file_okay=False),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Machine output: JSON only on stdout."),
]


@dataclass(frozen=True, slots=True)
class Location:
    """Where runs are stored: an explicit database URL (or ``None``) and the home directory."""

    db: str | None
    home: Path

    @classmethod
    def of(cls, db: str | None, home: Path | None) -> Location:
        return cls(db=db or None, home=home or settings.home())


@contextmanager
def open_store(location: Location) -> Iterator[Store]:
    """Open the store that already holds runs; a missing SQLite file is a usage error.

    Reading never creates a database: a wrong ``--home`` should say so, not show an empty one.
    """
    from isolane.tracking.store import Store
    from isolane.tracking.urls import resolve_url

    url = resolve_url(location.db, home=location.home)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        fail(f"no isolane database at {url.database!r}; pass the --home (or --db) where the runs "
             "were stored, or start one with `run-isolated TASK --workflow W`")
    store = Store.open(location.db, home=location.home)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_lister(location: Location) -> Iterator[RunLister]:
    """What lists runs: on the default SQLite file (no --db, no $ISOLANE_DB_URL) a reader that
    needs no SQLAlchemy (see :mod:`isolane.tracking.listing`), else :func:`open_store`'s Store."""
    from isolane.tracking.listing import SqliteRunReader

    reader = SqliteRunReader.open(location.home) if location.db is None and settings.db_url() is None else None
    if reader is None:
        with open_store(location) as store:
            yield store
        return
    with closing(reader):
        yield reader


# -- --config ---------------------------------------------------------------------------------


def _value(text: str) -> Any:
    """JSON when ``text`` parses as JSON (numbers, true/false/null, lists, objects, "…"), else
    the raw string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_config(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``k=v`` items into a mapping; ``k.sub=v`` nests, a later item overrides an earlier one.

    A malformed item (no ``=``, an empty key or key part, a key used both as a value and as a
    table) is a usage error naming the item.
    """
    config: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            fail(f"--config {item!r} has no '=': give key=value, e.g. --config model=gpt-4o-mini "
                 "--config retries=3 --config llm.temperature=0.2")
        parts = key.strip().split(".")
        if not all(parts):
            fail(f"--config {item!r} has an empty key part: keys are name or name.sub")
        table = config
        for depth, part in enumerate(parts[:-1]):
            inner = table.setdefault(part, {})
            if not isinstance(inner, dict):
                fail(f"--config {item!r}: {'.'.join(parts[:depth + 1])!r} is already set to a "
                     "value, it cannot also hold sub-keys")
            table = inner
        value = _value(raw)
        if isinstance(table.get(parts[-1]), dict) and not isinstance(value, dict):
            fail(f"--config {item!r}: {key.strip()!r} already holds sub-keys, it cannot also be "
                 "a plain value")
        table[parts[-1]] = value
    return config
