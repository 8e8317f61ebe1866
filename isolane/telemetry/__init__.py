"""OpenTelemetry export of runs (the ``otel`` extra): each run becomes one trace.

:func:`spans_of` translates a run's stored events into span descriptions (no OpenTelemetry
needed); :class:`OtlpSink` sends them with the OpenTelemetry SDK; :func:`export_run` rebuilds a
stored run's trace (``isolane export RUN --otlp URL``); :class:`TelemetryExporter` follows
committed events live. Importing this package loads none of OpenTelemetry: it is imported when a
span is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "ExportFailed": "isolane.telemetry.otlp",
    "OtlpSink": "isolane.telemetry.otlp",
    "traces_url": "isolane.telemetry.otlp",
    "SpanSpec": "isolane.telemetry.spans",
    "spans_of": "isolane.telemetry.spans",
    "export_run": "isolane.telemetry.live",
    "TelemetryExporter": "isolane.telemetry.live",
    "start_live_export": "isolane.telemetry.live",
})

if TYPE_CHECKING:
    from isolane.telemetry.live import TelemetryExporter, export_run, start_live_export
    from isolane.telemetry.otlp import ExportFailed, OtlpSink, traces_url
    from isolane.telemetry.spans import SpanSpec, spans_of

__all__ = [
    "ExportFailed",
    "OtlpSink",
    "SpanSpec",
    "TelemetryExporter",
    "export_run",
    "spans_of",
    "start_live_export",
    "traces_url",
]
