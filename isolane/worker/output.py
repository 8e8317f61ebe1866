"""A worker's stdout and stderr, captured: every line written to fd 1 or 2 becomes an ``output``
event.

::

    workflow / its subprocesses ─ write(1|2) ─▶ pipe ─▶ OutputPump thread (one per fd)
        ─ budget(n): bytes past the output limit are read and dropped
        ─ split into lines (at most 64 KiB each) ─▶ Emitter.emit("output", {stream, text})

The fds themselves are redirected (``dup2``), so output of native code and of child processes is
captured too, not only Python's ``sys.stdout``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from isolane.worker.context import RunContext
    from isolane.worker.emitter import Emitter

__all__ = ["OutputPump", "pump_std_streams"]

_OUTPUT_LINE_MAX: Final = 64 * 1024


class OutputPump:
    """Redirect fd 1 or 2 into a pipe and turn each line into an ``output`` event."""

    def __init__(self, fd: int, stream: str, emitter: Emitter, ctx: RunContext,
                 budget: Callable[[int], int] | None = None) -> None:
        self.stream = stream
        self._budget = budget  # output limit: how many of n bytes may still be kept
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, fd)
        os.close(write_fd)
        self._fd = fd
        self._read_fd = read_fd
        self._emitter = emitter
        self._ctx = ctx
        self._thread = threading.Thread(target=self._pump, name=f"isolane-{stream}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self._budget is not None:
                chunk = chunk[:self._budget(len(chunk))]  # past the limit: read and drop
                if not chunk:
                    continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._send(line)
            while len(pending) >= _OUTPUT_LINE_MAX:
                self._send(pending[:_OUTPUT_LINE_MAX])
                pending = pending[_OUTPUT_LINE_MAX:]
        if pending:
            self._send(pending)
        os.close(self._read_fd)

    def _send(self, line: bytes) -> None:
        self._emitter.emit(
            "output",
            {"stream": self.stream, "text": line.decode("utf-8", "replace")},
            self._ctx.current_node,
        )

    def close(self) -> None:
        """Detach the fd (closing our write end) and wait for the pump to drain."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._fd)
        os.close(devnull)
        self._thread.join(timeout=5)


def pump_std_streams(emitter: Emitter, ctx: RunContext,
                     budget: Callable[[int], int] | None = None) -> list[OutputPump]:
    """Pump fds 1 and 2 into ``emitter`` (``budget``: the output limit) and line-buffer
    ``sys.stdout`` and ``sys.stderr`` so each line reaches its pump as it is written."""
    sys.stdout.flush()
    sys.stderr.flush()
    pumps = [OutputPump(1, "stdout", emitter, ctx, budget),
             OutputPump(2, "stderr", emitter, ctx, budget)]
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    return pumps
