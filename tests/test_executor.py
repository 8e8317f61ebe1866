"""The executor end to end: real worker processes, a real SQLite file (and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import isolane
from isolane import Executor, RunSpec
from isolane.errors import ConfigError, WorkflowNotFound
from tests.helpers import alive

pytestmark = pytest.mark.anyio


async def _first_custom(run: isolane.RunHandle, name: str) -> dict[str, Any]:
    async for event in run.events():
        if event.type == "custom" and event.data.get("name") == name:
            return event.data
    raise AssertionError(f"no {name} event")


async def test_completed_run_stores_events_dag_and_result(home: Path) -> None:
    """A workflow that returns ends completed with its result, output, nodes and events stored."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:ok", task="hi", config={"answer": 7}))
        outcome = await run.wait()
        assert outcome.status == "completed", outcome
        assert outcome.result == {"task": "hi", "answer": 7}
        events = ex.store.events(run.run_id)
        types = [e.type for e in events if e.type != "heartbeat"]  # heartbeats come by the clock
        assert types[0] == "run_started" and types[-1] == "run_completed"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert {"stream": "stdout", "text": "starting hi"} in [e.data for e in events if e.type == "output"]
        notes = [e for e in events if e.type == "custom"]
        assert [(e.node_id, e.data["text"]) for e in notes] == [
            ("step_1", "inside step 1"), ("step_1/sub", "inside a sub-node")]
        nodes, _ = ex.store.dag(run.run_id)
        by_id = {n.node_id: n for n in nodes}
        assert by_id["step_1"].status == "completed"
        assert by_id["step_1/sub"].parent_node_id == "step_1" and by_id["step_1/sub"].depth == 1
        row = ex.store.get_run(run.run_id)
        assert row.status == "completed" and row.phase == "finishing" and row.exit_code == 0


async def test_async_workflow_completes(home: Path) -> None:
    """An ``async def`` workflow runs on an event loop inside the worker."""
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows:ok_async"))
    assert (outcome.status, outcome.result) == ("completed", "async-done")


async def test_raising_workflow_is_failed_with_traceback(home: Path) -> None:
    """An exception in the workflow ends the run ``failed`` with the child's traceback kept."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:raises"))
        outcome = await run.wait()
        assert outcome.status == "failed"
        assert "ValueError: the workflow failed on purpose" in (outcome.error or "")
        assert "Traceback" in (outcome.traceback or "") and outcome.exit_code == 1
        nodes, _ = ex.store.dag(run.run_id)
        assert [(n.node_id, n.status) for n in nodes] == [("boom", "failed")]
        with pytest.raises(isolane.WorkflowError, match="ended failed"):
            outcome.raise_for_status()


@pytest.mark.parametrize(
    ("flow", "config", "exit_code", "match"),
    [
        ("tests.flows:exits", {"code": 3}, 3, "exit code 3"),
        ("tests.flows:segfault", {}, -signal.SIGSEGV, "SIGSEGV"),
    ],
    ids=["os._exit(3)", "segfault"],
)
async def test_worker_death_is_crashed(home: Path, flow: str, config: dict[str, Any],
                                       exit_code: int, match: str) -> None:
    """A worker that dies without reporting is ``crashed``, exit code rendered; earlier events kept."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow=flow, config=config))
        outcome = await run.wait()
        assert outcome.status == "crashed"
        assert outcome.exit_code == exit_code
        assert match in (outcome.error or "")
        assert ex.store.count_events(run.run_id, types=["custom"]) == 1


async def test_sigkill_from_outside_is_crashed(home: Path) -> None:
    """SIGKILL sent by someone else is noticed through the sentinel and reported as SIGKILL(-9)."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps"))
        data = await _first_custom(run, "sleeping")
        os.kill(data["pid"], signal.SIGKILL)
        with anyio.fail_after(10):
            outcome = await run.wait()
    assert outcome.status == "crashed"
    assert "SIGKILL(-9)" in (outcome.error or "") and outcome.exit_code == -9


async def test_run_timeout_is_timed_out_and_worker_gone(home: Path) -> None:
    """A run past its timeout is stopped and marked ``timed_out``; its process is gone."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", timeout=1.0, cancel_grace=1.0))
        data = await _first_custom(run, "sleeping")
        outcome = await run.wait()
    assert outcome.status == "timed_out" and "timeout of 1 s" in (outcome.error or "")
    assert not alive(data["pid"])


async def test_missed_heartbeats_are_timed_out(home: Path) -> None:
    """A worker that stops sending frames (SIGSTOP) is caught by the heartbeat watchdog."""
    async with Executor(home=home, heartbeat_interval=0.2) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", heartbeat_timeout=1.5,
                                      cancel_grace=0.5))
        data = await _first_custom(run, "sleeping")
        os.kill(data["pid"], signal.SIGSTOP)
        with anyio.fail_after(15):
            outcome = await run.wait()
    assert outcome.status == "timed_out" and "no heartbeat" in (outcome.error or "")
    assert not alive(data["pid"])


async def test_cancel_stops_worker_and_its_children(home: Path) -> None:
    """Cancel ends the run ``cancelled`` and kills the processes its workflow started, detached too."""
    async with Executor(home=home) as ex:
        runs = [await ex.submit(RunSpec(workflow="tests.flows:spawns_child", config={"detach": d}))
                for d in (False, True)]
        pids = [(await _first_custom(run, "child"))["pid"] for run in runs]
        for run in runs:
            await run.cancel()
        outcomes = [await run.wait() for run in runs]
    assert [o.status for o in outcomes] == ["cancelled", "cancelled"]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not any(alive(p) for p in pids)


async def test_cancel_escalates_to_sigkill(home: Path) -> None:
    """A workflow that ignores SIGTERM is killed once the grace period passes."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:ignores_cancel", cancel_grace=0.5))
        await _first_custom(run, "stubborn")
        await run.cancel()
        with anyio.fail_after(10):
            outcome = await run.wait()
    assert outcome.status == "cancelled"


async def test_sixteen_runs_queue_behind_four_workers(home: Path) -> None:
    """More runs than ``max_workers`` queue and all complete; at most four run at once."""
    async with Executor(home=home, max_workers=4) as ex:
        runs = [await ex.submit(RunSpec(workflow="tests.flows:sleeps", config={"seconds": 0.3}))
                for _ in range(16)]
        outcomes = [await run.wait() for run in runs]
        assert {o.status for o in outcomes} == {"completed"}
        rows = [ex.store.get_run(r.run_id) for r in runs]
    spans = sorted((r.started_at, +1) for r in rows) + sorted((r.ended_at, -1) for r in rows)
    running = peak = 0
    for _, delta in sorted(spans, key=lambda s: (s[0], s[1])):
        running += delta
        peak = max(peak, running)
    assert peak <= 4


async def test_crafted_pickle_in_spool_and_pipe_is_never_executed(home: Path, tmp_path: Path) -> None:
    """Pickle bytes a worker writes into its spool or its pipe are rejected as invalid events,
    never unpickled; the events around them are stored."""
    marker = tmp_path / "pwned"
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:pickle_attack",
                                      config={"marker": str(marker)}))
        outcome = await run.wait()
        diagnostics = ex.store.diagnostics(run.run_id)
        names = [e.data.get("name") for e in ex.store.events(run.run_id, types=["custom"])]
    assert not marker.exists()
    assert outcome.status == "completed" and outcome.result == "survived"
    invalid = [d for d in diagnostics if d.kind == "invalid_event"]
    assert len(invalid) >= 2 and any("not json!" in d.excerpt for d in invalid)
    assert names == ["after_attack"]


async def test_live_events_are_complete_and_ordered(home: Path) -> None:
    """``run.events()`` yields every stored event once, in seq order, while the run is live."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:emit_many", config={"n": 20_000}))
        seen = [event.seq async for event in run.events()]
        stored = ex.store.seq_stats(run.run_id)
    assert seen == list(range(1, len(seen) + 1))
    assert stored[0] == len(seen) and stored[2] == len(seen)


async def test_hundred_thousand_events_no_loss(db_url: str, home: Path) -> None:
    """100,000 emitted events end as exactly 100,000 rows, seq 1..N, on SQLite and PostgreSQL."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:emit_many", config={"n": 100_000}))
        outcome = await run.wait()
        assert outcome.status == "completed"
        assert ex.store.count_events(run.run_id, types=["custom"]) == 100_000
        count, low, high = ex.store.seq_stats(run.run_id)
    assert (count, low, high) == (high, 1, high)


async def test_worker_environment_is_scrubbed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker sees neither the store URL nor unlisted variables, only what the run was given."""
    monkeypatch.setenv("ISOLANE_DB_URL_LEAK_CHECK", "postgresql://secret@db/x")
    monkeypatch.setenv("SOME_PASSWORD", "hunter2")
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows:environment", env={"OPENAI_API_KEY": "sk-run"}))
    env = outcome.result
    assert "ISOLANE_DB_URL_LEAK_CHECK" not in env and "SOME_PASSWORD" not in env
    assert env["OPENAI_API_KEY"] == "sk-run" and "PATH" in env
    assert "hunter2" not in env["/proc/self/environ"]


async def test_unknown_workflow_fails_at_submit(home: Path) -> None:
    """An unresolvable workflow is refused before any process starts, with what to give instead."""
    async with Executor(home=home) as ex:
        with pytest.raises(WorkflowNotFound, match="registered name"):
            await ex.submit(RunSpec(workflow="no-such-flow"))
        with pytest.raises(WorkflowNotFound, match="cannot import"):
            await ex.submit(RunSpec(workflow="tests.no_such_module:main"))


def test_bad_options_fail_with_the_rule() -> None:
    """Bad option values fail at construction with a message stating the rule."""
    with pytest.raises(ConfigError, match="timeout must be positive"):
        RunSpec(workflow="x", timeout=0)
    with pytest.raises(ConfigError, match="max_workers must be at least 1"):
        Executor(max_workers=0)


def test_sync_facade_runs_and_streams(home: Path) -> None:
    """The synchronous facade submits, streams events and waits, from plain blocking code."""
    with isolane.SyncExecutor(home=home) as ex:
        run = ex.submit(RunSpec(workflow="tests.flows:ok", task="sync"))
        types = [event.type for event in run.events() if event.type != "heartbeat"]
        outcome = run.wait()
    assert outcome.status == "completed" and outcome.result["task"] == "sync"
    assert types[0] == "run_started" and types[-1] == "run_completed"
