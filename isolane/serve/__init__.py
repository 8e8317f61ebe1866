"""Serving runs to people: an ASGI app (REST, WebSockets, a live page) over an Executor.

::

    async with isolane.Executor() as ex:
        app = isolane.serve.create_app(ex)          # mount it in a host service, or:
        await isolane.serve.serve(ex, port=8000)    # what `isolane serve` runs

See :mod:`isolane.serve.app` for the routes, :mod:`isolane.serve.ws` for the WebSocket protocol
and :mod:`isolane.serve.auth` for the host, token and origin checks.
"""

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
