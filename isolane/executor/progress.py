"""Progress while waiting on a run: updated in place in a notebook, a plain line elsewhere.

::

    RunHandle.wait(progress=True)            SyncRun.wait(progress=True)
      a task: every TICK s ─┐                  the calling thread: every TICK s ─┐
                            ▼                                                    ▼
                 snapshot(store, run) ──▶ Progress.show ──▶ notebook: display(HTML, display_id)
                                                              then .update(HTML) when it changed
                                                            terminal/logs: one line when the
                                                              status, node or counts changed

``progress=None`` (the default) means on in a notebook (an IPython kernel), off elsewhere, so a
script's logs never fill with repaint codes. The terminal line goes to ``sys.stderr``: asking for
progress is asking for output.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TextIO

import anyio
import anyio.to_thread

from isolane.executor.display import RunSnapshot, run_html
from isolane.tracking.cost import money

if TYPE_CHECKING:
    from isolane.executor.run import Outcome

__all__ = ["TICK", "Progress", "follow_with_progress", "in_notebook"]

#: Seconds between two looks at the run while waiting.
TICK: Final = 0.5


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (IPython with a kernel attached)."""
    ipython: Any = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except (AttributeError, ImportError):  # an IPython half imported or without a shell
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """One run's progress display: a notebook output updated in place, or plain lines."""

    def __init__(self, *, notebook: bool, stream: TextIO | None = None, handle_name: str = "handle",
                 awaited: bool = True) -> None:
        self._notebook = notebook
        self._stream = stream
        self._handle_name = handle_name
        self._awaited = awaited
        self._shown: Any = None
        self._last = ""

    def show(self, snap: RunSnapshot) -> None:
        """Draw ``snap`` if it differs from what is shown."""
        if self._notebook:
            from IPython.display import HTML, display

            page = run_html(snap, handle_name=self._handle_name, awaited=self._awaited, waiting=True)
            if page == self._last:
                return
            self._last = page
            if self._shown is None:
                self._shown = display(HTML(page), display_id=True)  # type: ignore[no-untyped-call]
            else:
                self._shown.update(HTML(page))  # type: ignore[no-untyped-call]
            return
        line = _line(snap)
        if line != self._last:
            self._last = line
            stream = self._stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()


def _line(snap: RunSnapshot) -> str:
    """The run in one line: what changes is what matters (no clock, so no line per tick)."""
    row = snap.run
    running = [n.node_id for n in snap.nodes if n.status == "running"]
    parts = [f"run {row.id[:12]} {row.status}", f"{row.last_seq} events"]
    if running:
        parts.append("running " + ", ".join(running[-3:]))
    if snap.cost.total.calls:
        parts.append(f"{snap.cost.total.calls} LLM calls {money(snap.cost.total)}")
    for request in snap.pending:
        parts.append(f"waiting for an answer to {request.request_id}: {request.prompt[:80]!r}")
    return " · ".join(parts)


async def follow_with_progress(wait: Callable[[], Awaitable[Outcome]], read: Callable[[], RunSnapshot],
                               progress: Progress) -> Outcome:
    """``await wait()``, showing ``read()`` (blocking, run in a thread) every :data:`TICK` s
    meanwhile and once more at the end."""
    async with anyio.create_task_group() as tg:
        async def ticker() -> None:
            while True:
                progress.show(await anyio.to_thread.run_sync(read))
                await anyio.sleep(TICK)

        tg.start_soon(ticker)
        outcome = await wait()
        tg.cancel_scope.cancel()
    progress.show(await anyio.to_thread.run_sync(read))
    return outcome
