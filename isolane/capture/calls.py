"""Recording LLM calls: the one place every capture channel turns a call into events.

::

    runtime logger (ConversableAgent, groups) ─┐
    beta middleware (autogen.beta Agent)      ─┼─▶ LlmCalls.answered(...) ─▶ ``llm_call`` then
                                               │                              ``cost_update``
                                               │   (first call of an unpriced model: one
                                               │    ``error`` UnknownModelPrice before it)
                                               └─▶ LlmCalls.failed(...)   ─▶ ``error`` LlmCallFailed

The ``llm_call`` and its ``cost_update`` are emitted under the sink's lock, so no other thread's
event lands between them and each ``cost_update`` holds the totals including its call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from isolane.capture.pricing import CostLedger, CostTotals
from isolane.capture.sink import LockedSink, emit_payload
from isolane.schemas.payloads import CostUpdate, ErrorPayload, LlmCall

__all__ = ["LlmCalls"]

logger = logging.getLogger(__name__)


class LlmCalls:
    """Prices answered LLM calls with ``ledger`` and reports every call to ``sink``."""

    def __init__(self, sink: LockedSink, ledger: CostLedger) -> None:
        self._sink = sink
        self._ledger = ledger

    @property
    def totals(self) -> CostTotals:
        """Calls, tokens and cost recorded so far."""
        with self._sink.lock:
            return self._ledger.totals

    def answered(
        self,
        *,
        agent: str | None,
        models: Sequence[str],
        prompt_tokens: int,
        completion_tokens: int,
        total_tokens: int = 0,
        duration_s: float = 0.0,
        cached: bool = False,
        reported_cost: float | None = None,
    ) -> None:
        """One call that was answered. ``models`` are the names to price it by, best first (the
        model that answered, then the one requested); the first non-empty one is recorded."""
        names = [m for m in models if m]
        model = names[0] if names else "unknown"
        with self._sink.lock:
            quote, first_unknown = self._ledger.record(
                names, prompt_tokens, completion_tokens, reported_cost=reported_cost, cached=cached)
            if first_unknown:
                logger.warning("no price known for model %r; its calls are recorded with cost=None", model)
                emit_payload(self._sink, "error", ErrorPayload(
                    message=(f"no price is known for model {model!r}: its calls are recorded with cost=null "
                             f"(cost_source='unknown_model'); pass prices={{{model!r}: "
                             "(usd_per_1k_prompt, usd_per_1k_completion)} to capture_ag2 to price them"),
                    error_type="UnknownModelPrice"), extra={"model": model})
            emit_payload(self._sink, "llm_call", LlmCall(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                total_tokens=total_tokens or prompt_tokens + completion_tokens, cost=quote.cost,
                cost_source=quote.source, duration_s=duration_s, cached=cached, agent=agent))
            totals = self._ledger.totals
            emit_payload(self._sink, "cost_update", CostUpdate(
                total_cost=totals.total_cost, prompt_tokens=totals.prompt_tokens,
                completion_tokens=totals.completion_tokens, unpriced_calls=totals.unpriced_calls,
                calls=totals.calls, cached_calls=totals.cached_calls))

    def failed(self, *, agent: str | None, model: str, message: str, duration_s: float = 0.0) -> None:
        """One call that got no answer (the client gave up): an ``error``, not an ``llm_call``
        (nothing was answered or billed)."""
        emit_payload(self._sink, "error", ErrorPayload(message=f"LLM call failed: {message}",
                                                       error_type="LlmCallFailed"),
                     extra={"agent": agent, "model": model, "duration_s": duration_s})
