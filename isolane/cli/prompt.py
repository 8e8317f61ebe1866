"""Answering a run's questions at the terminal that follows it (``run-isolated`` on a TTY).

::

    handle.events() ──▶ Prompter.see(event)   human_input_request: queue it
                                              human_input_response: drop it (answered elsewhere,
                                              timed out); the one being asked is abandoned
    Prompter.run():  pause the live view ─▶ "? agent asks: …" ─▶ wait for a line on stdin
                     (anyio.wait_readable: no thread, cancellable) ─▶ handle.answer(id, line)
                     ─▶ resume the live view

The terminal stays in canonical mode, so the kernel's line editing and echo apply (no echo for a
``password`` question); input typed
before a question is asked is discarded, so a stray keystroke never answers one. Without a TTY
on stdin nothing is prompted (answer with ``isolane answer``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, Protocol

import anyio
from rich.console import Console
from rich.text import Text

from isolane.errors import IsolaneError
from isolane.schemas.envelope import Event

__all__ = ["Pausable", "Prompter"]

_MAX_LINE: Final = 256 * 1024

Answer = Callable[[str, str], Awaitable[None]]


class Pausable(Protocol):
    """A live view that can give the terminal up while a person types."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Prompter:
    """Asks the person at the terminal each question a run puts, one at a time, in order."""

    def __init__(self, answer: Answer, view: Pausable, console: Console, *, stdin_fd: int = 0) -> None:
        self._answer = answer
        self._view = view
        self._console = console
        self._fd = stdin_fd
        self._queue: dict[str, Event] = {}
        self._asking: str | None = None
        self._abandon: anyio.CancelScope | None = None
        self._wake = anyio.Event()

    @staticmethod
    def possible(console: Console) -> bool:
        """Whether a person can answer here: the view is on a terminal and stdin is one too."""
        return console.is_terminal and sys.stdin is not None and sys.stdin.isatty()

    def see(self, event: Event) -> None:
        """Note a question asked, or one that no longer waits."""
        request_id = event.data.get("request_id")
        if not isinstance(request_id, str):
            return
        if event.type == "human_input_request":
            self._queue[request_id] = event
            self._wake.set()
        elif event.type == "human_input_response":
            self._queue.pop(request_id, None)
            if request_id == self._asking and self._abandon is not None:
                self._abandon.cancel()

    async def run(self) -> None:
        """Ask queued questions until cancelled (the run ended) or stdin closes."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue:
                request_id, event = next(iter(self._queue.items()))
                if not await self._ask(request_id, event):
                    return

    async def _ask(self, request_id: str, event: Event) -> bool:
        """Ask one question; False when stdin is closed (no more prompting)."""
        self._view.pause()
        self._asking = request_id
        try:
            who = event.data.get("agent") or event.node_id or "the workflow"
            self._console.print(Text.assemble(("? ", "bold yellow"), (f"{who} asks: ", "bold"),
                                              str(event.data.get("prompt", ""))))
            if event.data.get("default") is not None:
                self._console.print(Text(f"  (default after the timeout: {event.data['default']})",
                                         style="dim"))
            with contextlib.suppress(termios.error):
                termios.tcflush(self._fd, termios.TCIFLUSH)  # nothing typed before the question
            self._console.print(Text(f"answer {request_id}> ", style="bold"), end="")
            self._console.file.flush()
            hidden = event.data.get("kind") == "password"
            line: bytes | None = None
            with anyio.CancelScope() as self._abandon, _no_echo(self._fd, hidden):
                line = await self._read_line()
            if self._abandon.cancel_called:
                self._console.print(Text("\n  answered elsewhere or timed out", style="dim"))
                return True
            self._queue.pop(request_id, None)
            if not line:
                self._console.print(Text("\nstdin closed: answer with `isolane answer`", style="dim"))
                return False
            if hidden:
                self._console.print()  # the typed line was not echoed, nor its newline
            text = line.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
            try:
                await self._answer(request_id, text)
            except IsolaneError as exc:
                self._console.print(Text(f"  not sent: {exc}", style="red"))
            return True
        finally:
            self._asking = None
            self._abandon = None
            self._view.resume()

    async def _read_line(self) -> bytes:
        """One line from stdin (b'' at its end), waiting without a thread."""
        chunks: list[bytes] = []
        size = 0
        while True:
            await anyio.wait_readable(self._fd)
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n") or size > _MAX_LINE:
                return b"".join(chunks)


@contextlib.contextmanager
def _no_echo(fd: int, hidden: bool) -> Iterator[None]:
    """Typed characters are not shown while a password is read (``hidden``)."""
    if not hidden:
        yield
        return
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
