"""``isolane serve``: the REST API, the run WebSockets and the live page, on 127.0.0.1 by default.

It opens an :class:`~isolane.executor.executor.Executor` on ``--home``/``--db`` and serves it with
uvicorn on the same event loop. SIGINT/SIGTERM stop the server, then cancel the runs it still
drives (they stay resumable with ``isolane resume``).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated

import anyio
import typer

from isolane.cli.console import err, fail
from isolane.cli.options import DbOption, HomeOption, Location
from isolane.settings import TOKEN_ENV

__all__ = ["serve_command"]

log = logging.getLogger(__name__)


def serve_command(
    host: Annotated[str, typer.Option("--host", metavar="ADDR",
                                      help="Address to bind; keep 127.0.0.1 unless a token is set.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="N", help="Port to bind (0: any free port).")] = 8000,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="T", envvar=TOKEN_ENV, show_envvar=True,
        help="Require this token on every request and socket.")] = None,
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", metavar="URL", help="Also accept WebSockets and writes from this browser "
                                              "origin (repeatable).")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", metavar="NAME", help="Also answer to this Host name (repeatable; '*': any).")] = None,
    workflow: Annotated[list[str] | None, typer.Option(
        "--workflow", metavar="W", help="Only these workflows may be submitted over HTTP (repeatable; "
                                        "default: any the server can resolve).")] = None,
    max_workers: Annotated[int, typer.Option("--max-workers", metavar="N",
                                             help="Runs executing at once; more queue.")] = 4,
    recover: Annotated[bool, typer.Option("--recover/--no-recover",
                                          help="Adopt or settle runs whose previous parent died.")] = True,
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Serve runs over HTTP and WebSockets, with a live page at the printed URL."""
    from isolane.serve.auth import LOOPBACK_HOSTS

    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    if max_workers < 1:
        fail(f"--max-workers must be at least 1, got {max_workers}")
    loopback = host in LOOPBACK_HOSTS
    if not loopback and not token:
        err.print(f"warning: serving on {host} without a token: anyone who can reach it can run "
                  f"workflows; set ${TOKEN_ENV} or --token")
    hosts = set(LOOPBACK_HOSTS) | set(allow_host or ())
    if not loopback and host not in ("0.0.0.0", "::"):
        hosts.add(host)
    location = Location.of(db, home)
    anyio.run(_serve, location, host, port, token, tuple(allow_origin or ()), tuple(sorted(hosts)),
              max_workers, recover, tuple(workflow) if workflow else None)


async def _serve(location: Location, host: str, port: int, token: str | None,
                 origins: tuple[str, ...], hosts: tuple[str, ...], max_workers: int,
                 recover: bool, workflows: tuple[str, ...] | None) -> None:
    from isolane.executor.executor import Executor
    from isolane.serve.server import cancel_live_runs, make_server

    def ready(url: str) -> None:
        shown = f"{url}/?token=…" if token else f"{url}/"
        err.print(f"isolane serving {location.db or location.home} at {shown}  (Ctrl-C stops)")
        sys.stderr.flush()

    async with Executor(db_url=location.db, home=location.home, max_workers=max_workers,
                        recover=recover) as executor:
        server = make_server(executor, host=host, port=port, on_ready=ready, token=token or "",
                             allowed_origins=origins, allowed_hosts=hosts, workflows=workflows)
        async with anyio.create_task_group() as tg:
            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        log.info("received %s: stopping the server", signal.Signals(signum).name)
                        server.stop()
                        return

            tg.start_soon(stop_on_signal)
            await server.serve()
            tg.cancel_scope.cancel()
        cancelled = await cancel_live_runs(executor, "the service stopped")
        if cancelled:
            err.print(f"cancelled {cancelled} running run(s); `isolane resume RUN` continues one")
