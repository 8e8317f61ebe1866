"""``isolane cost RUN [--by model|agent|node] [--json]``: what a run's LLM calls cost, from the store.

::

    Store.llm_calls(run) ──▶ roll_up(calls, by) ──▶ CostRollup(total, groups)
                                                     ├─ table + notes on stdout
                                                     └─ one JSON object (--json)

Totals come from the stored ``llm_calls`` rows only (one per ``llm_call`` event). A call whose model
has no known price has ``cost = None``: it is counted in ``unpriced_calls`` and left out of
``cost``; a run with such calls says so and never shows them as $0. ``cost`` is ``None`` when no
call of the group is priced.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import orjson
import typer
from rich.table import Table
from rich.text import Text

from isolane.cli.console import fail, out
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, open_store
from isolane.tracking.rows import LlmCallRow

__all__ = ["GROUPINGS", "CostRollup", "CostTotals", "cost_command", "roll_up"]

#: ``--by`` choices: how a call is assigned to a group.
GROUPINGS: Final[Mapping[str, Callable[[LlmCallRow], str]]] = {
    "model": lambda call: call.model,
    "agent": lambda call: call.agent or "-",
    "node": lambda call: call.node_id or "-",
}


@dataclass(frozen=True, slots=True)
class CostTotals:
    """The totals of some LLM calls. ``cost`` sums the priced calls (``None`` if none is priced)."""

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    unpriced_calls: int = 0
    unpriced_models: tuple[str, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def complete(self) -> bool:
        """Whether every call is priced, so ``cost`` is the whole spend."""
        return self.unpriced_calls == 0

    @classmethod
    def of(cls, calls: Sequence[LlmCallRow]) -> CostTotals:
        priced = [c.cost for c in calls if c.cost is not None]
        return cls(
            calls=len(calls),
            cached_calls=sum(1 for c in calls if c.cached),
            prompt_tokens=sum(c.prompt_tokens for c in calls),
            completion_tokens=sum(c.completion_tokens for c in calls),
            cost=sum(priced) if priced else None,
            unpriced_calls=len(calls) - len(priced),
            unpriced_models=tuple(sorted({c.model for c in calls if c.cost is None})),
        )

    def as_data(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(total_tokens=self.total_tokens, complete=self.complete,
                    unpriced_models=list(self.unpriced_models))
        return data


@dataclass(frozen=True, slots=True)
class CostRollup:
    """A run's totals and the same totals per group (in order of each group's first call)."""

    by: str
    total: CostTotals
    groups: dict[str, CostTotals] = field(default_factory=dict)


def roll_up(calls: Sequence[LlmCallRow], by: str) -> CostRollup:
    """Totals of ``calls`` overall and per ``by`` (a key of :data:`GROUPINGS`)."""
    key = GROUPINGS[by]
    grouped: dict[str, list[LlmCallRow]] = {}
    for call in sorted(calls, key=lambda c: c.seq):
        grouped.setdefault(key(call), []).append(call)
    return CostRollup(by, CostTotals.of(calls), {name: CostTotals.of(group) for name, group in grouped.items()})


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _money(totals: CostTotals) -> Text:
    if totals.calls == 0:
        return Text("-")
    if totals.cost is None:
        return Text(f"unpriced ({_calls(totals.unpriced_calls)})", style="yellow")
    text = Text(f"${totals.cost:.6f}")
    if totals.unpriced_calls:
        text.append(f" + {totals.unpriced_calls} unpriced", style="yellow")
    return text


def _table(rollup: CostRollup) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(rollup.by)
    for column in ("calls", "prompt", "completion", "cost"):
        table.add_column(column, justify="right")
    rows = list(rollup.groups.items()) + [("total", rollup.total)]
    for i, (name, totals) in enumerate(rows):
        style = "bold" if i == len(rows) - 1 else ""
        table.add_row(Text(name, style=style), str(totals.calls), str(totals.prompt_tokens),
                      str(totals.completion_tokens), _money(totals))
    return table


def _notes(total: CostTotals) -> list[str]:
    if total.calls == 0:
        return ["no LLM calls were stored for this run"]
    notes = []
    if total.unpriced_calls:
        models = ", ".join(total.unpriced_models)
        example = total.unpriced_models[0]
        spent = "nothing is known of the spend" if total.cost is None else "the cost shown leaves them out"
        notes.append(f"{total.unpriced_calls} of {total.calls} calls used a model with no known price "
                     f"({models}): {spent}; price it for the next run with "
                     f"--config 'prices.{example}=[usd_per_1k_prompt,usd_per_1k_completion]'")
    if total.cached_calls:
        notes.append(f"{total.cached_calls} calls were answered from AG2's cache (cost 0)")
    return notes


def cost_command(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run id or a unique prefix of one.")],
    by: Annotated[str, typer.Option("--by", metavar="model|agent|node",
                                    help="Group the totals by model, agent or DAG node.")] = "model",
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """What the run's LLM calls cost: calls, tokens, cost, and calls no price is known for."""
    if by not in GROUPINGS:
        fail(f"unknown --by {by!r}; use one of {', '.join(GROUPINGS)}")
    with open_store(Location.of(db, home)) as store:
        row = store.get_run(run)
        calls = store.llm_calls(row.id)
    rollup = roll_up(calls, by)
    if json_:
        sys.stdout.buffer.write(orjson.dumps({
            "run_id": row.id, "workflow": row.workflow, "status": row.status, "by": by,
            "total": rollup.total.as_data(),
            "groups": [{"key": name, **totals.as_data()} for name, totals in rollup.groups.items()],
        }) + b"\n")
        return
    out.print(f"run {row.id} ({row.workflow}, {row.status}): {rollup.total.calls} LLM calls")
    if rollup.total.calls:
        out.print(_table(rollup))
    for note in _notes(rollup.total):
        out.print(Text(f"note: {note}", style="yellow"))
