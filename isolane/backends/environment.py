"""The environment a worker gets: an allow-list of the parent's, plus what its run adds.

::

    parent os.environ ──allow-list (DEFAULT_ENV_ALLOW, LC_*) minus ENV_DENY──┐
    RunSpec.env (credentials a run needs) ──────────────────────────────────┴─▶ worker env

A worker never receives the store's URL or credentials: only the parent writes the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Final

from isolane.errors import ConfigError

__all__ = ["DEFAULT_ENV_ALLOW", "ENV_DENY", "worker_environment"]

#: Environment variables a worker inherits from the parent; everything else is dropped.
DEFAULT_ENV_ALLOW: Final = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "AUTOGEN_USE_DOCKER",
})
_ENV_ALLOW_PREFIXES: Final = ("LC_",)
#: Never given to a worker, whatever the allow-list says: only the parent talks to the store.
ENV_DENY: Final = frozenset({"ISOLANE_DB_URL", "ISOLANE_TEST_PG_URL", "DATABASE_URL", "PGPASSWORD",
                             "PGPASSFILE", "PGSERVICEFILE"})


def worker_environment(
    extra: Mapping[str, str] | None = None,
    *,
    allow: Iterable[str] = DEFAULT_ENV_ALLOW,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a worker gets: the allow-listed part of ``base`` plus ``extra``."""
    source = os.environ if base is None else base
    allowed = set(allow) - ENV_DENY
    env = {k: v for k, v in source.items() if k in allowed or k.startswith(_ENV_ALLOW_PREFIXES)}
    denied = sorted(ENV_DENY.intersection(extra or {}))
    if denied:
        raise ConfigError(f"{', '.join(denied)} cannot be given to a worker: workers never receive "
                          "the store's URL or credentials (only the parent writes the store)")
    env.update(extra or {})
    return env
