"""``isolane``: run a workflow (``isolane run`` = ``run-isolated``) and read what was stored.

Commands: ``run``, ``runs``, ``show RUN``, ``events RUN``, ``cost RUN``, ``dag RUN``. ``RUN`` is a run id or a unique prefix
of one. Every command takes ``--db URL`` and ``--home DIR``; ``--json`` output is JSON only:
``runs`` and ``events`` write one object per line, ``show`` writes one object.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import orjson
import typer

from isolane.cli.codes import EXIT_CODES_HELP, EXIT_INTERRUPTED
from isolane.cli.console import CliApp, fail, out
from isolane.cli.lazy import LazyCommand, lazy_group
from isolane.cli.options import (
    DbOption,
    HomeOption,
    JsonOption,
    Location,
    RunArg,
    open_lister,
    open_store,
)
from isolane.cli.render import (
    event_line,
    run_duration,
    runs_table,
    show_page,
)
from isolane.tracking.cost import roll_up
from isolane.tracking.rows import RUN_STATUSES

if TYPE_CHECKING:
    from isolane.schemas.envelope import Event
    from isolane.tracking.store import Store

__all__ = ["app", "main"]

_PAGE: Final = 2000
#: Between two reads of another process's database while following a run.
_FOLLOW_INTERVAL: Final = 0.25

#: The commands defined in other modules, in the order the help lists them; each module is
#: imported only when its command runs (or the help lists them all): see isolane.cli.lazy.
_ELSEWHERE: Final = {
    "run": LazyCommand("isolane.cli.run", "run_command", help="RUN_HELP"),
    "resume": LazyCommand("isolane.cli.durability", "resume_command"),
    "branch": LazyCommand("isolane.cli.branching", "branch_command"),
    "play-from": LazyCommand("isolane.cli.branching", "play_from_command"),
    "race": LazyCommand("isolane.cli.branching", "race_command"),
    "compare": LazyCommand("isolane.cli.branching", "compare_command"),
    "recover": LazyCommand("isolane.cli.durability", "recover_command"),
    "cost": LazyCommand("isolane.cli.cost", "cost_command"),
    "dag": LazyCommand("isolane.cli.dag", "dag_command"),
    "serve": LazyCommand("isolane.cli.serve", "serve_command"),
    "files": LazyCommand("isolane.cli.files", "files_command"),
    "checkout": LazyCommand("isolane.cli.files", "checkout_command"),
    "export": LazyCommand("isolane.cli.export", "export_command"),
    "requests": LazyCommand("isolane.cli.answering", "requests_command"),
    "answer": LazyCommand("isolane.cli.answering", "answer_command"),
}

app: Final = CliApp(
    name="isolane",
    help=f"Run workflows in isolated worker processes and inspect what they stored.\n\n{EXIT_CODES_HELP}",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    cls=lazy_group(_ELSEWHERE),
)
def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)


def _write_json_line(value: Any) -> None:
    sys.stdout.buffer.write(_dumps(value) + b"\n")


def _count_by_type(store: Store, run_id: str) -> dict[str, int]:
    from isolane.schemas.payloads import EVENT_TYPES

    counts = {type_: store.count_events(run_id, types=[type_]) for type_ in sorted(EVENT_TYPES)}
    return {type_: n for type_, n in counts.items() if n}


@app.command("runs")
def runs_command(
    status: Annotated[str | None, typer.Option(
        "--status", metavar="S", help=f"Only runs with this status ({', '.join(sorted(RUN_STATUSES))}).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", help="At most N runs, newest first.")] = 50,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """List stored runs, newest first."""
    if status is not None and status not in RUN_STATUSES:
        fail(f"unknown status {status!r} for --status; use one of {', '.join(sorted(RUN_STATUSES))}")
    if limit < 1:
        fail(f"--limit must be at least 1, got {limit}")
    with open_lister(Location.of(db, home)) as store:
        rows = store.list_runs(limit=limit, status=status)
        counts = {row.id: store.count_events(row.id) for row in rows}
    if json_:
        now = time.time()
        for row in rows:
            _write_json_line({**dataclasses.asdict(row), "events": counts[row.id],
                              "duration_s": run_duration(row, now=now)})
        return
    if not rows:
        out.print("no runs" + (f" with status {status}" if status else ""))
        return
    out.print(runs_table(rows, counts))


@app.command("show")
def show_command(
    run: RunArg,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Everything about one run: fields, outcome, error, result, DAG, diagnostics, events by type."""
    with open_store(Location.of(db, home)) as store:
        row = store.get_run(run)
        nodes, edges = store.dag(row.id)
        counts = _count_by_type(store, row.id)
        diagnostics = store.diagnostics(row.id)
        cost = roll_up(store.llm_calls(row.id)).total
        failures = store.events(row.id, types=["run_failed"])
    traceback = failures[-1].data.get("traceback") if failures else None
    if json_:
        sys.stdout.buffer.write(_dumps({
            "run": dataclasses.asdict(row),
            "duration_s": run_duration(row),
            "traceback": traceback,
            "events": sum(counts.values()),
            "event_counts": counts,
            "cost": cost.as_data(),
            "dag": {"nodes": [dataclasses.asdict(n) for n in nodes],
                    "edges": [dataclasses.asdict(e) for e in edges]},
            "diagnostics": [dataclasses.asdict(d) for d in diagnostics],
        }) + b"\n")
        return
    out.print(show_page(row, nodes=nodes, edges=edges, event_counts=counts,
                        diagnostics=diagnostics, cost=cost, traceback=traceback))


def _stored_events(store: Store, run_id: str, *, after: int,
                   types: list[str] | None) -> Iterator[Event]:
    """Every stored event after ``after``, read a page at a time."""
    while True:
        page = store.events(run_id, after_seq=after, limit=_PAGE, types=types)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].seq


def _followed_events(store: Store, run_id: str, *, after: int,
                     types: list[str] | None) -> Iterator[Event]:
    """Stored events, then new ones as another process stores them, until the run has ended.

    The run's final status is committed after its last event, so once a read of the status says
    terminal, one more read of the events gets everything.
    """
    from isolane.executor.run import TERMINAL_STATUSES

    while True:
        ended = store.get_run(run_id).status in TERMINAL_STATUSES
        for event in _stored_events(store, run_id, after=after, types=types):
            after = event.seq
            yield event
        if ended:
            return
        time.sleep(_FOLLOW_INTERVAL)


@app.command("events")
def events_command(
    run: RunArg,
    type_: Annotated[list[str] | None, typer.Option(
        "--type", "-t", metavar="T", help="Only events of type T (repeatable).")] = None,
    since: Annotated[int, typer.Option("--since", metavar="SEQ", help="Only events after seq SEQ.")] = 0,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep reading new events until the run ends.")] = False,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Print a run's events in order, one per line (JSON lines with --json)."""
    from isolane.schemas.payloads import EVENT_TYPES

    unknown = sorted(set(type_ or ()) - EVENT_TYPES)
    if unknown:
        fail(f"unknown event type {', '.join(map(repr, unknown))} for --type; use one of "
             f"{', '.join(sorted(EVENT_TYPES))}")
    if since < 0:
        fail(f"--since must be a seq >= 0, got {since}")
    types = sorted(set(type_)) if type_ else None
    with open_store(Location.of(db, home)) as store:
        run_id = store.get_run(run).id
        read = _followed_events if follow else _stored_events
        write = sys.stdout.buffer.write
        try:
            for event in read(store, run_id, after=since, types=types):
                write(event.to_json() + b"\n" if json_ else event_line(event).encode() + b"\n")
                if follow:
                    sys.stdout.flush()
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _silence_stdout()


def _silence_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the final flush is quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry of ``isolane``."""
    sys.exit(app.main(argv, prog_name="isolane"))
