"""What an LLM call cost, and where that price came from; the running totals of a run.

Cost sources (the stored ``llm_call.cost_source`` strings):

``config``
    a price given to :func:`~isolane.capture.capture_ag2` (``prices={model: (usd_per_1k_prompt,
    usd_per_1k_completion)}``); it wins over everything else.
``ag2_price_table``
    AG2's own table, ``autogen.oai.openai_utils.OAI_PRICE1K`` (what AG2's OpenAI client bills).
``ag2_reported``
    the cost AG2 reported for the call when it differs from its table or the model is not in it:
    a ``price`` set in the AG2 ``llm_config``, or a non-OpenAI client's own price list.
``cache``
    the answer came from AG2's response cache: nothing was spent (``cost=0.0``).
``unknown_model``
    nobody knows the price: ``cost`` is ``None`` -- never a silent 0. Configure a price.

A model is looked up by the name the response reports, then by the name that was requested.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, cast

from autogen.oai.openai_utils import OAI_PRICE1K

from isolane.errors import ConfigError

__all__ = [
    "COST_SOURCES",
    "CostLedger",
    "CostTotals",
    "PriceBook",
    "Quote",
]

COST_SOURCES: Final = frozenset({"config", "ag2_price_table", "ag2_reported", "cache", "unknown_model"})

PriceEntry = float | tuple[float, float]


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one call: ``cost`` in USD (``None`` when unknown) and its ``source``."""

    cost: float | None
    source: str


def _cost(price: PriceEntry, prompt_tokens: int, completion_tokens: int) -> float:
    if isinstance(price, tuple):
        return (price[0] * prompt_tokens + price[1] * completion_tokens) / 1000
    return price * (prompt_tokens + completion_tokens) / 1000  # AG2's single-rate entries


class PriceBook:
    """Prices per 1k tokens: isolane's overrides over AG2's table.

    ``overrides`` maps a model name to ``(usd_per_1k_prompt, usd_per_1k_completion)``; both must
    be finite and non-negative. ``table`` defaults to AG2's ``OAI_PRICE1K``.
    """

    def __init__(
        self,
        overrides: Mapping[str, tuple[float, float]] | None = None,
        *,
        table: Mapping[str, PriceEntry] | None = None,
    ) -> None:
        self.overrides: dict[str, tuple[float, float]] = {}
        for model, price in (overrides or {}).items():
            if not isinstance(price, tuple | list) or len(price) != 2:
                raise ConfigError(f"the price of {model!r} must be (usd_per_1k_prompt, usd_per_1k_completion), "
                                  f"got {price!r}")
            prompt, completion = (float(p) for p in price)
            if not (math.isfinite(prompt) and math.isfinite(completion)) or prompt < 0 or completion < 0:
                raise ConfigError(f"the price of {model!r} must be finite and non-negative, got {price!r}")
            self.overrides[model] = (prompt, completion)
        # AG2 declares its table loosely; its values are a rate or a (prompt, completion) pair.
        self.table = cast(Mapping[str, PriceEntry], OAI_PRICE1K) if table is None else table

    def quote(
        self,
        models: Iterable[str],
        prompt_tokens: int,
        completion_tokens: int,
        *,
        reported_cost: float | None = None,
    ) -> Quote:
        """Price a call; ``models`` are the names to look up, best first (response, request)."""
        names = [m for m in models if m]
        for name in names:
            if name in self.overrides:
                return Quote(_cost(self.overrides[name], prompt_tokens, completion_tokens), "config")
        reported = reported_cost if reported_cost is not None and reported_cost > 0 else None
        for name in names:
            if name in self.table:
                cost = _cost(self.table[name], prompt_tokens, completion_tokens)
                if reported is not None and not math.isclose(reported, cost, rel_tol=1e-9, abs_tol=1e-15):
                    return Quote(reported, "ag2_reported")
                return Quote(cost, "ag2_price_table")
        if reported is not None:
            return Quote(reported, "ag2_reported")
        return Quote(None, "unknown_model")


@dataclass(frozen=True, slots=True)
class CostTotals:
    """Running totals of a capture session.

    Tokens count calls actually made (cache hits excluded); ``total_cost`` sums the priced calls
    and ``unpriced_calls`` counts the calls whose price is unknown.
    """

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_cost: float = 0.0
    unpriced_calls: int = 0
    unpriced_models: frozenset[str] = field(default_factory=frozenset)


class CostLedger:
    """Prices calls with a :class:`PriceBook` and keeps the totals (not thread-safe by itself:
    the capture session calls it under its lock)."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book
        self.totals = CostTotals()

    def record(
        self,
        models: Iterable[str],
        prompt_tokens: int,
        completion_tokens: int,
        *,
        reported_cost: float | None,
        cached: bool,
    ) -> tuple[Quote, bool]:
        """Price one call and add it to the totals.

        Returns the quote and whether this is the first unpriced call of its model (the caller
        warns once per model).
        """
        names = [m for m in models if m]
        t = self.totals
        if cached:
            self.totals = CostTotals(t.calls + 1, t.cached_calls + 1, t.prompt_tokens, t.completion_tokens,
                                     t.total_cost, t.unpriced_calls, t.unpriced_models)
            return Quote(0.0, "cache"), False
        quote = self.book.quote(names, prompt_tokens, completion_tokens, reported_cost=reported_cost)
        first_unknown = False
        unpriced, unpriced_models = t.unpriced_calls, t.unpriced_models
        if quote.cost is None:
            unpriced += 1
            model = names[0] if names else ""
            first_unknown = model not in unpriced_models
            unpriced_models = unpriced_models | {model}
        self.totals = CostTotals(
            t.calls + 1, t.cached_calls, t.prompt_tokens + prompt_tokens, t.completion_tokens + completion_tokens,
            t.total_cost + (quote.cost or 0.0), unpriced, unpriced_models,
        )
        return quote, first_unknown
