"""Transient LLM failures: every attempt the OpenAI client retries becomes an ``llm_retry`` event.

::

    any OpenAI client in the worker (AG2's OpenAIWrapper, a beta OpenAIConfig, a tool's own)
      httpx   ─ logger "httpx" INFO 'HTTP Request: POST …/chat/completions "HTTP/1.1 429 …"'
                 └─ RetryWatch: note the failed status for this thread or task
      openai  ─ logger "openai._base_client" INFO 'Retrying request to /chat/completions in 0.4 s'
                 └─ RetryWatch: emit ``llm_retry`` {endpoint, status, reason, retry_in_s,
                                                   agent, model}      (who: see calling())

The OpenAI SDK retries 408/409/429/5xx answers and connection errors inside ``create()``, so AG2
never hears of those attempts and a run throttled for minutes would show nothing. Python's
logging is the one public channel that sees them for every client, whenever it was made. While
capture runs, both loggers are lowered to INFO if they were above it and carry a filter that
observes each record and then lets through only what the logger passed before, so no new lines
reach anyone's handlers; both are put back on exit.

Who is calling is known per thread or task: the agent's ``safeguard_llm_inputs`` hook (AG2
calls it right before each LLM request, in the thread that makes it) and the beta middleware
name the agent and its configured model with :func:`calling`/:func:`note_caller`. The final
failure of a call that is not retried is an ``error`` (``LlmCallFailed``), not an ``llm_retry``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

from isolane.capture.sink import LockedSink, emit_payload
from isolane.schemas.payloads import LlmRetry

__all__ = ["RetryWatch", "calling", "note_caller"]

logger = logging.getLogger(__name__)

#: The records read (their format strings, as httpx 0.27+ and openai 1.x/2.x log them).
HTTPX_RESPONSE: Final = 'HTTP Request: %s %s "%s %d %s"'
OPENAI_RETRY: Final = "Retrying request to %s in %f seconds"
WATCHED: Final = ("httpx", "openai._base_client")

#: (url, status, reason) of this context's last failed HTTP answer, until a retry consumes it.
_failed: contextvars.ContextVar[tuple[str, int, str] | None] = contextvars.ContextVar(
    "isolane_llm_failed", default=None)
#: (agent, model) making LLM requests in this context.
_caller: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar(
    "isolane_llm_caller", default=None)


def note_caller(agent: str | None, model: str | None) -> None:
    """From now on, LLM requests made in this thread or task are ``agent``'s (with ``model``)."""
    _caller.set((agent, model) if agent is not None or model is not None else None)


@contextmanager
def calling(agent: str | None, model: str | None) -> Iterator[None]:
    """LLM requests made in this block (this thread or task) are ``agent``'s."""
    token = _caller.set((agent, model))
    try:
        yield
    finally:
        _caller.reset(token)


class _Observe(logging.Filter):
    """Shows every record to ``observe``, then passes only those ``logger`` passed before."""

    def __init__(self, watched: logging.Logger, observe: Callable[[logging.LogRecord], None]) -> None:
        super().__init__()
        self._watched = watched
        self._observe = observe
        self.original_level = watched.level

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._observe(record)
        except Exception:  # an observer bug must never break the client's request
            logger.debug("could not read log record %r", record.msg, exc_info=True)
        if self.original_level:
            return record.levelno >= self.original_level
        parent = self._watched.parent
        return record.levelno >= (parent.getEffectiveLevel() if parent is not None else logging.WARNING)


class RetryWatch:
    """Emits ``llm_retry`` to ``sink`` while ``active()``; :meth:`install` returns the undo."""

    def __init__(self, sink: LockedSink, *, active: Callable[[], bool]) -> None:
        self._sink = sink
        self._active = active

    def install(self) -> Callable[[], None]:
        """Observe the two loggers; the returned callable puts them back as they were."""
        installed: list[tuple[logging.Logger, _Observe, bool]] = []
        for name, observe in zip(WATCHED, (self._on_httpx, self._on_openai), strict=True):
            watched = logging.getLogger(name)
            observer = _Observe(watched, observe)
            watched.addFilter(observer)
            lowered = watched.getEffectiveLevel() > logging.INFO
            if lowered:
                watched.setLevel(logging.INFO)
            installed.append((watched, observer, lowered))

        def undo() -> None:
            for watched, observer, lowered in installed:
                watched.removeFilter(observer)
                if lowered and watched.level == logging.INFO:  # unless someone set it since
                    watched.setLevel(observer.original_level)

        return undo

    def _on_httpx(self, record: logging.LogRecord) -> None:
        args: Any = record.args
        if record.msg != HTTPX_RESPONSE or not isinstance(args, tuple) or len(args) != 5:
            return
        status = args[3]
        if isinstance(status, int) and status >= 400:
            _failed.set((str(args[1]), status, str(args[4])))
        elif _failed.get() is not None:
            _failed.set(None)

    def _on_openai(self, record: logging.LogRecord) -> None:
        args: Any = record.args
        if record.msg != OPENAI_RETRY or not isinstance(args, tuple) or len(args) != 2:
            return
        endpoint = urlsplit(str(args[0])).path  # never the host or query: they may carry secrets
        failed = _failed.get()
        _failed.set(None)
        if not self._active():
            return
        if failed is not None and urlsplit(failed[0]).path.endswith(endpoint):
            status: int | None = failed[1]
            reason = failed[2]
        else:
            status, reason = None, "no answer (timeout or connection error)"
        agent, model = _caller.get() or (None, None)
        delay = args[1]
        emit_payload(self._sink, "llm_retry", LlmRetry(
            endpoint=endpoint, status=status, reason=reason,
            retry_in_s=round(float(delay), 3) if isinstance(delay, int | float) else 0.0,
            agent=agent, model=model))
