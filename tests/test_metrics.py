"""Prometheus metrics: scraped from a real ``isolane serve`` app over HTTP, parsed with
prometheus_client's own parser, checked against the store (real workers, one crashing for real)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from isolane import Executor, RunSpec
from isolane.metrics import ExecutorMetrics
from isolane.serve import BackgroundServer
from isolane.testing import FakeLLM, Script
from isolane.workflow import registered_workflows

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # AG2's optional extras may warn on import, once, here
    registered_workflows()

TOKEN = "metrics-secret"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _scrape_until(http: httpx.Client, done: Callable[[Samples], bool]) -> Samples:
    deadline = time.monotonic() + 30
    while True:
        response = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(response.text)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_metrics_scrape_matches_the_store(tmp_path: Path) -> None:
    """After completed, failed, crashed (os._exit, SIGKILL) and restarted runs, /metrics (behind
    the token) reports runs by status, events stored, worker starts/crashes/restarts and the LLM
    tokens and cost of the store."""
    with FakeLLM(Script(default="The answer is 4.")) as llm, \
            BackgroundServer(executor_options={"home": tmp_path / "home"}, token=TOKEN) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/metrics").status_code == 401
        ex = server.executor
        assert ex is not None
        specs = [
            RunSpec(workflow="tests.flows:ok", task="a"),
            RunSpec(workflow="tests.flows:ok", task="b"),
            RunSpec(workflow="tests.flows:raises"),
            RunSpec(workflow="tests.flows:exits", config={"code": 7}),  # os._exit: crashed
            RunSpec(workflow="tests.flows:crash_once", max_restarts=1, restart_backoff=0.01),
            RunSpec(workflow="tests.flows.crash:llm_then_die", task="What is 2 + 2?",
                    config={"llm": {"model": "fake-model", "base_url": llm.base_url},
                            "prices": {"fake-model": [1.0, 2.0]}}),
        ]
        outcomes = [server.call(ex.run, spec) for spec in specs]
        statuses = [o.status for o in outcomes]
        assert statuses == ["completed", "completed", "failed", "crashed", "completed", "crashed"]
        store = ex.store
        by_status = store.count_runs_by_status()
        stored = sum(store.count_events(o.run_id) for o in outcomes)
        calls = [call for o in outcomes for call in store.llm_calls(o.run_id)]
        assert len(calls) == 1 and calls[0].cost
        samples = _scrape_until(http, lambda s: _value(
            s, "isolane_llm_calls_total", model="fake-model", billing="billed") == 1)

    for status, count in by_status.items():
        assert _value(samples, "isolane_runs", status=status) == count
    assert by_status == {"completed": 3, "failed": 1, "crashed": 2}
    assert _value(samples, "isolane_events_stored_total") == stored
    # 6 runs, one restarted: 7 workers; 3 attempts crashed, 1 restarted.
    assert _value(samples, "isolane_worker_starts_total") == 7
    assert _value(samples, "isolane_worker_crashes_total") == 3
    assert _value(samples, "isolane_worker_restarts_total") == 1
    call = calls[0]
    assert _value(samples, "isolane_llm_tokens_total", model="fake-model", billing="billed",
                  kind="prompt") == call.prompt_tokens > 0
    assert _value(samples, "isolane_llm_tokens_total", model="fake-model", billing="billed",
                  kind="completion") == call.completion_tokens > 0
    assert _value(samples, "isolane_llm_cost_usd_total", model="fake-model") == pytest.approx(call.cost)
    assert _value(samples, "isolane_store_batch_seconds_count") > 0
    assert ("isolane_writer_queue_depth", ()) in samples
    assert _value(samples, "isolane_human_requests_waiting") == 0


@pytest.mark.anyio
async def test_embedded_registry_counts_a_waiting_question(home: Path) -> None:
    """ExecutorMetrics on a service's own registry shows a question a running run waits on, and
    stops reading once closed."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    async with Executor(home=home) as ex:
        metrics = ExecutorMetrics(ex, registry=registry)
        run = await ex.submit(RunSpec(workflow="tests.flows.human:asks", task="color?"))
        async for event in run.events(types=["human_input_request"]):
            break
        else:
            raise AssertionError("no question was asked")
        waiting = _value(_samples(generate_latest(registry).decode()), "isolane_human_requests_waiting")
        request, = await ex.pending_requests(run.run_id)
        await ex.answer(run.run_id, request.request_id, "blue")
        assert (await run.wait()).status == "completed"
        after = _samples(generate_latest(registry).decode())
        metrics.close()
    assert waiting == 1
    assert _value(after, "isolane_human_requests_waiting") == 0
    assert _value(after, "isolane_runs", status="completed") == 1
    assert ("isolane_runs", (("status", "completed"),)) not in _samples(
        generate_latest(registry).decode())


@pytest.mark.anyio
async def test_model_labels_a_worker_sends_are_bounded(home: Path) -> None:
    """A worker reporting calls of thousands of made-up models adds at most MAX_MODELS series
    per metric, with names cut short; every call is still counted."""
    from prometheus_client import CollectorRegistry, generate_latest

    from isolane.metrics import MAX_MODELS

    registry = CollectorRegistry()
    n = MAX_MODELS + 300
    async with Executor(home=home) as ex:
        metrics = ExecutorMetrics(ex, registry=registry)
        outcome = await ex.run(RunSpec(workflow="tests.flows.metrics:claims_many_models",
                                       config={"n": n}))
        assert outcome.status == "completed", outcome
        with anyio.fail_after(30):
            while metrics.llm_events_counted < n:
                await anyio.sleep(0.02)
        samples = _samples(generate_latest(registry).decode())
        metrics.close()
    calls = {labels: value for (name, labels), value in samples.items()
             if name == "isolane_llm_calls_total"}
    assert len(calls) == MAX_MODELS + 1
    assert sum(calls.values()) == n
    assert _value(samples, "isolane_llm_calls_total", model="(other)", billing="billed") == 300
    assert max(len(dict(labels)["model"]) for labels in calls) <= 120
    assert sum(v for (name, _), v in samples.items()
               if name == "isolane_llm_cost_usd_total") == pytest.approx(0.5 * n)
