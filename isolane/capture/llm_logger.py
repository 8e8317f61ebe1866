"""The runtime-logger channel: every LLM call AG2 makes, with usage and cost.

::

    OpenAIWrapper.create ─ log_chat_completion ─▶ CaptureLogger ─▶ LlmCalls: ``llm_call``, ``cost_update``
    ConversableAgent()   ─ log_new_agent       ─▶               ─▶ Attacher.note_new (auto-attach)
    receive / tool use   ─ log_event, ...      ─▶               ─▶ Attacher.seen
                                                     └─▶ delegate (a logger that was running before)

``autogen.runtime_logging`` is the only channel that sees every call -- including the group
chat's speaker-selection calls, which ``gather_usage_summary`` misses -- because
``OpenAIWrapper.create`` reports each one there. It is process-global: the session starts it
on entry and on exit stops it and puts back any logger that was running before (which keeps
receiving every record meanwhile).

A failed call (AG2 logs the error text instead of a response) becomes an ``error`` event with
``error_type="LlmCallFailed"``; it is not an ``llm_call`` (nothing was answered or billed). A
cache hit (``is_cached``) is an ``llm_call`` with ``cached=True`` and cost 0; its tokens are not
billed.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from autogen.logger.base_logger import BaseLogger, LLMConfig

from isolane.capture.calls import LlmCalls

if TYPE_CHECKING:
    from autogen import Agent, ConversableAgent, OpenAIWrapper
    from openai import AzureOpenAI, OpenAI
    from openai.types.chat import ChatCompletion

__all__ = ["CaptureLogger"]

logger = logging.getLogger(__name__)

_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # autogen.logger.logger_utils.get_current_ts


def _duration_since(start_time: str) -> float:
    try:
        start = datetime.strptime(start_time, _TS_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (datetime.now(UTC) - start).total_seconds())


def _name(source: Any) -> str | None:
    if source is None:
        return None
    return str(getattr(source, "name", source))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


class CaptureLogger(BaseLogger):
    """An AG2 runtime logger that turns LLM calls into ``llm_call``/``cost_update`` events.

    ``on_new_agent`` and ``on_agent`` receive agents AG2 reports (being built / in use);
    ``active()`` false makes every method a no-op for isolane (the delegate still gets its
    records). ``delegate`` is a logger that was running before and keeps receiving everything.
    """

    def __init__(
        self,
        calls: LlmCalls,
        *,
        on_new_agent: Callable[[Any], None] = lambda agent: None,
        on_agent: Callable[[Any], None] = lambda agent: None,
        active: Callable[[], bool] = lambda: True,
        delegate: BaseLogger | None = None,
    ) -> None:
        self._calls = calls
        self._on_new_agent = on_new_agent
        self._on_agent = on_agent
        self._active = active
        self.delegate = delegate
        self.session_id = str(uuid.uuid4())

    def start(self) -> str:
        """Nothing to open; returns this logger's session id."""
        return self.session_id

    def log_chat_completion(
        self,
        invocation_id: uuid.UUID,
        client_id: int,
        wrapper_id: int,
        source: str | Agent,
        request: dict[str, float | str | list[dict[str, str]]],
        response: str | ChatCompletion,
        is_cached: int,
        cost: float,
        start_time: str,
    ) -> None:
        """Emit ``llm_call`` and ``cost_update`` for one answered call (``error`` for a failure)."""
        if self.delegate is not None:
            self.delegate.log_chat_completion(invocation_id, client_id, wrapper_id, source, request, response,
                                              is_cached, cost, start_time)
        if not self._active():
            return
        self._on_agent(source)
        agent = _name(source)
        requested = request.get("model") if isinstance(request, dict) else None
        requested_model = requested if isinstance(requested, str) else ""
        duration = _duration_since(start_time)
        if isinstance(response, str):
            self._calls.failed(agent=agent, model=requested_model, message=response, duration_s=duration)
            return
        usage = getattr(response, "usage", None)
        prompt = _int(getattr(usage, "prompt_tokens", 0))
        completion = _int(getattr(usage, "completion_tokens", 0))
        answered = getattr(response, "model", None)
        self._calls.answered(
            agent=agent, models=(answered if isinstance(answered, str) else "", requested_model),
            prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=_int(getattr(usage, "total_tokens", 0)), duration_s=duration, cached=bool(is_cached),
            reported_cost=cost if isinstance(cost, int | float) else None)

    def log_new_agent(self, agent: ConversableAgent, init_args: dict[str, Any]) -> None:
        """Note the agent for auto-attachment (it is still being built)."""
        if self.delegate is not None:
            self.delegate.log_new_agent(agent, init_args)
        if self._active():
            self._on_new_agent(agent)

    def log_event(self, source: str | Agent, name: str, **kwargs: dict[str, Any]) -> None:
        """An agent is in use (e.g. it received a message): make sure it is attached."""
        if self.delegate is not None:
            self.delegate.log_event(source, name, **kwargs)
        if self._active():
            self._on_agent(source)

    def log_new_wrapper(self, wrapper: OpenAIWrapper, init_args: dict[str, LLMConfig | list[LLMConfig]]) -> None:
        """Nothing to record."""
        if self.delegate is not None:
            self.delegate.log_new_wrapper(wrapper, init_args)

    def log_new_client(self, client: AzureOpenAI | OpenAI, wrapper: OpenAIWrapper, init_args: dict[str, Any]) -> None:
        """Nothing to record."""
        if self.delegate is not None:
            self.delegate.log_new_client(client, wrapper, init_args)

    def log_function_use(self, source: str | Agent, function: Any, args: dict[str, Any], returns: Any) -> None:
        """An agent ran a tool (the IOStream reports the call itself): make sure it is attached."""
        if self.delegate is not None:
            self.delegate.log_function_use(source, function, args, returns)
        if self._active():
            self._on_agent(source)

    def stop(self) -> None:
        """Nothing to close (the session restores the previous logger)."""

    def get_connection(self) -> None | sqlite3.Connection:
        """No database: ``None``."""
        return None
