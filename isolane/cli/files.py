"""``isolane files RUN [--at NODE]`` and ``isolane checkout RUN --at NODE DIR``: a run's files.

``files`` lists every recorded version of every file (created, modified, deleted), or with
``--at`` the workspace as it was when that node ended (see :mod:`isolane.tracking.workspace`).
``checkout`` writes that workspace into a directory, byte for byte, from ``<home>/blobs``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import orjson
import typer
from rich.table import Table
from rich.text import Text

from isolane.cli.console import out
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, RunArg, open_store
from isolane.cli.render import format_time, short_id

if TYPE_CHECKING:
    from isolane.tracking.workspace import WorkspaceFile

__all__ = ["checkout_command", "files_command", "files_table"]

_SHORT_SHA: Final = 12



def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def files_table(rows: Sequence[WorkspaceFile], *, title: str) -> Table:
    """The ``isolane files`` table: one row per file version."""
    table = Table(box=None, header_style="bold", pad_edge=False, title=title, title_justify="left")
    for column, justify in (("path", "left"), ("size", "right"), ("sha256", "left"),
                            ("version", "right"), ("kind", "left"), ("node", "left"),
                            ("phase", "left"), ("agent", "left"), ("stored", "left"),
                            ("time", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        deleted = row.kind == "deleted"
        table.add_row(
            Text(row.path, style="strike dim" if deleted else ""),
            "" if deleted else _size(row.size),
            "" if deleted else row.sha256[:_SHORT_SHA],
            str(row.version), row.kind, row.node_id or "", row.phase or "", row.agent or "",
            "" if deleted else ("yes" if row.stored else Text("no", style="yellow")),
            format_time(row.ts))
    return table


def files_command(
    run: RunArg,
    at: Annotated[str | None, typer.Option(
        "--at", metavar="NODE",
        help="Only the workspace as it was when NODE ended (one row per file present).")] = None,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """A run's files: every version recorded, or with --at the workspace at a node."""
    from isolane.tracking.workspace import file_versions, files_at

    with open_store(Location.of(db, home)) as store:
        run_id = store.get_run(run).id
        rows = list(files_at(store, run_id, at).values()) if at else file_versions(store, run_id)
    if json_:
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(dataclasses.asdict(row)) + b"\n")
        return
    if not rows:
        out.print(f"no files in run {short_id(run_id)}" + (f" when node {at} ended" if at else ""),
                  markup=False)
        return
    title = (f"run {short_id(run_id)} at the end of {at}: {len(rows)} files, "
             f"{_size(sum(r.size for r in rows))}" if at else
             f"run {short_id(run_id)}: {len(rows)} file versions, {len({r.path for r in rows})} paths")
    out.print(files_table(rows, title=title))


def checkout_command(
    run: RunArg,
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="Where to write the files (created if missing; must be empty).",
        file_okay=False)],
    at: Annotated[str, typer.Option(
        "--at", metavar="NODE", help="The node whose end state to write out.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Write into a non-empty DIR, replacing the files it has in common.")] = False,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Write a run's workspace, as it was when node NODE ended, into DIR byte for byte."""
    from isolane.schemas.blobs import BlobStore
    from isolane.tracking.workspace import files_at, write_workspace

    location = Location.of(db, home)
    with open_store(location) as store:
        run_id = store.get_run(run).id
        files = files_at(store, run_id, at)
    written = write_workspace(BlobStore(location.home / "blobs"), files, directory, force=force)
    total = sum(row.size for row in written)
    if json_:
        sys.stdout.buffer.write(orjson.dumps({
            "run_id": run_id, "node": at, "dir": str(directory.resolve()), "files": len(written),
            "bytes": total, "paths": [row.path for row in written]}) + b"\n")
        return
    out.print(f"wrote {len(written)} files ({_size(total)}) of run {short_id(run_id)} as they were "
              f"when {at} ended into {directory}", markup=False)
