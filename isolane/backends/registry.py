"""Worker backends by name: a backend's module is imported only when its backend is created.

::

    create_backend("local", ...) ──▶ isolane.backends.local.LocalBackend(...)   (forkserver here)
    create_backend("ray", ...)   ──▶ isolane.backends.ray.RayBackend(...)       (needs Ray)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from isolane.backends.interface import WorkerBackend
from isolane.errors import ConfigError

__all__ = ["BACKENDS", "BackendFactory", "create_backend"]

#: A backend factory takes keyword options only (``start_method``, ``env_allow``, its own).
BackendFactory = Callable[..., WorkerBackend]


def _lazy(module: str, name: str, missing: str | None = None) -> BackendFactory:
    def create(**options: Any) -> WorkerBackend:
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            if missing is None:
                raise
            raise ConfigError(f"{missing} ({exc})") from exc
        backend: WorkerBackend = cls(**options)
        return backend

    create.__qualname__ = create.__name__ = f"create_{name}"
    return create


#: Backends by name; each module is imported only when its backend is created.
BACKENDS: Final[Mapping[str, BackendFactory]] = {
    "local": _lazy("isolane.backends.local.backend", "LocalBackend"),
    "ray": _lazy("isolane.backends.ray.backend", "RayBackend",
                 missing="the ray backend needs Ray; install it with `pip install 'isolane[ray]'`"),
}


def create_backend(name: str, *, start_method: str | None = None,
                   env_allow: Iterable[str] | None = None, **options: Any) -> WorkerBackend:
    """The backend called ``name`` (see :data:`BACKENDS`), built with ``options``."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise ConfigError(f"unknown worker backend {name!r}; use one of {', '.join(sorted(BACKENDS))}")
    if env_allow is not None:
        options["env_allow"] = env_allow
    return factory(start_method=start_method, **options)
