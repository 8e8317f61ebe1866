"""Runs as traces, live from committed events or after the fact from the store.

::

    committed events (any async iterator: the executor's feed, a RunHandle's events)
        │  TelemetryExporter.run(): keep each run's span-making events (bounded by type)
        ▼
    every `interval` (or at a run's terminal event), in a worker thread:
        spans_of(run row, events) ──▶ the spans that ended and were not sent yet ──▶ OtlpSink
        (a run whose trace is complete is forgotten)

    isolane export RUN --otlp URL:  export_run(store, run_id, sink) = spans_of(row, all events)

The exporter never sits on the store's hot path: it reads what was already committed, in its own
task, and does the translation and the HTTP in a worker thread, so a slow collector delays spans,
not events. Spans are sent once each (when they end); the ids derive from the run, so the same
span sent again by ``isolane export`` is the same span, not a copy.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from isolane.errors import ConfigError, IsolaneError
from isolane.schemas.envelope import Event
from isolane.telemetry.otlp import ENDPOINT_ENV, OtlpSink
from isolane.telemetry.spans import RunLike, SpanSpec, spans_of

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from isolane.tracking.store import Store

__all__ = ["SPAN_EVENT_TYPES", "EventFeed", "TelemetryExporter", "export_run", "start_live_export"]

logger = logging.getLogger(__name__)

#: The event types the translation reads: a live exporter subscribes to these only.
SPAN_EVENT_TYPES: Final = (
    "run_started", "run_completed", "run_failed", "run_cancelled", "dag_created", "dag_node_added",
    "dag_node_update", "llm_call", "tool_call", "tool_result", "code_execution", "agent_message",
    "handoff", "error", "llm_retry", "phase_change", "human_input_request", "human_input_response",
    "file_created", "file_modified", "file_deleted")
_TERMINAL: Final = frozenset({"run_completed", "run_failed", "run_cancelled"})
_SHUTDOWN_FLUSH_S: Final = 15.0
_FINISHED_KEPT: Final = 10_000
#: Events kept per run that only become span events (messages, files, custom …): a run that
#: emits millions of them must not grow the exporter; the spans themselves are always kept.
_SPAN_EVENTS_KEPT: Final = 2_000
_SPAN_MAKING: Final = frozenset({
    "run_started", "run_completed", "run_failed", "run_cancelled", "dag_created", "dag_node_added",
    "dag_node_update", "llm_call", "tool_call", "tool_result", "code_execution"})


def export_run(store: Store, run_id: str, sink: OtlpSink, *, page: int = 5000) -> list[SpanSpec]:
    """Rebuild run ``run_id``'s trace from the store and send it; return the spans sent."""
    row = store.get_run(run_id)
    events: list[Event] = []
    after = 0
    while batch := store.events(row.id, after_seq=after, limit=page, types=SPAN_EVENT_TYPES):
        events.extend(batch)
        after = batch[-1].seq
        if len(batch) < page:
            break
    specs = [s for s in spans_of(row, events) if s.end is not None]
    sink.send(specs)
    return specs


class EventFeed(Protocol):
    """What :func:`start_live_export` needs of an executor: its feed of committed events across
    runs, and its store (to read a run's row)."""

    def events(self, *, types: Iterable[str] | None = None) -> AsyncIterator[Event]: ...
    @property
    def store(self) -> Store: ...


@dataclass(slots=True)
class _Trace:
    events: list[Event] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)
    ended: bool = False
    row: RunLike | None = None
    annotations: int = 0


class TelemetryExporter:
    """Turns a stream of committed events into spans sent to an OTLP endpoint as they end.

    ``source`` is any async iterable of stored events (in seq order per run); ``run_of`` reads a
    run's row (``store.get_run``; called in a worker thread). Give ``endpoint`` (a collector's base
    URL) or a ready ``sink``. Run it with :meth:`run` in a task group; when the source ends or the
    task is cancelled, what is pending is flushed (within 15 s) before it returns.
    """

    def __init__(self, source: AsyncIterable[Event], *, run_of: Callable[[str], RunLike],
                 endpoint: str | None = None, sink: OtlpSink | None = None, project: str | None = None,
                 interval: float = 1.0) -> None:
        if (endpoint is None) == (sink is None):
            raise ConfigError("TelemetryExporter needs an endpoint (the collector's URL) or a sink, not both")
        if not (interval > 0 and math.isfinite(interval)):
            raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}")
        self._source = source
        self._run_of = run_of
        self._sink = sink if sink is not None else OtlpSink(str(endpoint), project=project)
        self._interval = interval
        self._traces: dict[str, _Trace] = {}
        #: Runs whose trace is complete (a late event of theirs is not a new trace); bounded.
        self._finished: dict[str, None] = {}
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self.spans_sent = 0
        """How many spans were sent so far."""
        self.failures = 0
        """How many flushes the collector refused (their spans are retried at the next flush)."""

    async def run(self) -> None:
        """Consume the source until it ends (or the task is cancelled), flushing as it goes."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_loop)
                async for event in self._source:
                    self._take(event)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_FLUSH_S):
                await self._flush(final=True)
            await anyio.to_thread.run_sync(self._sink.close)

    def _take(self, event: Event) -> None:
        if event.type not in SPAN_EVENT_TYPES or event.run_id in self._finished:
            return
        trace = self._traces.setdefault(event.run_id, _Trace())
        if event.type not in _SPAN_MAKING:
            trace.annotations += 1
            if trace.annotations > _SPAN_EVENTS_KEPT:
                return
        trace.events.append(event)
        self._dirty.add(event.run_id)
        if event.type in _TERMINAL:
            trace.ended = True
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush(final=False)

    async def _flush(self, *, final: bool) -> None:
        dirty, self._dirty = self._dirty, set()
        if final:
            dirty |= set(self._traces)
        work = {run_id: self._traces[run_id] for run_id in dirty if run_id in self._traces}
        if not work:
            return
        try:
            done = await anyio.to_thread.run_sync(lambda: self._send(work, final=final))
        except (IsolaneError, OSError) as exc:
            self.failures += 1
            self._dirty |= set(work)  # retried at the next flush: nothing was marked sent
            logger.warning("live trace export failed (retried at the next flush): %s", exc)
            return
        for run_id in done:
            del self._traces[run_id]
            self._finished[run_id] = None
            if len(self._finished) > _FINISHED_KEPT:
                del self._finished[next(iter(self._finished))]

    def _send(self, work: dict[str, _Trace], *, final: bool) -> list[str]:
        """Send each run's newly ended spans (in a worker thread); return the runs now complete."""
        batch: list[SpanSpec] = []
        complete = []
        for run_id, trace in work.items():
            if trace.row is None or trace.ended or final:
                # The row's status and end matter only once the run is over: read it again then.
                trace.row = self._run_of(run_id)
            specs = spans_of(trace.row, list(trace.events))
            fresh = [s for s in specs if s.end is not None and s.span_id not in trace.sent]
            batch.extend(fresh)
            if all(s.end is not None for s in specs):
                complete.append(run_id)
        self.spans_sent += self._sink.send(batch)
        for spec in batch:
            work[str(spec.attributes["isolane.run.id"])].sent.add(spec.span_id)
        return complete


def start_live_export(executor: EventFeed, *, task_group: TaskGroup, endpoint: str | None = None,
                      project: str | None = None, sink: OtlpSink | None = None) -> TelemetryExporter | None:
    """Export ``executor``'s runs live to ``sink``, or to ``endpoint`` (default
    ``$OTEL_EXPORTER_OTLP_ENDPOINT``), in a task of ``task_group``; ``None`` (and nothing
    started) when none is given.

    What ``Executor(telemetry=...)`` calls when it opens.
    """
    if sink is None:
        endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
        if endpoint is None:
            return None
        sink = OtlpSink(endpoint, project=project)
    store = executor.store
    exporter = TelemetryExporter(executor.events(types=SPAN_EVENT_TYPES), run_of=store.get_run, sink=sink)
    task_group.start_soon(exporter.run)
    return exporter
