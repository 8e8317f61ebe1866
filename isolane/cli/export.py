"""``isolane export RUN --otlp URL``: send a stored run to an OpenTelemetry collector as one trace.

::

    Store ──export_run(store, run, sink)──▶ spans_of(row, events) ──▶ OtlpSink ──▶ URL/v1/traces

The trace is rebuilt from the store (:mod:`isolane.telemetry`), with ids derived from the run:
exporting a run again sends the same spans, which a collector keyed by span id keeps once. Needs
the ``otel`` extra (``pip install 'isolane[otel]'``).
"""

from __future__ import annotations

import collections
import sys
from typing import Annotated

import orjson
import typer

from isolane.cli.console import out
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, open_store

__all__ = ["export_command"]


def export_command(
    run: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run ids or unique prefixes of them.")],
    otlp: Annotated[str, typer.Option(
        "--otlp", metavar="URL", envvar="OTEL_EXPORTER_OTLP_ENDPOINT", show_envvar=True,
        help="The collector's OTLP/HTTP base URL (…/v1/traces is added), e.g. http://127.0.0.1:6006 for "
             "Arize Phoenix or http://127.0.0.1:4318 for an OpenTelemetry collector.")],
    project: Annotated[str | None, typer.Option(
        "--project", metavar="NAME", help="The Phoenix project the spans go to "
                                          "(resource attribute openinference.project.name).")] = None,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
) -> None:
    """Send stored runs to an OpenTelemetry collector (OTLP/HTTP), one trace per run."""
    from isolane.telemetry.live import export_run
    from isolane.telemetry.otlp import OtlpSink

    sink = OtlpSink(otlp, project=project)
    try:
        with open_store(Location.of(db, home)) as store:
            for ref in run:
                run_id = store.get_run(ref).id
                specs = export_run(store, run_id, sink)
                kinds = dict(collections.Counter(s.kind for s in specs))
                if json_:
                    sys.stdout.buffer.write(orjson.dumps({
                        "run_id": run_id, "trace_id": f"{specs[0].trace_id:032x}", "spans": len(specs),
                        "by_kind": kinds, "url": sink.url}) + b"\n")
                else:
                    detail = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
                    out.print(f"run {run_id}: {len(specs)} spans ({detail}) sent to {sink.url}, "
                              f"trace {specs[0].trace_id:032x}")
    finally:
        sink.close()
