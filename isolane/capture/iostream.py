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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from autogen.io.base import IOStream

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
        current = IOStream._global_default  # read without get_global_default's raise
        return None if current is self else current

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
