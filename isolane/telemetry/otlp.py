"""Spans to an OTLP/HTTP endpoint, through the OpenTelemetry SDK's own exporter.

::

    [SpanSpec] ──readable_span()──▶ sdk ReadableSpan (our trace/span ids, our times)
               ──OtlpSink.send()──▶ OTLPSpanExporter (protobuf over HTTP) ──▶ URL/v1/traces

The spans are built as finished :class:`~opentelemetry.sdk.trace.ReadableSpan` values rather than
started through a tracer: their ids derive from the run (:mod:`isolane.telemetry.ids`) and their
times are the ones the events recorded, neither of which a live tracer would let us choose. An
exporter takes any ``ReadableSpan`` (that is its documented input), so the wire format, retries
and headers (``OTEL_EXPORTER_OTLP_HEADERS``) are the SDK's.

Needs the ``otel`` extra: ``pip install 'isolane[otel]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from isolane.errors import ConfigError, IsolaneError
from isolane.telemetry.spans import SpanSpec

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["ENDPOINT_ENV", "TRACES_PATH", "ExportFailed", "OtlpSink", "traces_url"]

logger = logging.getLogger(__name__)

#: The standard variable naming an OTLP collector's base URL.
ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_PATH: Final = "/v1/traces"
#: Spans per request (the SDK's batch processor sends 512 at most, too).
BATCH: Final = 512
_NS: Final = 1_000_000_000


class ExportFailed(IsolaneError):
    """The collector did not take the spans."""


def traces_url(url: str) -> str:
    """The traces endpoint of ``url``: a base URL (``http://host:4318``, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` holds) gets ``/v1/traces``; a URL already ending in it is
    kept. Anything but an http(s) URL with a host is a :class:`ConfigError`."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"OTLP endpoint {url!r} is not an http(s) URL; give the collector's base URL, "
                          "e.g. http://127.0.0.1:4318 (Phoenix: http://127.0.0.1:6006)")
    path = parts.path.rstrip("/")
    if not path.endswith(TRACES_PATH):
        path += TRACES_PATH
    return parts._replace(path=path).geturl()


def _require_sdk() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError("exporting traces needs the OpenTelemetry SDK: pip install 'isolane[otel]' "
                          f"({exc})") from None


def readable_span(spec: SpanSpec, resource: Resource) -> ReadableSpan:
    """The SDK's finished span for ``spec`` (which must have ended)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    if spec.end is None:
        raise ValueError(f"span {spec.name!r} has not ended")

    def context(trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    status = (Status(StatusCode.ERROR, spec.error) if spec.error is not None else Status(StatusCode.OK))
    return ReadableSpan(
        name=spec.name,
        context=context(spec.trace_id, spec.span_id),
        parent=None if spec.parent_span_id is None else context(spec.trace_id, spec.parent_span_id),
        resource=resource,
        attributes=dict(spec.attributes),
        events=[Event(e.name, dict(e.attributes), timestamp=round(e.ts * _NS)) for e in spec.events],
        links=[Link(context(link.trace_id, link.span_id), dict(link.attributes)) for link in spec.links],
        kind=SpanKind.CLIENT if spec.kind == "llm" else SpanKind.INTERNAL,
        status=status,
        start_time=round(spec.start * _NS),
        end_time=round(max(spec.end, spec.start) * _NS),
        instrumentation_scope=InstrumentationScope("isolane"),
    )


class OtlpSink:
    """Sends finished spans to one OTLP/HTTP endpoint (synchronous: call it off the event loop).

    ``project`` sets the resource attribute ``openinference.project.name`` (the Phoenix project
    the spans land in); ``service_name`` is OpenTelemetry's ``service.name``.
    """

    def __init__(self, endpoint: str, *, service_name: str = "isolane", project: str | None = None,
                 timeout: float = 10.0) -> None:
        _require_sdk()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource

        self.url: Final = traces_url(endpoint)
        attributes: dict[str, str] = {"service.name": service_name}
        if project:
            attributes["openinference.project.name"] = project
        self._resource = Resource.create(attributes)
        self._exporter: SpanExporter = OTLPSpanExporter(endpoint=self.url, timeout=timeout)

    def send(self, specs: Sequence[SpanSpec]) -> int:
        """Export the ended spans of ``specs`` in batches; return how many were sent.

        Raises :class:`ExportFailed` when the collector refuses a batch or cannot be reached.
        """
        from opentelemetry.sdk.trace.export import SpanExportResult

        ended = [readable_span(s, self._resource) for s in specs if s.end is not None]
        for start in range(0, len(ended), BATCH):
            if self._exporter.export(ended[start:start + BATCH]) is not SpanExportResult.SUCCESS:
                raise ExportFailed(f"the OTLP endpoint {self.url} did not accept the spans (see the "
                                   "log of opentelemetry.exporter for why); is the collector running there?")
        return len(ended)

    def close(self) -> None:
        self._exporter.shutdown()
