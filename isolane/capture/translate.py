"""Turn what AG2 reports (structured IOStream events, messages seen by send hooks) into isolane
events, with the bookkeeping that needs memory across channels.

::

    IOStream.send(event) ──▶ Translator.on_ag2_event ─┐
    send hook (silent)   ──▶ Translator.on_message  ──┼──▶ emit_payload(LockedSink, type, Payload)
    IOStream.print/input ──▶ on_print / on_input   ───┘

AG2 0.14 event (``event.type``)                    isolane event
──────────────────────────────────────────────     ─────────────────────────────────────────────
TextEvent (``text``)                               ``agent_message``
ToolCallEvent (``tool_call``)                      ``agent_message`` if it has text, ``tool_call`` per call
FunctionCallEvent (``function_call``)              ``agent_message`` if it has text, ``tool_call``
ExecuteFunctionEvent (``execute_function``)        ``tool_call`` unless that call id was already seen
ExecutedFunctionEvent (``executed_function``)      ``tool_result`` (``is_error`` = not is_exec_success)
ToolResponseEvent (``tool_response``)              ``tool_result`` per response unless already seen
FunctionResponseEvent (``function_response``)      nothing: ExecutedFunctionEvent reported it
GroupChatRunChatEvent (``group_chat_run_chat``)    ``handoff`` (from the last speaker to ``speaker``)
InputRequestEvent / AsyncInputRequestEvent         ``human_input_request``
ErrorEvent (``error``)                             ``error``
PrintEvent (``print``)                             ``output`` (stream ``stdout``)
ExecuteCodeBlockEvent (legacy code execution)      ``code_execution`` with ``exit_code=None``
GenerateCodeExecutionReplyEvent                    nothing when the agent's executor is wrapped
                                                   (the wrapper emits ``code_execution``)
StreamEvent (``stream``)                           nothing (token chunks; the whole message follows)
RunCompletionEvent (``run_completion``)            ``custom`` ``ag2.run_completion`` with ``summary`` and
                                                   ``last_speaker`` only (the history and cost it
                                                   carries were recorded as they happened)
any other (TerminationEvent, UsingAutoReplyEvent,  ``custom`` named ``ag2.<type>`` with the
SelectSpeakerEvent, PostCarryover..., ...)         event's fields under ``fields``

A message reaches capture once: non-silent sends through the IOStream (AG2 prints them when the
recipient receives them), silent sends through the sender's ``process_message_before_send`` hook
(``silent=True`` on the event; a group chat manager's broadcasts are such sends, with the original
speaker in the extra key ``author``). A ``handoff`` comes from AG2's ``GroupChatRunChatEvent``,
which AG2 does not send when the manager is ``silent``; ``from_agent`` is the sender of the last
non-silent message. Tool calls and results carry ids, so the several places AG2 shows
one call (the suggesting message, silent group-chat broadcasts of it, the execution events, the
response message) collapse into one ``tool_call`` and one ``tool_result`` per id.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from pydantic import BaseModel

from isolane.capture.sink import LockedSink, emit_payload, to_data
from isolane.schemas.payloads import (
    AgentMessage,
    CodeExecution,
    Custom,
    ErrorPayload,
    Handoff,
    HumanInputRequest,
    Output,
    ToolCall,
    ToolResult,
)

__all__ = ["Translator", "event_type"]

logger = logging.getLogger(__name__)

_IGNORED: Final = frozenset({"stream", "function_response", "input_response"})


def event_type(event: Any) -> str:
    """AG2's type string of an event: the wrapper's ``type`` (``"tool_call"``), or for a bare
    event class the same derivation AG2 uses (``ToolCallEvent`` -> ``"tool_call"``)."""
    type_ = getattr(event, "type", None)
    if isinstance(type_, str) and hasattr(event, "content"):
        return type_
    name = type(event).__name__
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return snake.removesuffix("_event")


def _inner(event: Any) -> Any:
    """The event proper: AG2 wraps each event class in a ``{type, content}`` model."""
    content = getattr(event, "content", None)
    if isinstance(getattr(event, "type", None), str) and isinstance(content, BaseModel):
        return content
    return event


def _name(agent: Any) -> str | None:
    if agent is None:
        return None
    return str(getattr(agent, "name", agent))


def _arguments(raw: Any) -> Any:
    """Tool arguments as sent (JSON text) decoded when possible."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _plain(value: Any) -> Any:
    """A pydantic model (AG2's ``ToolCall``, ``FunctionCall``...) as a dict; anything else as is."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


class Translator:
    """Maps AG2 events and messages to isolane events; every method is thread-safe.

    ``code_agents`` holds the names of agents whose code executor capture wraps (their
    ``GenerateCodeExecutionReplyEvent`` is redundant).
    """

    _HANDLERS: ClassVar[dict[str, Callable[[Translator, Any], None]]] = {}

    def __init__(self, sink: LockedSink) -> None:
        self.sink = sink
        self.code_agents: set[str] = set()
        self._calls_seen: set[str] = set()
        self._results_seen: set[str] = set()
        self._tool_names: dict[str, str] = {}
        self._last_sender: str | None = None

    # -- entry points -----------------------------------------------------------------------------

    def on_ag2_event(self, event: Any) -> None:
        """Translate one AG2 event (wrapped or bare)."""
        type_ = event_type(event)
        if type_ in _IGNORED:
            return
        handler = self._HANDLERS.get(type_)
        with self.sink.lock:
            if handler is None:
                self._custom(type_, _inner(event))
            else:
                handler(self, _inner(event))

    def on_message(self, sender: Any, recipient: Any, message: Mapping[str, Any] | str, *, silent: bool) -> None:
        """Translate one message ``sender`` sends to ``recipient`` (names or agents)."""
        with self.sink.lock:
            self._message(_name(sender) or "", _name(recipient), message, silent=silent)

    def on_print(self, text: str) -> None:
        """Plain text AG2 printed through the IOStream."""
        emit_payload(self.sink, "output", Output(stream="stdout", text=text))

    def on_input_request(self, prompt: str, *, password: bool = False, request_id: str | None = None) -> None:
        """AG2 asks a human for input."""
        emit_payload(self.sink, "human_input_request", HumanInputRequest(
            request_id=request_id or uuid.uuid4().hex, prompt=prompt, kind="password" if password else "text"))

    # -- messages ---------------------------------------------------------------------------------

    def _message(self, sender: str, recipient: str | None, message: Mapping[str, Any] | str, *,
                 silent: bool) -> None:
        msg: Mapping[str, Any] = {"content": message} if isinstance(message, str) else message
        role = msg.get("role")
        if role == "tool" or msg.get("tool_responses"):
            responses = msg.get("tool_responses") or [msg]
            for response in map(_plain, responses):
                self._tool_result(response.get("tool_call_id"), None, sender, response.get("content"),
                                  is_error=False, emit_unkeyed=not silent)
            self._spoke(sender, silent)
            return
        if role == "function":
            self._spoke(sender, silent)
            return  # legacy function result: ExecutedFunctionEvent reported it
        content = msg.get("content")
        calls = [_plain(c) for c in msg.get("tool_calls") or ()]
        function_call = _plain(msg.get("function_call"))
        # A group chat stores a tool-call message's missing content as the text "None".
        has_text = content not in (None, "") and not ((calls or function_call) and content == "None")
        if has_text or not (calls or function_call):
            author = msg.get("name")
            emit_payload(self.sink, "agent_message", AgentMessage(
                sender=sender, recipient=recipient, content=to_data(content),
                role=role if isinstance(role, str) else None, silent=silent),
                extra={"author": author} if isinstance(author, str) and author != sender else None)
        for call in calls:
            function = _plain(call.get("function")) or {}
            self._tool_call(call.get("id"), function.get("name") or "", sender,
                            _arguments(function.get("arguments")), emit_unkeyed=not silent)
        if isinstance(function_call, Mapping):
            self._tool_call(None, function_call.get("name") or "", sender,
                            _arguments(function_call.get("arguments")), emit_unkeyed=not silent)
        self._spoke(sender, silent)

    def _spoke(self, sender: str, silent: bool) -> None:
        if not silent:
            self._last_sender = sender

    def _tool_call(self, call_id: str | None, tool: str, agent: str | None, arguments: Any, *,
                   emit_unkeyed: bool) -> None:
        if call_id is None:
            if not emit_unkeyed:
                return
        elif call_id in self._calls_seen:
            return
        else:
            self._calls_seen.add(call_id)
            self._tool_names[call_id] = tool
        emit_payload(self.sink, "tool_call", ToolCall(
            tool=tool, call_id=call_id, agent=agent, arguments=to_data(arguments)))

    def _tool_result(self, call_id: str | None, tool: str | None, agent: str | None, content: Any, *,
                     is_error: bool, emit_unkeyed: bool) -> None:
        if call_id is None:
            if not emit_unkeyed:
                return
        elif call_id in self._results_seen:
            return
        else:
            self._results_seen.add(call_id)
            tool = tool or self._tool_names.get(call_id)
        emit_payload(self.sink, "tool_result", ToolResult(
            call_id=call_id, tool=tool, agent=agent, content=to_data(content), is_error=is_error))

    # -- AG2 events (registered by type string below) ---------------------------------------------

    def _text(self, e: Any) -> None:
        self._message(e.sender, e.recipient, {"content": e.content}, silent=False)

    def _tool_call_event(self, e: Any) -> None:
        self._message(e.sender, e.recipient, {"content": e.content, "tool_calls": e.tool_calls}, silent=False)

    def _function_call_event(self, e: Any) -> None:
        self._message(e.sender, e.recipient, {"content": e.content, "function_call": e.function_call},
                      silent=False)

    def _tool_response_event(self, e: Any) -> None:
        self._message(e.sender, e.recipient, {"role": "tool", "content": e.content,
                                              "tool_responses": e.tool_responses}, silent=False)

    def _execute_function(self, e: Any) -> None:
        # Only ids not seen yet: the suggesting message normally reported the call first.
        if e.call_id is not None:
            self._tool_call(e.call_id, e.func_name, e.recipient, e.arguments, emit_unkeyed=False)

    def _executed_function(self, e: Any) -> None:
        self._tool_result(e.call_id, e.func_name, e.recipient, e.content,
                          is_error=not e.is_exec_success, emit_unkeyed=True)

    def _handoff(self, e: Any) -> None:
        emit_payload(self.sink, "handoff", Handoff(
            to_agent=e.speaker, from_agent=self._last_sender, reason="group_chat_next_speaker"))

    def _input_request(self, e: Any) -> None:
        self.on_input_request(e.prompt, password=bool(getattr(e, "password", False)), request_id=str(e.uuid))

    def _error(self, e: Any) -> None:
        error = e.error
        emit_payload(self.sink, "error", ErrorPayload(
            message=str(error), error_type=type(error).__name__ if isinstance(error, BaseException) else ""))

    def _print(self, e: Any) -> None:
        self.on_print(str(getattr(e, "sep", " ")).join(str(o) for o in e.objects) + str(getattr(e, "end", "\n")))

    def _legacy_code_block(self, e: Any) -> None:
        emit_payload(self.sink, "code_execution", CodeExecution(
            language=e.language, exit_code=None, code=e.code, agent=e.recipient), extra={"legacy": True})

    def _code_reply(self, e: Any) -> None:
        if e.recipient not in self.code_agents:
            self._custom("generate_code_execution_reply", e)

    def _run_completion(self, e: Any) -> None:
        emit_payload(self.sink, "custom", Custom(name="ag2.run_completion"), extra={"fields": {
            "summary": to_data(getattr(e, "summary", None)),
            "last_speaker": _name(getattr(e, "last_speaker", None))}})

    def _custom(self, type_: str, e: Any) -> None:
        fields = to_data(e)
        if isinstance(fields, dict):
            fields.pop("uuid", None)
        emit_payload(self.sink, "custom", Custom(name=f"ag2.{type_}"), extra={"fields": fields})


Translator._HANDLERS.update({
    "text": Translator._text,
    "tool_call": Translator._tool_call_event,
    "function_call": Translator._function_call_event,
    "tool_response": Translator._tool_response_event,
    "execute_function": Translator._execute_function,
    "executed_function": Translator._executed_function,
    "group_chat_run_chat": Translator._handoff,
    "input_request": Translator._input_request,
    "async_input_request": Translator._input_request,
    "error": Translator._error,
    "print": Translator._print,
    "execute_code_block": Translator._legacy_code_block,
    "generate_code_execution_reply": Translator._code_reply,
    "run_completion": Translator._run_completion,
})
