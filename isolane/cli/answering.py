"""``isolane requests RUN`` and ``isolane answer RUN REQUEST TEXT``: answer a run followed elsewhere.

::

    isolane requests RUN ── store: the run's human_input_request/response events ──▶ what waits
    isolane answer RUN REQUEST TEXT ── post_answer ──▶ posted_answers ──▶ the run's owner
        (run-isolated, serve, a script) delivers it to the worker ──▶ "answered" (or its refusal)

The process driving the run is the only one whose control pipe reaches the worker, so the answer
travels through the store (see :mod:`isolane.executor.human`); it works across processes and,
on a shared PostgreSQL, across hosts.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated

import orjson
import typer
from rich.table import Table
from rich.text import Text

from isolane.cli.console import fail, out
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, RunArg, open_store
from isolane.cli.render import format_duration, short

__all__ = ["answer_command", "requests_command"]



def requests_command(
    run: RunArg,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """List the run's human-input requests waiting for an answer (answer with `isolane answer`)."""
    with open_store(Location.of(db, home)) as store:
        row = store.get_run(run)
        from isolane.executor.human import EVENT_TYPES, pending_requests  # not for --help

        waiting = pending_requests(store.events(row.id, types=EVENT_TYPES))
    if json_:
        for request in waiting:
            sys.stdout.buffer.write(orjson.dumps(request.as_dict()) + b"\n")
        return
    if not waiting:
        out.print(f"run {row.id} ({row.status}) has no question waiting for an answer")
        return
    table = Table("request", "asked by", "prompt", "waiting", "timeout", box=None)
    now = time.time()
    for request in waiting:
        who = request.agent or request.node_id or "workflow"
        timeout = format_duration(request.timeout_s) if request.timeout_s is not None else "none"
        table.add_row(request.request_id, who, Text(short(request.prompt, 200)),
                      format_duration(now - request.ts), timeout)
    out.print(table)
    first = waiting[0]
    out.print(Text(f"answer: isolane answer {row.id[:12]} {first.request_id} 'TEXT'", style="dim"))


def answer_command(
    run: RunArg,
    request: Annotated[str, typer.Argument(metavar="REQUEST", help="The request id (`isolane requests RUN`).")],
    text: Annotated[str, typer.Argument(metavar="TEXT", help="The answer; '-' reads it from stdin.")],
    wait: Annotated[float, typer.Option(
        "--wait", metavar="S", help="Seconds to wait for the process driving the run to take it.")] = 15.0,
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Answer a human-input request of a run driven by another process (run-isolated, serve)."""
    if wait <= 0:
        fail(f"--wait must be positive seconds, got {wait:g}")
    if text == "-":
        text = sys.stdin.read().removesuffix("\n")
    with open_store(Location.of(db, home)) as store:
        run_id = store.get_run(run).id
        from isolane.executor.human import post_answer  # not for --help

        post_answer(store, run_id, request, text, source="cli", wait=wait)
    out.print(f"answered {request} of run {run_id}")
