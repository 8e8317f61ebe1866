"""The ``autogen.beta`` channel: every turn of a beta ``Agent``, through AG2's own middleware API.

::

    agent.ask(...) / agent.run(...) / reply.ask(...) / resume / subtasks / agent.as_tool(...)
      └─ Agent._turn_scope(..., additional_middleware=(..., TurnRecorder))   (seams.add_turn_middleware)
           TurnRecorder (innermost, a beta BaseMiddleware)
             on_turn          ─▶ ``agent_message`` for the request's text (sender ``user``)
             on_llm_call      ─▶ LlmCalls: ``llm_call`` + ``cost_update`` (``error`` when it fails);
                                 ``agent_message`` for the model's text; ``tool_call`` per call asked
             on_tool_execution ─▶ ``tool_result`` (``is_error`` for a ToolErrorEvent)

The beta client does not report to ``autogen.runtime_logging``, and a beta ``Agent`` takes its
middleware per instance or per call: nothing process-wide. Every turn, whatever the entry
point, goes through ``Agent._turn_scope``, so capture adds its middleware there (the one AG2
internal used, see :mod:`~isolane.capture.seams`); everything it records comes from the public
middleware hooks. Being innermost, it sees each LLM request as made (a ``RetryMiddleware``'s
attempts included) and each tool as run. Not recorded: the internal calls of history compaction
and memory aggregation (they bypass the middleware chain), and human input (``on_human_input``
is left to the agent's own hook).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from autogen.beta.events import (
    BaseEvent,
    ModelRequest,
    ModelResponse,
    TextInput,
    ToolCallEvent,
    ToolErrorEvent,
    ToolResultEvent,
)
from autogen.beta.middleware import BaseMiddleware

from isolane.capture import seams
from isolane.capture.calls import LlmCalls
from isolane.capture.retries import calling
from isolane.capture.sink import LockedSink, emit_payload, to_data
from isolane.schemas.payloads import AgentMessage, ErrorPayload, ToolCall, ToolResult

__all__ = ["BetaCapture"]

logger = logging.getLogger(__name__)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _arguments(call: ToolCallEvent) -> Any:
    try:
        return call.serialized_arguments
    except ValueError:  # not JSON: keep the text the model sent
        return call.arguments


def _text(parts: Sequence[Any]) -> str:
    return "\n".join(p.content for p in parts if isinstance(p, TextInput))


class BetaCapture:
    """Adds a :class:`TurnRecorder` to every beta ``Agent`` turn while ``active()``."""

    def __init__(self, sink: LockedSink, calls: LlmCalls, *, active: Callable[[], bool]) -> None:
        self.sink = sink
        self.calls = calls
        self._active = active

    def install(self) -> Callable[[], None]:
        """Start recording beta turns; returns the undo. When the installed AG2 lacks the seam,
        records one ``error`` event saying beta agents are not captured, and returns a no-op."""
        try:
            return seams.add_turn_middleware(self._for_turn)
        except LookupError as exc:
            logger.warning("autogen.beta agents are not captured: %s", exc)
            emit_payload(self.sink, "error", ErrorPayload(
                message=f"autogen.beta agents are not captured in this run: {exc} (isolane supports "
                        f"{seams.supported_range()})",
                error_type="CaptureUnavailable"))
            return lambda: None

    def _for_turn(self, agent: Any) -> Callable[[BaseEvent, Any], BaseMiddleware] | None:
        if not self._active():
            return None
        model = getattr(getattr(agent, "config", None), "model", None)
        return functools.partial(TurnRecorder, capture=self, agent=str(getattr(agent, "name", "")) or None,
                                 model=model if isinstance(model, str) else None)


class TurnRecorder(BaseMiddleware):
    """One turn of one beta agent, recorded (a beta ``BaseMiddleware``; changes nothing)."""

    def __init__(self, event: BaseEvent, context: Any, *, capture: BetaCapture, agent: str | None,
                 model: str | None) -> None:
        super().__init__(event, context)
        self._capture = capture
        self._agent = agent
        self._model = model

    async def on_turn(self, call_next: Callable[[BaseEvent, Any], Awaitable[ModelResponse]],
                      event: BaseEvent, context: Any) -> ModelResponse:
        """Record the request's text, then run the turn."""
        if isinstance(event, ModelRequest) and (text := _text(event.parts)):
            emit_payload(self._capture.sink, "agent_message", AgentMessage(
                sender="user", recipient=self._agent, content=text, role="user"))
        return await call_next(event, context)

    async def on_llm_call(self, call_next: Callable[[Sequence[BaseEvent], Any], Awaitable[ModelResponse]],
                          events: Sequence[BaseEvent], context: Any) -> ModelResponse:
        """Make the call (naming the caller for retries), then record it and what it asked for."""
        started = time.monotonic()
        try:
            with calling(self._agent, self._model):
                response = await call_next(events, context)
        except Exception as exc:
            self._capture.calls.failed(agent=self._agent, model=self._model or "",
                                       message=f"{type(exc).__name__}: {exc}",
                                       duration_s=time.monotonic() - started)
            raise
        usage = response.usage
        self._capture.calls.answered(
            agent=self._agent, models=(response.model or "", self._model or ""),
            prompt_tokens=_int(usage.prompt_tokens), completion_tokens=_int(usage.completion_tokens),
            total_tokens=_int(usage.total_tokens), duration_s=time.monotonic() - started)
        sink = self._capture.sink
        with sink.lock:  # the message and its calls stay together
            if response.message is not None and response.message.content:
                emit_payload(sink, "agent_message", AgentMessage(
                    sender=self._agent or "", content=response.message.content, role="assistant"))
            for call in response.tool_calls.calls:
                emit_payload(sink, "tool_call", ToolCall(
                    tool=call.name, call_id=call.id, agent=self._agent, arguments=to_data(_arguments(call))))
        return response

    async def on_tool_execution(self, call_next: Callable[[ToolCallEvent, Any], Awaitable[Any]],
                                event: ToolCallEvent, context: Any) -> Any:
        """Run the tool, then record its result (an exception is recorded as an error, re-raised)."""
        try:
            result = await call_next(event, context)
        except Exception as exc:
            self._result(event, f"{type(exc).__name__}: {exc}", is_error=True)
            raise
        if isinstance(result, ToolErrorEvent):
            self._result(event, f"{type(result.error).__name__}: {result.error}", is_error=True)
        elif isinstance(result, ToolResultEvent):
            self._result(event, _result_content(result), is_error=False)
        return result

    def _result(self, call: ToolCallEvent, content: Any, *, is_error: bool) -> None:
        emit_payload(self._capture.sink, "tool_result", ToolResult(
            call_id=call.id, tool=call.name, agent=self._agent, content=to_data(content), is_error=is_error))


def _result_content(result: ToolResultEvent) -> Any:
    """A tool's result as recorded: its text, its data, or (several parts) the list of them."""
    contents = [getattr(p, "content", None) if isinstance(p, TextInput) else getattr(p, "data", repr(p))
                for p in result.result.parts]
    return contents[0] if len(contents) == 1 else contents
