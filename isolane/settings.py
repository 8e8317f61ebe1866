"""Every ``ISOLANE_*`` environment variable, named once and read in one place, typed.

=============================  ====================================================================
``ISOLANE_HOME``               isolane's directory: runs' work dirs, blobs, the default database
                               (default ``./.isolane``)
``ISOLANE_DB_URL``             the database (default: the SQLite file ``<home>/isolane.db``)
``ISOLANE_BACKEND``            where workers run: ``local`` (default) or ``ray``
``ISOLANE_HOST_ID``            names this host in a run's owner stamp (containers, pods)
``ISOLANE_RAY_ADDRESS``        the Ray cluster to join (``auto``: a local ``ray start``)
``ISOLANE_RAY_POOL``           warm Ray relays to keep ready (default 0)
``ISOLANE_TOKEN``              the bearer token ``isolane serve`` requires (none when unset)
``ISOLANE_OFFLINE_LLM_URL``    where an offline workflow's scripted LLM answers (set by the CLI)
=============================  ====================================================================

Each reader is a function, called when the value is needed: a variable set after import (a
test, an embedding service) is seen. An empty value counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from isolane.errors import ConfigError

__all__ = [
    "BACKEND_ENV",
    "DB_FILENAME",
    "DB_URL_ENV",
    "DEFAULT_BACKEND",
    "DEFAULT_HOME",
    "DEFAULT_SHUTDOWN_GRACE",
    "HOME_ENV",
    "HOST_ID_ENV",
    "OFFLINE_LLM_URL_ENV",
    "RAY_ADDRESS_ENV",
    "RAY_POOL_ENV",
    "SHUTDOWN_GRACE_ENV",
    "TOKEN_ENV",
    "backend",
    "db_url",
    "default_db_file",
    "home",
    "host_id",
    "offline_llm_url",
    "ray_address",
    "ray_pool",
    "shutdown_grace",
    "token",
]

HOME_ENV: Final = "ISOLANE_HOME"
DB_URL_ENV: Final = "ISOLANE_DB_URL"
BACKEND_ENV: Final = "ISOLANE_BACKEND"
HOST_ID_ENV: Final = "ISOLANE_HOST_ID"
RAY_ADDRESS_ENV: Final = "ISOLANE_RAY_ADDRESS"
RAY_POOL_ENV: Final = "ISOLANE_RAY_POOL"
TOKEN_ENV: Final = "ISOLANE_TOKEN"
SHUTDOWN_GRACE_ENV: Final = "ISOLANE_SHUTDOWN_GRACE"
OFFLINE_LLM_URL_ENV: Final = "ISOLANE_OFFLINE_LLM_URL"

#: Default directory of runs and of the embedded SQLite database (relative to the working dir).
DEFAULT_HOME: Final = Path(".isolane")
DEFAULT_BACKEND: Final = "local"
#: The embedded SQLite database's file name, in the home.
DB_FILENAME: Final = "isolane.db"
#: Seconds a closing executor waits for an unreachable database (its events stay in the spools).
DEFAULT_SHUTDOWN_GRACE: Final = 30.0


def _get(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None


def home(environ: Mapping[str, str] | None = None) -> Path:
    """``$ISOLANE_HOME``, else :data:`DEFAULT_HOME`."""
    value = _get(HOME_ENV, environ)
    return Path(value) if value is not None else DEFAULT_HOME


def db_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``$ISOLANE_DB_URL`` (``None``: the SQLite file in the home)."""
    return _get(DB_URL_ENV, environ)


def default_db_file(home: Path | str | None = None) -> Path:
    """The SQLite file used when no database URL is given: :data:`DB_FILENAME` in ``home``
    (default :data:`DEFAULT_HOME`)."""
    return (Path(home) if home is not None else DEFAULT_HOME) / DB_FILENAME


def backend(environ: Mapping[str, str] | None = None) -> str:
    """``$ISOLANE_BACKEND``, else :data:`DEFAULT_BACKEND`."""
    return _get(BACKEND_ENV, environ) or DEFAULT_BACKEND


def host_id(environ: Mapping[str, str] | None = None) -> str | None:
    """``$ISOLANE_HOST_ID`` (``None``: derive the host's identity)."""
    return _get(HOST_ID_ENV, environ)


def ray_address(environ: Mapping[str, str] | None = None) -> str | None:
    """``$ISOLANE_RAY_ADDRESS`` (``None``: start a local Ray cluster)."""
    return _get(RAY_ADDRESS_ENV, environ)


def ray_pool(environ: Mapping[str, str] | None = None) -> int:
    """``$ISOLANE_RAY_POOL`` as a number of relays (default 0); raises :class:`ConfigError`."""
    raw = _get(RAY_POOL_ENV, environ)
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{RAY_POOL_ENV}={raw!r} is not a number of relays") from None


def shutdown_grace(environ: Mapping[str, str] | None = None) -> float:
    """``$ISOLANE_SHUTDOWN_GRACE`` in seconds, else :data:`DEFAULT_SHUTDOWN_GRACE`; raises
    :class:`ConfigError`."""
    raw = _get(SHUTDOWN_GRACE_ENV, environ)
    if raw is None:
        return DEFAULT_SHUTDOWN_GRACE
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{SHUTDOWN_GRACE_ENV}={raw!r} is not a number of seconds") from None
    if not seconds >= 0:  # NaN too
        raise ConfigError(f"{SHUTDOWN_GRACE_ENV} cannot be negative, got {raw!r}")
    return seconds


def token(environ: Mapping[str, str] | None = None) -> str | None:
    """``$ISOLANE_TOKEN`` (``None``: no token required)."""
    return _get(TOKEN_ENV, environ)


def offline_llm_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``$ISOLANE_OFFLINE_LLM_URL`` (``None``: the worker serves its offline script itself)."""
    return _get(OFFLINE_LLM_URL_ENV, environ)
