"""The ASGI app a parent service embeds (or ``isolane serve`` runs): REST, WebSockets, the page.

::

    create_app(executor) ──▶ Guard (host · token · origin)
                               ├─ /api/...            REST  (isolane.serve.routes)
                               ├─ /ws/runs/{id}       one run's events, since=<seq>  (isolane.serve.ws)
                               ├─ /metrics            Prometheus text (isolane.metrics; the extra)
                               ├─ /                   the live page (static/index.html)
                               └─ /static/...         the page's scripts, vendored libraries

The executor is opened and closed by the host (``async with Executor() as ex``), on the same
event loop as the server; the app only uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from isolane import settings
from isolane.errors import ConfigError, IsolaneError, RunNotFound, RunStateError
from isolane.executor.executor import Executor
from isolane.metrics import ExecutorMetrics
from isolane.serve.auth import LOOPBACK_HOSTS, Guard, GuardPolicy
from isolane.serve.http import query_int
from isolane.serve.routes import api_routes, resolve_handle
from isolane.serve.ws import DEFAULT_QUEUE_SIZE, close_reason, stream_run

__all__ = ["STATIC_DIR", "create_app"]

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
_WS_NOT_FOUND: Final = 4404
_WS_BAD_REQUEST: Final = 4400
_WS_SERVER_ERROR: Final = 1011


def create_app(
    executor: Executor,
    *,
    token: str | None = None,
    allowed_origins: Collection[str] = (),
    allowed_hosts: Collection[str] = LOOPBACK_HOSTS,
    workflows: Collection[str] | None = None,
    client_queue: int = DEFAULT_QUEUE_SIZE,
    metrics: bool = True,
) -> Starlette:
    """A Starlette app serving ``executor``'s runs.

    ``token``: required on every route and socket (default: ``$ISOLANE_TOKEN``; none when unset
    or empty). ``allowed_origins``: browser origins allowed besides the service's own host.
    ``allowed_hosts``: ``Host`` names served (default: loopback names; ``["*"]`` for any).
    ``workflows``: the workflow references ``POST /api/runs`` accepts, and the scorers
    ``POST /api/runs/{id}/race`` accepts (default: any resolvable one — keep the service on
    loopback with a token then). ``client_queue``: frames queued per
    WebSocket client before it is switched to catching up from the store. ``metrics``: serve
    ``GET /metrics`` (needs ``isolane[metrics]``; counting starts when the app is created on an
    open executor, else at the first scrape).
    """
    if client_queue < 2:
        raise ConfigError(f"client_queue must be at least 2 frames, got {client_queue}")
    if token is None:
        token = settings.token()
    policy = GuardPolicy(token=token or None, allowed_hosts=tuple(allowed_hosts),
                         allowed_origins=tuple(allowed_origins))

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

    async def run_socket(websocket: WebSocket) -> None:
        # Accepted first, so that a refusal reaches the client as a close code and reason.
        await websocket.accept()
        try:
            since = query_int(websocket.query_params.get("since"), "since", 0)
        except ConfigError as exc:
            await websocket.close(_WS_BAD_REQUEST, reason=close_reason(str(exc)))
            return
        try:
            handle = await resolve_handle(executor, websocket.path_params["run_id"])
        except RunNotFound as exc:
            await websocket.close(_WS_NOT_FOUND, reason=close_reason(str(exc)))
            return
        except IsolaneError as exc:  # the store cannot be read: the server's trouble
            await websocket.close(_WS_SERVER_ERROR, reason=close_reason(str(exc)))
            return
        await stream_run(websocket, executor, handle, since, queue_size=client_queue)

    async def scrape(request: Request) -> Response:
        if app.state.metrics is None:
            try:
                app.state.metrics = ExecutorMetrics(executor)
            except ConfigError as exc:  # prometheus-client is not installed
                return PlainTextResponse(str(exc), status_code=501)
            except RunStateError as exc:
                return PlainTextResponse(str(exc), status_code=503)
        body, media_type = await anyio.to_thread.run_sync(app.state.metrics.render)
        return Response(body, media_type=media_type)

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            *([Route("/metrics", scrape, methods=["GET"])] if metrics else []),
            Route("/runs/{run_id}", page, methods=["GET"]),
            *api_routes(),
            WebSocketRoute("/ws/runs/{run_id}", run_socket),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(Guard, policy=policy)],
    )
    app.state.executor = executor
    app.state.workflows = frozenset(workflows) if workflows is not None else None
    app.state.policy = policy
    app.state.races = {}  # races started here, by group id (bounded): their errors for GET
    app.state.metrics = _metrics_of(executor) if metrics else None
    return app


def _metrics_of(executor: Executor) -> ExecutorMetrics | None:
    """The executor's metrics from now on, if it is open and prometheus-client is installed."""
    try:
        return ExecutorMetrics(executor)
    except (ConfigError, RunStateError):
        return None
