"""Where a run's worker lives: the interface, and the backends by name (each loaded on first use).

::

    interface.py   WorkerBackend (start, launch, close) and WorkerHandle (frames, wait, cancel, kill)
    registry.py    BACKENDS / create_backend: "local" and "ray", imported only when created
    channel.py     the parent's end of an event pipe (frames, size limits)
    environment.py the environment a worker gets (allow-list; never the store's credentials)
    local/         a preloaded forkserver on this machine      ray/   one Ray relay actor per run

Backends import :mod:`isolane.worker` (what they start) and :mod:`isolane.schemas`, never the
parent's executor, server or CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "WorkerBackend": "isolane.backends.interface",
    "WorkerExit": "isolane.backends.interface",
    "WorkerHandle": "isolane.backends.interface",
    "BACKENDS": "isolane.backends.registry",
    "BackendFactory": "isolane.backends.registry",
    "create_backend": "isolane.backends.registry",
    "local": None,
    "ray": None,
})

if TYPE_CHECKING:
    from isolane.backends.interface import WorkerBackend, WorkerExit, WorkerHandle
    from isolane.backends.registry import BACKENDS, BackendFactory, create_backend

__all__ = [
    "BACKENDS",
    "BackendFactory",
    "WorkerBackend",
    "WorkerExit",
    "WorkerHandle",
    "create_backend",
]
