"""The IOStream channel: AG2's structured output events, its prints and its input requests.

::

    AG2 (any thread) ─ IOStream.get_default().send(event) ─▶ CaptureIOStream.send ─▶ Translator
                     ─ .print(*objects)                   ─▶ ``output`` event
                     ─ .input(prompt)                     ─▶ ``human_input_request``, then the
                                                              previous stream answers
    (echo on) ──────────────────────────────────────────────▶ previous stream (the console)

The session installs it both as the context default and as the global default, because AG2
runs some tools in bare threads whose context has no default. After the session ends, a stream
still cached in some thread's context forwards to whatever the global default is then.

AG2's ``run()`` family (``run``, ``a_run``, ``run_iter``, ``a_run_iter``, ``run_group_chat``,
``a_run_group_chat``, ``run_group_chat_iter``...) runs the chat in a thread or task of its own
under its own ``ThreadIOStream``, which queues every event for the caller's ``response.events``.
:meth:`CaptureIOStream.follow` (called by every capture callback, which AG2 always makes before
it sends anything in a new thread or task) puts a tee in front of such a stream, in that context
only::

    thread: with IOStream.set_default(ThreadIOStream()):             (AG2)
              send hook / runtime logger ─▶ CaptureIOStream.follow()
                                             └─ this context's stream := tee(ThreadIOStream)
              IOStream.get_default().send(event) ─▶ tee ─▶ Translator (recorded)
                                                      └──▶ ThreadIOStream (the caller's events,
                                                           unchanged, in order)

The tee leaves with AG2's ``with`` block. It is the same for any stream a workflow sets as its
context default: whatever AG2 sends is recorded, then goes where AG2 sent it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from isolane.capture import seams
from isolane.capture.translate import Translator

__all__ = ["CaptureIOStream"]

logger = logging.getLogger(__name__)


class CaptureIOStream:
    """An AG2 ``IOStreamProtocol`` that records everything it is given.

    ``inner`` is the stream that was the default before: it answers :meth:`input` and, when
    ``echo`` is true, also receives every event and print (so a user at a terminal still sees
    AG2's usual output). ``send`` and ``print`` are thread-safe (the translator serialises them).
    ``on_activity`` runs first on every call (the session uses it to attach new agents).
    """

    def __init__(self, translator: Translator, *, inner: Any, echo: bool = False,
                 on_activity: Callable[[], None] = lambda: None) -> None:
        self._translator = translator
        self.inner = inner
        self.echo = echo
        self.closed = False
        self._on_activity = on_activity
        #: When set (a worker sets it), :meth:`input` asks through it instead: it emits
        #: ``human_input_request`` itself and waits for the parent's answer.
        self.human: Callable[..., str] | None = None

    def close(self) -> None:
        """Stop recording; later calls go to the global default of the moment."""
        self.closed = True

    def _fallback(self) -> Any:
        """Where a closed stream sends: the global default of the moment (never itself)."""
        current = seams.global_stream()
        return None if current is self else current

    def follow(self) -> None:
        """Record what AG2 sends to another stream set for this thread or task (see the module
        docstring); a no-op when this context already sends to capture."""
        if self.closed:
            return
        current = seams.context_stream()
        # A CaptureIOStream (even an ended one: it forwards to the global default, this one)
        # already reaches capture; a tee of ours already records.
        if current is None or isinstance(current, CaptureIOStream) or (
                isinstance(current, _Tee) and current.owner is self):
            return
        tee = _AsyncTee(self, current) if inspect.iscoroutinefunction(getattr(current, "input", None)) \
            else _SyncTee(self, current)
        if seams.set_context_stream(tee):
            logger.debug("capture follows AG2 into %r", current)

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
        """Record printed text as an ``output`` event."""
        if self.closed:
            target = self._fallback()
            if target is not None:
                target.print(*objects, sep=sep, end=end, flush=flush)
            return
        self._on_activity()
        self._translator.on_print(sep.join(str(o) for o in objects) + end)
        if self.echo and self.inner is not None:
            self.inner.print(*objects, sep=sep, end=end, flush=flush)

    def send(self, message: Any) -> None:
        """Record one AG2 event."""
        if self.closed:
            target = self._fallback()
            if target is not None:
                target.send(message)
            return
        self._on_activity()
        self._translator.on_ag2_event(message)
        if self.echo and self.inner is not None:
            self.inner.send(message)

    def input(self, prompt: str = "", *, password: bool = False) -> str:
        """Record the request, then let the previous stream answer it (not under any lock).

        With :attr:`human` set, the question goes there instead (see
        :mod:`isolane.worker.human`).
        """
        if not self.closed and self.human is not None:
            self._on_activity()
            return str(self.human(prompt, password=password))
        if not self.closed:
            self._on_activity()
            self._translator.on_input_request(prompt, password=password)
        source = self.inner if not self.closed else self._fallback()
        if source is None:
            raise RuntimeError("no IOStream to read human input from; install one before capture_ag2")
        answer = source.input(prompt, password=password)
        return str(answer)


class _Tee:
    """Records what AG2 sends to ``inner`` (a stream AG2 or the workflow set for one thread or
    task), then passes it on unchanged. Once ``owner`` is closed it only passes on."""

    def __init__(self, owner: CaptureIOStream, inner: Any) -> None:
        self.owner = owner
        self.inner = inner

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
        """Record printed text as an ``output`` event, then print it to ``inner``."""
        if not self.owner.closed:
            self.owner._translator.on_print(sep.join(str(o) for o in objects) + end)
        self.inner.print(*objects, sep=sep, end=end, flush=flush)

    def send(self, message: Any) -> None:
        """Record one AG2 event, then send it to ``inner`` (which may block: ``run_iter``)."""
        if not self.owner.closed:
            self.owner._translator.on_ag2_event(message)
        self.inner.send(message)

    def _asks_human(self) -> Callable[..., str] | None:
        return None if self.owner.closed else self.owner.human


class _SyncTee(_Tee):
    def input(self, prompt: str = "", *, password: bool = False) -> str:
        """In a worker, ask through the parent (as the capture stream does); else record the
        request and let ``inner`` answer it (``ThreadIOStream`` hands it to the caller)."""
        human = self._asks_human()
        if human is not None:
            return str(human(prompt, password=password))
        if not self.owner.closed:
            self.owner._translator.on_input_request(prompt, password=password)
        return str(self.inner.input(prompt, password=password))


class _AsyncTee(_Tee):
    async def input(self, prompt: str = "", *, password: bool = False) -> str:
        """:meth:`_SyncTee.input` for an async stream (``AsyncThreadIOStream``)."""
        human = self._asks_human()
        if human is not None:
            return str(await asyncio.to_thread(human, prompt, password=password))
        if not self.owner.closed:
            self.owner._translator.on_input_request(prompt, password=password)
        return str(await self.inner.input(prompt, password=password))
