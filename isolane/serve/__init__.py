"""Serving runs to people: an ASGI app (REST, WebSockets, a live page) over an Executor.

::

    async with isolane.Executor() as ex:
        app = isolane.serve.create_app(ex)          # mount it in a host service, or:
        await isolane.serve.serve(ex, port=8000)    # what `isolane serve` runs

See :mod:`isolane.serve.app` for the routes, :mod:`isolane.serve.ws` for the WebSocket protocol
and :mod:`isolane.serve.auth` for the host, token and origin checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "STATIC_DIR": "isolane.serve.app",
    "create_app": "isolane.serve.app",
    "COOKIE_NAME": "isolane.serve.auth",
    "LOOPBACK_HOSTS": "isolane.serve.auth",
    "TOKEN_ENV": "isolane.serve.auth",
    "GuardPolicy": "isolane.serve.auth",
    "BackgroundServer": "isolane.serve.server",
    "Server": "isolane.serve.server",
    "cancel_live_runs": "isolane.serve.server",
    "make_server": "isolane.serve.server",
    "serve": "isolane.serve.server",
    "CONTROL_FRAMES": "isolane.serve.ws",
    "DEFAULT_QUEUE_SIZE": "isolane.serve.ws",
})

if TYPE_CHECKING:
    from isolane.serve.app import STATIC_DIR, create_app
    from isolane.serve.auth import COOKIE_NAME, LOOPBACK_HOSTS, TOKEN_ENV, GuardPolicy
    from isolane.serve.server import (
        BackgroundServer,
        Server,
        cancel_live_runs,
        make_server,
        serve,
    )
    from isolane.serve.ws import CONTROL_FRAMES, DEFAULT_QUEUE_SIZE

__all__ = [
    "CONTROL_FRAMES",
    "COOKIE_NAME",
    "DEFAULT_QUEUE_SIZE",
    "LOOPBACK_HOSTS",
    "STATIC_DIR",
    "TOKEN_ENV",
    "BackgroundServer",
    "GuardPolicy",
    "Server",
    "cancel_live_runs",
    "create_app",
    "make_server",
    "serve",
]
