"""``isolane branch``, ``play-from``, ``race`` and ``compare``: exploring from any node.

The commands that start workers serve an offline run's script again while they run, and pass a
provider key on again (:func:`isolane.cli.llm.llm_for_stored_run`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import orjson
import typer
from rich.table import Table

from isolane.cli.codes import exit_code_for
from isolane.cli.console import fail, out
from isolane.cli.llm import llm_for_stored_run
from isolane.cli.options import (
    DbOption,
    HomeOption,
    JsonOption,
    Location,
    RunArg,
    open_store,
    parse_config,
)
from isolane.cli.run import follow, make_sink
from isolane.executor.racing import STRATEGIES
from isolane.tracking.cost import CostTotals, money

if TYPE_CHECKING:
    from isolane.executor.racing import RaceOutcome

__all__ = ["branch_command", "compare_command", "play_from_command", "race_command"]

FromOption = Annotated[str, typer.Option("--from", metavar="NODE", help="The DAG node to start from.")]


def _branch(run: str, node: str, *, name: str | None, hypothesis: str | None, config: list[str] | None,
            db: str | None, home: Any, json_: bool) -> None:
    location = Location.of(db, home)
    parsed = parse_config(config or ())
    with open_store(location) as store:
        row = store.get_run(run)
    sink = make_sink(json_=json_, workflow=row.workflow, task=row.task)
    with llm_for_stored_run(row, [parsed]) as env:
        outcome = anyio.run(follow, lambda ex: ex.branch(row.id, node, name=name, hypothesis=hypothesis,
                                                         config=parsed, env=env), location, sink)
    raise typer.Exit(exit_code_for(outcome.status))


def branch_command(
    run: RunArg,
    from_node: FromOption,
    name: Annotated[str | None, typer.Option("--name", help="A name for the branch.")] = None,
    hypothesis: Annotated[str | None, typer.Option("--hypothesis", help="What the branch tries.")] = None,
    config: Annotated[list[str] | None, typer.Option("--config", "-c", metavar="K=V",
                                                     help="Config changes for the branch (repeatable).")] = None,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Run a branch of RUN from NODE: its history up to NODE is RUN's, the rest runs anew."""
    _branch(run, from_node, name=name, hypothesis=hypothesis, config=config, db=db, home=home, json_=json_)


def play_from_command(
    run: RunArg,
    from_node: FromOption,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Re-run RUN from NODE with no changes (a branch without config changes)."""
    _branch(run, from_node, name="play-from", hypothesis=None, config=None, db=db, home=home, json_=json_)


async def _race(location: Location, run_id: str, node: str, variants: list[dict[str, Any]],
                strategy: str, scorer: str | None, budget: float | None, timeout: float | None,
                env: dict[str, str]) -> RaceOutcome:
    from isolane.executor.executor import Executor

    async with Executor(db_url=location.db, home=location.home, max_workers=max(4, len(variants))) as ex:
        return await ex.race(run_id, node, variants, strategy=strategy, scorer=scorer,
                             budget_usd=budget, timeout=timeout, env=env)


def race_command(
    run: RunArg,
    from_node: FromOption,
    variant: Annotated[list[str], typer.Option(
        "--variant", metavar="K=V[,K=V]", help="One racer's config changes (repeat for each racer).")],
    strategy: Annotated[str, typer.Option(
        "--strategy", help=f"How the winner is chosen: {', '.join(sorted(STRATEGIES))}.")] = "first_complete",
    scorer: Annotated[str | None, typer.Option(
        "--scorer", metavar="PKG.MOD:FN",
        help="scorer(result, files, cost_usd) -> float, for best_score (PKG.MOD:FN or FILE.py:FN; "
             "run in a worker).")] = None,
    budget_usd: Annotated[float | None, typer.Option(
        "--budget-usd", metavar="X", help="Total budget; a racer spending more than its share is cancelled.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="S", help="Per-racer timeout.")] = None,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Race one branch per --variant from NODE; the winner ends `won`, the others `lost`."""
    location = Location.of(db, home)
    if strategy not in STRATEGIES:
        fail(f"unknown --strategy {strategy!r}; use one of {', '.join(sorted(STRATEGIES))}")
    if len(variant) < 2:
        fail("a race needs at least two --variant options")
    variants = [parse_config([item for item in v.split(",") if item]) for v in variant]
    with open_store(location) as store:
        row = store.get_run(run)
    with llm_for_stored_run(row, variants) as env:  # one endpoint for every racer: answers are per request
        outcome = anyio.run(_race, location, row.id, from_node, variants, strategy, scorer, budget_usd,
                            timeout, env)
    if json_:
        sys.stdout.buffer.write(orjson.dumps(dataclasses.asdict(outcome), default=repr) + b"\n")
    else:
        table = Table("racer", "variant", "ended", "status", "score", "spent $")
        for racer in outcome.racers:
            table.add_row(racer["run_id"][:12], ", ".join(f"{k}={v}" for k, v in racer["variant"].items()),
                          str(racer["ended"]), racer["status"],
                          "" if racer["score"] is None else f"{racer['score']:g}", f"{racer['spent_usd']:.4f}")
        out.print(table)
        out.print(f"winner: {outcome.winner_run_id or 'none'}", markup=False)
    raise typer.Exit(0 if outcome.winner_run_id else 1)


async def _compare(location: Location, run_ids: list[str]) -> dict[str, Any]:
    from isolane.executor.executor import Executor

    async with Executor(db_url=location.db, home=location.home) as ex:
        ids = [ex.store.get_run(r).id for r in run_ids]
        return (await ex.compare(ids)).as_dict()


def compare_command(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Two or more runs.")],
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Runs side by side: status, duration, cost and tokens by model, nodes, files."""
    if len(runs) < 2:
        fail("compare needs at least two runs")
    data = anyio.run(_compare, Location.of(db, home), runs)
    if json_:
        sys.stdout.buffer.write(orjson.dumps(data, default=repr) + b"\n")
        return
    summaries = data["runs"]
    table = Table("", *[s["run_id"][:12] for s in summaries])
    rows: list[tuple[str, list[str]]] = [
        ("status", [s["status"] for s in summaries]),
        ("parent", [(s["parent_run_id"] or "")[:12] + (f" @{s['branch_point_node']}" if s["branch_point_node"] else "")
                    for s in summaries]),
        ("duration", ["" if s["duration_s"] is None else f"{s['duration_s']:.2f} s" for s in summaries]),
        ("cost", [money(CostTotals(calls=s["calls"], cost=s["cost_usd"], unpriced_calls=s["unpriced_calls"]))
                  for s in summaries]),
        ("tokens", [f"{s['prompt_tokens']}+{s['completion_tokens']}"
                    + (f" ({s['cached_calls']} cached calls)" if s["cached_calls"] else "") for s in summaries]),
    ]
    for node in data["node_ids"]:
        rows.append((f"node {node}", [s["nodes"].get(node, "—") for s in summaries]))
    rows.append(("files", [str(len(s["files"])) for s in summaries]))
    for run_id, diff in data["file_diff"].items():
        column = [s["run_id"] for s in summaries].index(run_id)
        for kind in ("added", "removed", "changed"):
            cells = [""] * len(summaries)
            cells[column] = ", ".join(diff[kind])
            if diff[kind]:
                rows.append((f"files {kind}", cells))
    for label, cells in rows:
        table.add_row(label, *cells)
    out.print(table)
