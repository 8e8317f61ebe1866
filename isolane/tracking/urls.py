"""Database URLs: where the store lives by default, which URLs are accepted, how they are shown.

Resolution order of :func:`resolve_url`: an explicit URL, else ``$ISOLANE_DB_URL``, else the
SQLite file ``<home>/isolane.db`` with ``home`` defaulting to ``./.isolane``.

Accepted: ``sqlite:///<path>`` and ``postgresql+psycopg://…`` (``postgresql://`` and
``postgres://`` are rewritten to use psycopg 3). Anything else is a :class:`ConfigError` that
states the accepted forms. Passwords never appear in messages: use :func:`display_url`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from isolane import settings
from isolane.errors import ConfigError
from isolane.tracking._dialects import DIALECTS

__all__ = ["DB_FILENAME", "DEFAULT_HOME", "ENV_URL", "display_url", "normalize_url", "resolve_url"]

#: Environment variable naming the database when no URL is given.
ENV_URL: Final = settings.DB_URL_ENV
#: Default directory of the embedded SQLite database (relative to the working directory).
DEFAULT_HOME: Final = settings.DEFAULT_HOME
DB_FILENAME: Final = settings.DB_FILENAME

_ACCEPTED: Final = "sqlite:///path/to/isolane.db or postgresql+psycopg://user:password@host:5432/dbname"
_ALIASES: Final = {"postgres": "postgresql"}


def display_url(url: URL) -> str:
    """The URL as text with its password masked (safe for messages and logs)."""
    return url.render_as_string(hide_password=True)


def resolve_url(url: str | URL | None = None, *, home: Path | str | None = None) -> URL:
    """The database URL to use: ``url``, else ``$ISOLANE_DB_URL``, else ``<home>/isolane.db``.

    Raises :class:`ConfigError` for a malformed or unsupported URL.
    """
    if url is None:
        url = settings.db_url()
    if url is None:
        url = URL.create("sqlite", database=str(settings.default_db_file(home)))
    return normalize_url(url)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pin the driver isolane uses for its backend.

    Raises :class:`ConfigError` naming the accepted forms when ``url`` cannot be parsed, names
    an unsupported backend or driver, or is refused by its backend (an in-memory SQLite
    database). A SQLite path is made absolute, so the store's later connections open the same
    file whatever the working directory becomes.
    """
    if isinstance(url, str):
        raw = url.strip()
        try:
            url = make_url(raw)
        except ArgumentError:
            raise ConfigError(
                f"cannot parse database URL {_masked_text(raw)!r}; expected {_ACCEPTED} "
                f"(check --db / ${ENV_URL})") from None
    backend_name = _ALIASES.get(url.get_backend_name(), url.get_backend_name())
    backend = DIALECTS.get(backend_name)
    if backend is None:
        raise ConfigError(
            f"unsupported database {url.get_backend_name()!r} in {display_url(url)}; isolane "
            f"stores runs in {' or '.join(sorted(DIALECTS))}: {_ACCEPTED}")
    driver = url.get_driver_name() if "+" in url.drivername else backend.driver
    if driver != backend.driver:
        raise ConfigError(
            f"database driver {driver!r} of {display_url(url)} is not supported; isolane uses "
            f"{backend.name}+{backend.driver}: {_ACCEPTED}")
    return backend.normalize_url(url.set(drivername=f"{backend.name}+{backend.driver}"))


def _masked_text(text: str) -> str:
    """Mask what looks like the password of an unparseable URL (``scheme://user:secret@host``)."""
    scheme, sep, rest = text.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return text
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
