"""``isolane cost RUN [--by model|agent|node] [--json]``: what a run's LLM calls cost, from the store.

::

    Store.llm_calls(run) ──▶ roll_up(calls)  (isolane.tracking.cost: the one rollup)
                               ├─ table + notes on stdout
                               └─ one JSON object (--json)

The rules are :mod:`isolane.tracking.cost`'s: tokens are billed tokens (a call answered from
AG2's cache is counted as cached, its tokens not billed); a call whose model has no known price
is counted in ``unpriced_calls`` and left out of ``cost``, which is ``null`` when no call of the
group is priced -- never $0.
"""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table
from rich.text import Text

from isolane.cli.console import fail, out
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, open_store
from isolane.tracking.cost import GROUPINGS, CostRollup, CostTotals, money, roll_up

__all__ = ["cost_command"]


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _money(totals: CostTotals) -> Text:
    return Text(money(totals), style="yellow" if totals.unpriced_calls else "")


def _table(rollup: CostRollup, by: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(by)
    for column in ("calls", "cached", "prompt", "completion", "cost"):
        table.add_column(column, justify="right")
    rows = list(rollup.by(by).items()) + [("total", rollup.total)]
    for i, (name, totals) in enumerate(rows):
        style = "bold" if i == len(rows) - 1 else ""
        table.add_row(Text(name, style=style), str(totals.calls), str(totals.cached_calls or ""),
                      str(totals.prompt_tokens), str(totals.completion_tokens), _money(totals))
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
        notes.append(f"{_calls(total.cached_calls)} answered from AG2's cache: cost 0, and their "
                     f"{total.cached_tokens} tokens are not billed (not in prompt/completion)")
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
    rollup = roll_up(calls)
    if json_:
        sys.stdout.buffer.write(orjson.dumps({
            "run_id": row.id, "workflow": row.workflow, "status": row.status, "by": by,
            "total": rollup.total.as_data(),
            "groups": [{"key": name, **totals.as_data()} for name, totals in rollup.by(by).items()],
        }) + b"\n")
        return
    out.print(f"run {row.id} ({row.workflow}, {row.status}): {rollup.total.calls} LLM calls")
    if rollup.total.calls:
        out.print(_table(rollup, by))
    for note in _notes(rollup.total):
        out.print(Text(f"note: {note}", style="yellow"))
