"""Running the app: uvicorn on the executor's event loop, in the foreground or in a thread.

::

    serve(executor, host, port)          uvicorn.Server on the current loop (the executor's);
                                         returns when stop() was called (or a signal, in the CLI)
    BackgroundServer(home=..., ...)      an event loop in a thread (anyio blocking portal) holding
                                         an Executor and the server: for tests, benchmarks, notebooks

uvicorn's own signal handling is off: whoever runs the server decides what a signal means (the
CLI stops the server, then cancels the runs still going, which stay resumable).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.from_thread
import uvicorn

from isolane.errors import RunStateError
from isolane.executor.executor import Executor

__all__ = ["BackgroundServer", "Server", "cancel_live_runs", "make_server", "serve"]

log = logging.getLogger(__name__)


class Server(uvicorn.Server):
    """uvicorn's server without its signal handlers, reporting its URL once it listens."""

    def __init__(self, config: uvicorn.Config, *, on_ready: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self.url: str | None = None
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready(self.url)

    def stop(self) -> None:
        """Ask the server to finish (it closes sockets, then :func:`serve` returns)."""
        self.should_exit = True


def make_server(executor: Executor, *, host: str = "127.0.0.1", port: int = 8000,
                on_ready: Callable[[str], None] | None = None, **app_options: Any) -> Server:
    """A :class:`Server` for ``create_app(executor, **app_options)`` (not started)."""
    from isolane.serve.app import create_app

    config = uvicorn.Config(create_app(executor, **app_options), host=host, port=port,
                            ws="websockets-sansio", lifespan="off", log_config=None,
                            access_log=False, timeout_graceful_shutdown=3)
    return Server(config, on_ready=on_ready)


async def serve(executor: Executor, *, host: str = "127.0.0.1", port: int = 8000,
                on_ready: Callable[[str], None] | None = None, **app_options: Any) -> None:
    """Serve ``executor`` until the server is stopped. ``port=0`` picks a free port."""
    await make_server(executor, host=host, port=port, on_ready=on_ready, **app_options).serve()


class BackgroundServer:
    """An :class:`Executor` and the app serving it, on an event loop in a background thread.

    ``with BackgroundServer(home=tmp) as srv: srv.url``; ``srv.call(fn, *args)`` runs an async
    function on the server's loop (to use the executor directly). ``executor_options`` go to
    :class:`Executor`, ``app_options`` to :func:`~isolane.serve.create_app`.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 executor_options: dict[str, Any] | None = None, **app_options: Any) -> None:
        self.host = host
        self.port = port
        self._executor_options = dict(executor_options or {})
        self._app_options = app_options
        self._stack = contextlib.ExitStack()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._server: Server | None = None
        self._served: Any = None
        self.executor: Executor | None = None
        self.url = ""

    def __enter__(self) -> Self:
        try:
            self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
            self.executor = self._stack.enter_context(
                self._portal.wrap_async_context_manager(Executor(**self._executor_options)))
            self._server = self._portal.call(self._make)
            self._served = self._portal.start_task_soon(self._server.serve)
            self._portal.call(self._server.ready.wait)
        except BaseException:
            self._stack.close()
            raise
        assert self._server.url is not None
        self.url = self._server.url
        return self

    async def _make(self) -> Server:
        assert self.executor is not None
        return make_server(self.executor, host=self.host, port=self.port, **self._app_options)

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``await func(*args)`` on the server's event loop and return its result."""
        if self._portal is None:
            raise RunStateError("the background server is not running; use it in a `with` block")
        return self._portal.call(func, *args)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._server is not None and self._portal is not None:
                self._portal.call(self._stop)
                self._served.result(timeout=30)
        finally:
            self._stack.close()

    async def _stop(self) -> None:
        assert self._server is not None and self.executor is not None
        self._server.stop()
        await cancel_live_runs(self.executor, "the server is stopping")


async def cancel_live_runs(executor: Executor, reason: str) -> int:
    """Cancel every run ``executor`` is driving (they stay resumable); return how many."""
    live = executor.live_runs()
    for handle in live:
        await handle.cancel(reason)
    return len(live)
