"""A worker's stdout and stderr, captured: every line written to fd 1 or 2 becomes an ``output``
event.

::

    workflow / its subprocesses ─ write(1|2) ─▶ pipe ─▶ OutputPump thread (one per fd)
        ─ budget(n): bytes past the output limit are read and dropped
        ─ split into lines (at most 64 KiB each) ─▶ Emitter.emit("output", {stream, text})

The fds themselves are redirected (``dup2``), so output of native code and of child processes is
captured too, not only Python's ``sys.stdout``.

A longer line is cut into pieces of at most 64 KiB, each its own event, redacted on its own, so
a cut must never fall inside a secret (:meth:`Redactor.safe_cut`): the pump holds back enough of
the line past the 64 KiB mark (:data:`_LOOKAHEAD`, or the longest configured secret) to see a
secret lying across it, and cuts before that secret instead. A cut never splits a UTF-8
character either.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from isolane.schemas.redaction import Redactor

if TYPE_CHECKING:
    from isolane.worker.context import RunContext
    from isolane.worker.emitter import Emitter

__all__ = ["OutputPump", "pump_std_streams"]

_OUTPUT_LINE_MAX: Final = 64 * 1024
#: How much of a long line is read past the cut before cutting: where a secret across it shows.
_LOOKAHEAD: Final = 8 * 1024


class OutputPump:
    """Redirect fd 1 or 2 into a pipe and turn each line into an ``output`` event."""

    def __init__(self, fd: int, stream: str, emitter: Emitter, ctx: RunContext,
                 budget: Callable[[int], int] | None = None, *,
                 redactor: Redactor | None = None) -> None:
        self.stream = stream
        self._budget = budget  # output limit: how many of n bytes may still be kept
        self._redactor = redactor or Redactor()
        self._window = _OUTPUT_LINE_MAX + max(_LOOKAHEAD, self._redactor.reach)
        # Opened now: at close the workflow may hold every descriptor the limit allows.
        self._devnull = os.open(os.devnull, os.O_WRONLY)
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
                self._send_line(line, whole=True)
            pending = self._send_line(pending, whole=False)
        if pending:
            self._send_line(pending, whole=True)
        os.close(self._read_fd)

    def _send_line(self, line: bytes, *, whole: bool) -> bytes:
        """Send ``line`` in pieces of at most 64 KiB, cut where no secret lies; return what is
        kept back (a partial line is cut only once the look-ahead past the cut has arrived)."""
        while len(line) > _OUTPUT_LINE_MAX and (whole or len(line) >= self._window):
            cut = self._cut(line[:self._window])
            self._send(line[:cut])
            line = line[cut:]
        if whole:
            self._send(line)
            return b""
        return line

    def _cut(self, window: bytes) -> int:
        cut = _OUTPUT_LINE_MAX
        while cut > _OUTPUT_LINE_MAX - 4 and window[cut] & 0xC0 == 0x80:
            cut -= 1  # a UTF-8 continuation byte: cut before its character
        cut = self._redactor.safe_cut(window, cut)
        return cut if cut > 0 else _OUTPUT_LINE_MAX

    def _send(self, line: bytes) -> None:
        self._emitter.emit(
            "output",
            {"stream": self.stream, "text": line.decode("utf-8", "replace")},
            self._ctx.current_node,
        )

    def close(self) -> None:
        """Detach the fd (closing our write end) and wait for the pump to drain."""
        if self._devnull < 0:
            return
        os.dup2(self._devnull, self._fd)
        os.close(self._devnull)
        self._devnull = -1
        self._thread.join(timeout=5)


def pump_std_streams(emitter: Emitter, ctx: RunContext,
                     budget: Callable[[int], int] | None = None, *,
                     redactor: Redactor | None = None) -> list[OutputPump]:
    """Pump fds 1 and 2 into ``emitter`` (``budget``: the output limit; ``redactor``: the run's,
    so that long lines are cut outside its secrets) and line-buffer ``sys.stdout`` and
    ``sys.stderr`` so each line reaches its pump as it is written."""
    sys.stdout.flush()
    sys.stderr.flush()
    pumps = [OutputPump(1, "stdout", emitter, ctx, budget, redactor=redactor),
             OutputPump(2, "stderr", emitter, ctx, budget, redactor=redactor)]
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    return pumps
