"""Install every capture channel for the duration of a ``with`` block, and remove them after.

::

    with capture_ag2(sink, prices=...) as session:          worker: sink = its Emitter
        │ installs                                   emits (serialised by one lock)
        ├─ CaptureIOStream  (context + global IOStream default) ─▶ agent_message, tool_call,
        │                                                          tool_result, handoff, output,
        │                                                          human_input_request, error, custom
        │    └─ tees in front of the streams AG2's run() family sets for its own threads
        ├─ CaptureLogger    (autogen.runtime_logging)            ─▶ llm_call, cost_update, error
        ├─ Attacher         (send hooks + code-executor wrappers) ─▶ agent_message (silent),
        │                                                          code_execution
        ├─ BetaCapture      (a middleware on every autogen.beta   ─▶ agent_message, llm_call,
        │                    Agent turn)                            cost_update, tool_call/result
        └─ RetryWatch       (filters on the httpx and openai      ─▶ llm_retry
                             loggers)
    on exit: runtime logging stopped (a previous logger restored), IOStream defaults restored,
             hooks removed, executors unwrapped, the beta turn seam and the loggers put back.

Capture uses AG2's own extension points (IOStream defaults, the runtime-logger interface, agent
hooks, the ``CodeExecutor`` protocol, beta middleware) and Python's logging. Where AG2 offers
none (a ThreadIOStream's thread, a beta turn), the AG2 internal used is in
:mod:`~isolane.capture.seams`, checked against the supported AG2 range.

One session at a time per process: the runtime logger and the global IOStream are
process-wide. A second ``capture_ag2`` while one is active raises :class:`RunStateError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from autogen import runtime_logging
from autogen.io.base import IOStream

from isolane.capture import seams
from isolane.capture.beta import BetaCapture
from isolane.capture.calls import LlmCalls
from isolane.capture.hooks import Attacher
from isolane.capture.iostream import CaptureIOStream
from isolane.capture.llm_logger import CaptureLogger
from isolane.capture.pricing import CostLedger, CostTotals, PriceBook
from isolane.capture.retries import RetryWatch
from isolane.capture.sink import LockedSink, Sink, emit_payload
from isolane.capture.translate import Translator
from isolane.errors import RunStateError
from isolane.schemas.payloads import ErrorPayload

__all__ = ["CaptureSession", "capture_ag2"]

logger = logging.getLogger(__name__)

_ACTIVE_LOCK = threading.Lock()
_active_session: CaptureSession | None = None  # the process-wide channels allow one at a time


class CaptureSession:
    """The live capture of one ``capture_ag2`` block.

    Agents created while it is active are attached automatically (via the runtime logger's
    ``log_new_agent``), and agents in use are attached when they first show up in a channel.
    Call :meth:`attach` for an agent created before the block whose silent sends or code
    executions must be captured from its very first action.
    """

    def __init__(self, sink: Sink, *, prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._sink = LockedSink(sink)
        self._active = False
        self.ledger = CostLedger(PriceBook(prices))
        self.calls = LlmCalls(self._sink, self.ledger)
        self.translator = Translator(self._sink)
        self.attacher = Attacher(self.translator, self._sink, active=self.is_active, on_activity=self._follow)
        self.iostream: CaptureIOStream | None = None
        self.logger: CaptureLogger | None = None

    # -- public API -------------------------------------------------------------------------------

    def is_active(self) -> bool:
        """Whether the ``capture_ag2`` block is still running."""
        return self._active

    def attach(self, agent: Any) -> None:
        """Capture ``agent``'s silent sends and code executions (idempotent).

        Raises :class:`~isolane.errors.ConfigError` if ``agent`` is not an AG2
        ``ConversableAgent``, :class:`RunStateError` once the session has ended.
        """
        if not self._active:
            raise RunStateError("this capture session has ended; attach agents inside the capture_ag2 block")
        self.attacher.attach(agent)

    def attach_all(self, agents: Iterable[Any]) -> None:
        """:meth:`attach` each agent."""
        for agent in agents:
            self.attach(agent)

    @property
    def echo(self) -> bool:
        """Whether AG2's output is also forwarded to the previous IOStream (the console)."""
        return self.iostream is not None and self.iostream.echo

    @echo.setter
    def echo(self, value: bool) -> None:
        if self.iostream is not None:
            self.iostream.echo = value

    @property
    def totals(self) -> CostTotals:
        """Calls, tokens and cost captured so far."""
        return self.calls.totals

    def _follow(self) -> None:
        if self.iostream is not None:
            self.iostream.follow()

    # -- installation (used by capture_ag2) -------------------------------------------------------

    def _install(self, stack: ExitStack) -> None:
        self._active = True
        stack.callback(self.attacher.detach_all)

        previous_logger = runtime_logging.autogen_logger if runtime_logging.logging_enabled() else None
        self.logger = CaptureLogger(
            self.calls, on_new_agent=self.attacher.note_new, on_agent=self.attacher.seen,
            active=self.is_active, delegate=previous_logger)
        runtime_logging.start(logger=self.logger)
        stack.callback(_restore_runtime_logging, previous_logger)

        previous_global = seams.global_stream()
        try:
            inner = IOStream.get_default()
        except RuntimeError:
            inner = None
        self.iostream = CaptureIOStream(self.translator, inner=inner, on_activity=self.attacher.settle)
        IOStream.set_global_default(self.iostream)
        stack.callback(_restore_global_iostream, previous_global)
        stack.callback(self.iostream.close)
        stack.enter_context(IOStream.set_default(self.iostream))
        if not seams.can_set_context_stream():
            emit_payload(self._sink, "error", ErrorPayload(
                message="AG2's run() family (run, a_run, run_iter, run_group_chat...) is not captured in this "
                        "run: autogen.io.base.IOStream._default_io_stream is no longer a ContextVar (isolane "
                        f"supports {seams.supported_range()})", error_type="CaptureUnavailable"))

        stack.callback(BetaCapture(self._sink, self.calls, active=self.is_active).install())
        stack.callback(RetryWatch(self._sink, active=self.is_active).install())
        stack.callback(self._deactivate)  # runs first on exit: nothing is emitted while unwinding

    def _deactivate(self) -> None:
        self._active = False


def _restore_runtime_logging(previous: Any) -> None:
    runtime_logging.stop()
    # stop() leaves our logger installed (inactive); put back the one that ran before, if any.
    setattr(runtime_logging, "autogen_logger", previous)  # noqa: B010 - typed None in AG2
    setattr(runtime_logging, "is_logging", previous is not None)  # noqa: B010


def _restore_global_iostream(previous: Any) -> None:
    if previous is not None:
        IOStream.set_global_default(previous)
    else:
        IOStream._global_default = None


@contextmanager
def capture_ag2(sink: Sink, *, prices: Mapping[str, tuple[float, float]] | None = None) -> Iterator[CaptureSession]:
    """Capture everything AG2 does in this process, as typed events sent to ``sink``.

    ``prices`` overrides the price of a model (USD per 1k prompt tokens, per 1k completion
    tokens); otherwise AG2's price table is used, and a model nobody prices is reported with
    ``cost=None``/``cost_source="unknown_model"`` plus one ``error`` event per model.

    Raises :class:`RunStateError` if a capture is already active in this process, and
    :class:`~isolane.errors.ConfigError` for a malformed price. Everything installed is removed
    on exit, also when the block raises.
    """
    global _active_session
    session = CaptureSession(sink, prices=prices)
    with _ACTIVE_LOCK:
        if _active_session is not None:
            raise RunStateError("an AG2 capture is already active in this process (the runtime logger and "
                                "the global IOStream are process-wide); end it before starting another")
        _active_session = session
    try:
        with ExitStack() as stack:
            session._install(stack)
            logger.debug("AG2 capture installed")
            yield session
    finally:
        with _ACTIVE_LOCK:
            _active_session = None
        logger.debug("AG2 capture removed")
