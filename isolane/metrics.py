"""Prometheus metrics of an executor: for ``GET /metrics`` of ``isolane serve``, or a service's own
registry (needs the ``metrics`` extra: ``pip install 'isolane[metrics]'``).

::

    StoreWriter ──Commit (after each write)──▶ ExecutorMetrics   events stored, batch latency,
                                                                  worker starts, crashes, restarts
    executor feed ──llm_call events (own task)──▶                 LLM calls, tokens, cost by model
    a scrape ──▶ _ScrapeCollector ──▶ Store                        runs by status, human requests
                                  ──▶ Executor.writer_backlog()    waiting; writer queue depth

Counters count what this executor did since it was opened (a Prometheus counter starts at 0 with
its process); the gauges read the store at scrape time, so they agree with ``isolane ls`` for
every run the store holds. LLM figures follow :mod:`isolane.tracking.cost`: a call answered from
AG2's cache costs nothing and its tokens are not billed, so calls and tokens carry a ``billing``
label (``billed`` or ``cached``) and cost is summed over billed, priced calls only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from isolane.errors import ConfigError, IsolaneError, RunStateError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from isolane.executor.executor import Executor
    from isolane.executor.writer import Commit
    from isolane.schemas.envelope import Event

__all__ = ["CONTENT_TYPE", "MAX_MODELS", "ExecutorMetrics"]

log = logging.getLogger(__name__)

#: The media type of :meth:`ExecutorMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Runs read per scrape to count the human requests waiting (the running ones, newest first).
_MAX_RUNNING_SCANNED: Final = 1000
#: Distinct ``model`` label values kept: model names come from workers (untrusted), and each value
#: is a time series held in memory; calls of further models are counted under ``(other)``.
MAX_MODELS: Final = 200
#: Longest ``model`` label value kept (longer names are cut).
_MAX_MODEL_CHARS: Final = 120
_OTHER: Final = "(other)"
#: Store write latency buckets, in seconds (a write is one transaction of many rows).
_BATCH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                         2.5, 5.0, 10.0)


def _prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigError("Prometheus metrics need prometheus-client: pip install "
                          "'isolane[metrics]'") from exc


class ExecutorMetrics:
    """The metrics of one open executor, registered in ``registry`` (a new one by default).

    Create it once the executor is open (``async with Executor() as ex``), on its event loop;
    expose ``metrics.registry`` as a service already does (``prometheus_client.make_asgi_app``,
    ``start_http_server``) or :meth:`render` it. :meth:`close` stops counting.
    """

    def __init__(self, executor: Executor, *, registry: CollectorRegistry | None = None) -> None:
        _prometheus()
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.events_stored = Counter("isolane_events_stored", "Events written to the store.",
                                     registry=reg)
        self.batch_seconds = Histogram("isolane_store_batch_seconds", "Duration of one store "
                                       "write (one transaction, retries included).",
                                       buckets=_BATCH_BUCKETS, registry=reg)
        self.worker_starts = Counter("isolane_worker_starts", "Worker processes started.",
                                     registry=reg)
        self.worker_crashes = Counter("isolane_worker_crashes", "Worker attempts that crashed "
                                      "(restarted or not).", registry=reg)
        self.worker_restarts = Counter("isolane_worker_restarts", "Crashed runs restarted.",
                                       registry=reg)
        self.llm_calls = Counter("isolane_llm_calls", "LLM calls, by model and billing (billed "
                                 "or answered from the cache).", ["model", "billing"],
                                 registry=reg)
        self.llm_tokens = Counter("isolane_llm_tokens", "LLM tokens, by model, billing and kind "
                                  "(prompt, completion).", ["model", "billing", "kind"],
                                  registry=reg)
        self.llm_cost = Counter("isolane_llm_cost_usd", "Cost of billed, priced LLM calls in "
                                "USD.", ["model"], registry=reg)
        self.llm_unpriced = Counter("isolane_llm_unpriced_calls", "Billed LLM calls whose price "
                                    "is unknown (not in the cost).", ["model"], registry=reg)
        self._models: set[str] = set()
        self._collector = _ScrapeCollector(executor)
        reg.register(self._collector)
        self._stop_commits = executor.on_commit(self._commit)
        self._llm = executor.on_event(self._llm_call, types=["llm_call"])

    def close(self) -> None:
        """Stop counting (the registry keeps what was counted; the gauges stop reading)."""
        self._stop_commits()
        self._llm.close()
        self._collector.executor = None

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its media type (blocking: the scrape
        reads the store; call it from a thread in async code)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry), CONTENT_TYPE

    @property
    def llm_events_counted(self) -> int:
        """``llm_call`` events counted so far (they arrive through the feed, just after commit)."""
        return self._llm.delivered

    # -- counting ----------------------------------------------------------------------------------

    def _commit(self, commit: Commit) -> None:
        self.events_stored.inc(commit.events)
        self.batch_seconds.observe(commit.seconds)
        for fields in commit.run_updates.values():
            status = fields.get("status")
            if status == "running":
                self.worker_starts.inc()
            elif status == "crashed":  # the run's last attempt crashed
                self.worker_crashes.inc()
        restarts = commit.diagnostic_kinds.count("restart")
        if restarts:  # each restart follows an attempt that crashed
            self.worker_restarts.inc(restarts)
            self.worker_crashes.inc(restarts)

    def _llm_call(self, event: Event) -> None:
        data = event.data
        model = self._model_label(data.get("model"))
        cached = bool(data.get("cached"))
        billing = "cached" if cached else "billed"
        self.llm_calls.labels(model, billing).inc()
        for kind in ("prompt", "completion"):
            tokens = data.get(f"{kind}_tokens")
            if isinstance(tokens, int) and tokens > 0:
                self.llm_tokens.labels(model, billing, kind).inc(tokens)
        if cached:
            return
        cost = data.get("cost")
        if isinstance(cost, int | float) and cost >= 0:
            self.llm_cost.labels(model).inc(cost)
        else:
            self.llm_unpriced.labels(model).inc()


    def _model_label(self, value: object) -> str:
        model = (value if isinstance(value, str) and value else "-")[:_MAX_MODEL_CHARS]
        if model not in self._models:
            if len(self._models) >= MAX_MODELS:
                return _OTHER
            self._models.add(model)
        return model


class _ScrapeCollector:
    """The gauges read at scrape time: from the store, and the writer's backlog."""

    def __init__(self, executor: Executor) -> None:
        self.executor: Executor | None = executor

    def describe(self) -> list[Metric]:
        return []  # unchecked: a scrape must not read the store at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from isolane.executor.human import pending_requests
        from isolane.schemas.payloads import HUMAN_EVENT_TYPES

        executor = self.executor
        if executor is None:
            return
        runs = GaugeMetricFamily("isolane_runs", "Runs in the store, by status.",
                                 labels=["status"])
        backlog = GaugeMetricFamily("isolane_writer_queue_depth", "Writes queued for the store "
                                    "writer and not yet taken.")
        waiting = GaugeMetricFamily("isolane_human_requests_waiting", "Questions to a person "
                                    "that running runs wait on.")
        try:
            store = executor.store
            for status, count in sorted(store.count_runs_by_status().items()):
                runs.add_metric([status], count)
            pending = 0
            for row in store.list_runs(status="running", limit=_MAX_RUNNING_SCANNED):
                pending += len(pending_requests(store.events(row.id, types=HUMAN_EVENT_TYPES)))
            waiting.add_metric([], pending)
            backlog.add_metric([], executor.writer_backlog())
        except RunStateError:
            return  # the executor is closed: nothing to read
        except IsolaneError as exc:  # the store is unreachable: the counters are still served
            log.warning("metrics: could not read the store: %s", exc)
            return
        yield runs
        yield backlog
        yield waiting
