"""The one cost rollup (isolane.tracking.cost): the rules every reader shares, on stored call rows."""

from __future__ import annotations

import pytest

from isolane.tracking.cost import CostTotals, money, roll_up, totals_of_update
from isolane.tracking.rows import LlmCallRow


def _call(seq: int, model: str, cost: float | None, *, agent: str = "a", node: str = "n",
          cached: bool = False, prompt: int = 10, completion: int = 5) -> LlmCallRow:
    return LlmCallRow(run_id="r", seq=seq, node_id=node, agent=agent, model=model, prompt_tokens=prompt,
                      completion_tokens=completion, total_tokens=prompt + completion, cost=cost,
                      cost_source="cache" if cached else "x", duration_s=0.0, cached=cached, ts=0.0)


def test_unpriced_calls_are_counted_apart_never_as_zero() -> None:
    """Unpriced calls are counted apart; a group with none priced has cost None, not 0."""
    rollup = roll_up([_call(1, "gpt-4o-mini", 0.25), _call(2, "mystery", None), _call(3, "gpt-4o-mini", 0.5)])
    assert (rollup.total.calls, rollup.total.cost, rollup.total.unpriced_calls) == (3, 0.75, 1)
    assert rollup.total.unpriced_models == ("mystery",) and not rollup.total.complete
    assert rollup.by("model")["mystery"].cost is None and rollup.by("model")["gpt-4o-mini"].cost == 0.75
    assert list(rollup.by("model")) == ["gpt-4o-mini", "mystery"]
    assert roll_up([]).total.cost is None
    only_unpriced = roll_up([_call(1, "local", None), _call(2, "local", None)]).as_data()
    assert only_unpriced["cost"] is None and only_unpriced["by_model"]["local"]["cost"] is None


def test_cached_calls_are_shown_as_cached_and_their_tokens_not_billed() -> None:
    """A cache hit counts as a cached call at cost 0; its tokens are cached_tokens, not billed tokens."""
    calls = [_call(1, "gpt-4o-mini", 0.2, prompt=80, completion=9),
             _call(2, "gpt-4o-mini", 0.1, prompt=15, completion=8),
             _call(3, "gpt-4o-mini", 0.0, cached=True, prompt=48, completion=9)]
    total = roll_up(calls).total
    assert (total.calls, total.cached_calls, total.prompt_tokens, total.completion_tokens) == (3, 1, 95, 17)
    assert (total.cached_tokens, total.total_tokens, total.cost, total.complete) == (57, 112, 0.3, True)
    assert roll_up([_call(1, "m", 0.0, cached=True)]).total.cost == 0.0  # all cached: $0 is known, not null


def test_groups_follow_the_order_of_first_call_and_cover_every_call() -> None:
    """Per agent and per node, groups appear in order of their first call; missing keys are '-'."""
    calls = [_call(1, "m", 1.0, agent="writer", node="b"), _call(2, "m", 2.0, agent="editor", node="a"),
             _call(3, "m", 4.0, agent="writer", node="b")]
    rollup = roll_up(calls)
    assert [(k, t.calls, t.cost) for k, t in rollup.by("agent").items()] == [("writer", 2, 5.0), ("editor", 1, 2.0)]
    assert list(rollup.by("node")) == ["b", "a"]
    data = rollup.as_data()
    assert set(data) >= {"calls", "cost", "by_model", "by_agent", "by_node"} and data["cost"] == 7.0


def test_the_workers_cost_update_is_read_by_the_same_rules() -> None:
    """A cost_update of unpriced calls only reads as cost None; old payloads without counts still read."""
    unpriced = totals_of_update({"total_cost": 0.0, "prompt_tokens": 10, "completion_tokens": 3,
                                 "unpriced_calls": 1, "calls": 1})
    assert (unpriced.cost, unpriced.unpriced_calls, unpriced.total_tokens) == (None, 1, 13)
    priced = totals_of_update({"total_cost": 0.125, "calls": 3, "cached_calls": 1})
    assert (priced.cost, priced.cached_calls) == (0.125, 1)
    assert totals_of_update({"total_cost": 0.0}).cost is None


@pytest.mark.parametrize(("totals", "text"), [
    (CostTotals(), "-"),
    (CostTotals(calls=2, unpriced_calls=2), "unpriced (2 calls)"),
    (CostTotals(calls=3, cost=0.0012, unpriced_calls=1), "$0.001200 + 1 unpriced"),
    (CostTotals(calls=1, cost=0.5), "$0.500000"),
])
def test_money_never_shows_unpriced_as_zero(totals: CostTotals, text: str) -> None:
    """The shared formatting says 'unpriced' when nothing is priced and counts unpriced calls apart."""
    assert money(totals) == text
