"""The local backend: workers forked from a preloaded forkserver on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "LocalBackend": "isolane.backends.local.backend",
    "LocalWorker": "isolane.backends.local.backend",
    "DEFAULT_PRELOAD": "isolane.backends.local.launcher",
    "Launcher": "isolane.backends.local.launcher",
    "WorkerProcess": "isolane.backends.local.launcher",
})

if TYPE_CHECKING:
    from isolane.backends.local.backend import LocalBackend, LocalWorker
    from isolane.backends.local.launcher import DEFAULT_PRELOAD, Launcher, WorkerProcess

__all__ = [
    "DEFAULT_PRELOAD",
    "Launcher",
    "LocalBackend",
    "LocalWorker",
    "WorkerProcess",
]
