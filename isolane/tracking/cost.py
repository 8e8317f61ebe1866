"""What LLM calls cost: the one rollup every reader uses (CLI ``cost``/``show``, compare, REST
``/cost``, the page), so that no two of them can disagree.

::

    Store.llm_calls(run) ─▶ roll_up(calls) ─▶ CostRollup(total, by model / agent / node)
                                               └─ .as_data(): the JSON shape of CLI --json,
                                                  REST /cost and the page
    worker's last cost_update ─▶ totals_of_update(data) ─▶ the same CostTotals

Rules, the same everywhere:

* Every ``llm_call`` is a call; one answered from AG2's cache (``cached``) is counted in
  ``cached_calls``, costs 0 and its tokens are *not billed*: ``prompt_tokens`` and
  ``completion_tokens`` are billed tokens, ``cached_tokens`` the ones the cache answered with.
* ``cost`` sums the calls whose price is known; it is ``None`` (JSON ``null``) when no call is
  priced -- a run of unpriced calls is never shown as $0. ``unpriced_calls`` counts the others
  and ``unpriced_models`` names their models; ``complete`` says whether ``cost`` is the whole
  spend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = ["GROUPINGS", "CostRollup", "CostTotals", "money", "roll_up", "totals_of_update"]

_DIGITS: Final = 10  # cost is summed exactly (fsum) and rounded once, here, for every reader


class CallLike(Protocol):
    """What the rollup reads of a call (a stored ``LlmCallRow`` has it)."""

    @property
    def model(self) -> str: ...
    @property
    def agent(self) -> str | None: ...
    @property
    def node_id(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost(self) -> float | None: ...
    @property
    def cached(self) -> bool: ...


#: How a call is assigned to a group (``isolane cost --by``; the ``by_*`` keys of :meth:`CostRollup.as_data`).
GROUPINGS: Final[Mapping[str, Callable[[CallLike], str]]] = {
    "model": lambda call: call.model,
    "agent": lambda call: call.agent or "-",
    "node": lambda call: call.node_id or "-",
}


@dataclass(frozen=True, slots=True)
class CostTotals:
    """The totals of some LLM calls (see the module docstring for the rules)."""

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = None
    unpriced_calls: int = 0
    unpriced_models: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    @property
    def total_tokens(self) -> int:
        """Billed tokens: ``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def complete(self) -> bool:
        """Whether every call is priced, so ``cost`` is the whole spend."""
        return self.unpriced_calls == 0

    @classmethod
    def of(cls, calls: Iterable[CallLike]) -> CostTotals:
        """The totals of ``calls``."""
        calls = list(calls)
        billed = [c for c in calls if not c.cached]
        priced = [c.cost for c in calls if c.cost is not None]
        return cls(
            calls=len(calls),
            cached_calls=len(calls) - len(billed),
            prompt_tokens=sum(c.prompt_tokens for c in billed),
            completion_tokens=sum(c.completion_tokens for c in billed),
            cached_tokens=sum(c.prompt_tokens + c.completion_tokens for c in calls if c.cached),
            cost=round(math.fsum(priced), _DIGITS) if priced else None,
            unpriced_calls=len(calls) - len(priced),
            unpriced_models=tuple(sorted({c.model for c in calls if c.cost is None})),
            models=tuple(sorted({c.model for c in calls})),
        )

    def as_data(self) -> dict[str, Any]:
        """The JSON shape (lists for tuples; ``total_tokens`` and ``complete`` included)."""
        return {"calls": self.calls, "cached_calls": self.cached_calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                "cached_tokens": self.cached_tokens, "cost": self.cost, "unpriced_calls": self.unpriced_calls,
                "unpriced_models": list(self.unpriced_models), "models": list(self.models),
                "complete": self.complete}


@dataclass(frozen=True, slots=True)
class CostRollup:
    """A run's totals, and the same per model, agent and node (each in order of first call)."""

    total: CostTotals
    groups: Mapping[str, Mapping[str, CostTotals]] = field(default_factory=dict)

    def by(self, grouping: str) -> Mapping[str, CostTotals]:
        """The totals per group of ``grouping`` (a key of :data:`GROUPINGS`)."""
        return self.groups[grouping]

    def as_data(self) -> dict[str, Any]:
        """The total's fields at the top level, and ``by_model``/``by_agent``/``by_node`` maps."""
        return {**self.total.as_data(),
                **{f"by_{name}": {key: t.as_data() for key, t in groups.items()}
                   for name, groups in self.groups.items()}}


def roll_up(calls: Sequence[CallLike]) -> CostRollup:
    """The rollup of a run's calls (in seq order, as the store returns them)."""
    groups: dict[str, dict[str, list[CallLike]]] = {name: {} for name in GROUPINGS}
    for call in calls:
        for name, key in GROUPINGS.items():
            groups[name].setdefault(key(call), []).append(call)
    return CostRollup(CostTotals.of(calls), {name: {key: CostTotals.of(members) for key, members in by.items()}
                                             for name, by in groups.items()})


def totals_of_update(data: Mapping[str, Any]) -> CostTotals:
    """The worker's running totals (a ``cost_update`` payload) read by the same rules: ``cost``
    is ``None`` when none of its calls is priced. (A ``cost_update`` names no models.)"""
    calls = int(data.get("calls", 0))
    unpriced = int(data.get("unpriced_calls", 0))
    total = float(data.get("total_cost", 0.0))
    return CostTotals(calls=calls, cached_calls=int(data.get("cached_calls", 0)),
                      prompt_tokens=int(data.get("prompt_tokens", 0)),
                      completion_tokens=int(data.get("completion_tokens", 0)),
                      cost=round(total, _DIGITS) if calls - unpriced > 0 else None, unpriced_calls=unpriced)


def money(totals: CostTotals) -> str:
    """The cost as people read it: ``$0.001234``, ``$0.0012 + 2 unpriced``, ``unpriced (3 calls)``,
    or ``-`` without calls."""
    if totals.calls == 0:
        return "-"
    if totals.cost is None:
        return f"unpriced ({totals.unpriced_calls} call{'s' if totals.unpriced_calls != 1 else ''})"
    text = f"${totals.cost:.6f}"
    return f"{text} + {totals.unpriced_calls} unpriced" if totals.unpriced_calls else text
