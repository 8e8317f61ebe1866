"""``isolane resume RUN`` and ``isolane recover [--resume]``: continuing runs after a crash.

``resume`` serves an offline run's script again for as long as it runs (:mod:`isolane.cli.llm`).
``recover --resume`` cannot hand the workers it restarts an environment (``Executor.recover``
takes none), so an offline run it resumes serves its script inside its worker.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Annotated

import anyio
import orjson
import typer

from isolane.cli.codes import exit_code_for
from isolane.cli.console import out
from isolane.cli.llm import llm_for_stored_run
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, open_store
from isolane.cli.run import follow, make_sink

if TYPE_CHECKING:
    from isolane.executor.recovery import RecoveryReport

__all__ = ["recover_command", "resume_command"]


def resume_command(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run id or a unique prefix of one.")],
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Continue a crashed, failed, timed-out, cancelled or interrupted run from its last state.

    Completed nodes are not executed again and seq continues where the log ends. Shows the run
    live until it ends; the exit code is that of its final status.
    """
    location = Location.of(db, home)
    with open_store(location) as store:
        row = store.get_run(run)  # unknown or ambiguous ids fail here, before a worker starts
    sink = make_sink(json_=json_, workflow=row.workflow, task=row.task)
    with llm_for_stored_run(row) as env:
        outcome = anyio.run(follow, lambda ex: ex.resume(row.id, env=env), location, sink)
    raise typer.Exit(exit_code_for(outcome.status))


async def _recover(location: Location, resume: bool) -> tuple[list[RecoveryReport], list[str]]:
    from isolane.executor.executor import Executor

    async with Executor(db_url=location.db, home=location.home) as executor:
        reports = await executor.recover(resume=resume)
        await executor.join()
        finals = [executor.store.get_run(r.run_id).status for r in reports]
    return reports, finals


def recover_command(
    resume: Annotated[bool, typer.Option(
        "--resume", help="Also resume the runs that turn out crashed, and follow every adopted "
                         "or resumed run to its end.")] = False,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Find runs whose parent process died; adopt live workers, settle or resume dead ones.

    A worker still running is followed through its spool until it ends; a dead one's spool rows
    are imported (never twice) and the run is marked from what the worker last reported.
    """
    location = Location.of(db, home)
    reports, finals = anyio.run(_recover, location, resume)
    worst = 0
    for report, final in zip(reports, finals, strict=True):
        if json_:
            sys.stdout.buffer.write(orjson.dumps({**dataclasses.asdict(report), "final_status": final}) + b"\n")
        else:
            out.print(f"{report.run_id[:12]}  {report.action:<8} → {final:<10} "
                      f"imported {report.imported} events  {report.detail}", markup=False)
        if report.action != "skipped":
            worst = max(worst, exit_code_for(final))
    if not reports and not json_:
        out.print("no interrupted runs", markup=False)
    raise typer.Exit(worst)
