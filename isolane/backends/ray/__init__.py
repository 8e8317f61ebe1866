"""The Ray backend: one detached relay actor per run starts isolane's worker on a Ray node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "ADDRESS_ENV": "isolane.backends.ray.backend",
    "RayBackend": "isolane.backends.ray.backend",
    "Placement": "isolane.backends.ray.handle",
    "RayWorker": "isolane.backends.ray.handle",
    "RunRelay": "isolane.backends.ray.relay",
})

if TYPE_CHECKING:
    from isolane.backends.ray.backend import ADDRESS_ENV, RayBackend
    from isolane.backends.ray.handle import Placement, RayWorker
    from isolane.backends.ray.relay import RunRelay

__all__ = [
    "ADDRESS_ENV",
    "Placement",
    "RayBackend",
    "RayWorker",
    "RunRelay",
]
