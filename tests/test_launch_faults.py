"""Faults while a run launches, and outcomes a worker cannot forge.

Real parents, real workers, real stores: a parent SIGKILLed the instant its worker process
appears (before the worker's pid is stored), then recovered; a private PostgreSQL server stopped
while runs end and queued runs launch; a run marked ``crashed`` whose spool holds its outcome;
the runtime's event types refused by the public emit, and a forged ``run_completed``.
"""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest
from typer.testing import CliRunner

from isolane import Executor, RunSpec
from isolane.cli.app import app
from isolane.executor.spool import probe_spool
from isolane.schemas.spool import spool_path
from isolane.tracking.store import Store
from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio

_PARENT = """
import sys
import anyio
from isolane import Executor, RunSpec

async def main() -> None:
    home, url, log = sys.argv[1:4]
    async with Executor(home=home, db_url=url) as ex:
        print("ready", flush=True)
        sys.stdin.readline()
        await ex.submit(RunSpec(workflow="tests.flows.launch:logged_steps",
                                config={"log": log, "n": 6, "seconds": 0.1}))
        await anyio.sleep(120)  # the test kills this parent long before

anyio.run(main)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _kill_parent_when_its_worker_appears(home: Path, db_url: str, log: Path) -> None:
    """Start a parent, let it submit one run, SIGKILL it the instant a new process appears
    under it (its worker, forked by the forkserver)."""
    with subprocess.Popen([sys.executable, "-c", _PARENT, str(home), db_url, str(log)],
                          cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as parent:
        _kill_when_a_process_appears(parent)


def _kill_when_a_process_appears(parent: subprocess.Popen[str]) -> None:
    try:
        assert parent.stdout is not None and parent.stdin is not None
        assert parent.stdout.readline().strip() == "ready"
        tree = psutil.Process(parent.pid)
        before = {p.pid for p in tree.children(recursive=True)}
        parent.stdin.write("go\n")
        parent.stdin.flush()
        deadline = time.monotonic() + 60
        while not {p.pid for p in tree.children(recursive=True)} - before:
            assert time.monotonic() < deadline, "no worker process appeared in 60 s"
        os.kill(parent.pid, signal.SIGKILL)
    finally:
        parent.kill()
        parent.wait()


async def test_a_parent_killed_as_its_worker_appears_loses_nothing_and_runs_no_step_twice(
        home: Path, db_url: str) -> None:
    """Five times: the parent dies the instant its worker exists; recovery then finds the worker
    (by its spool's writer lock when no pid was stored), follows or resumes it. Every run
    completes, every step ran exactly once, and the log has no gap and no repeat."""
    logs = []
    for i in range(5):
        log = home / f"calls-{i}.log"
        _kill_parent_when_its_worker_appears(home, db_url, log)
        logs.append(log)
    store = Store.open(db_url, home=home)
    try:
        killed_early = sum(1 for row in store.list_runs(limit=10) if row.worker_pid is None)
    finally:
        store.close()
    with anyio.fail_after(180):
        async with Executor(home=home, db_url=db_url, recover=True, resume_recovered=True) as ex:
            await ex.join()
            runs = ex.store.list_runs(limit=10)
            events = {run.id: [e.seq for e in ex.store.events(run.id)] for run in runs}
            working = {run.id: [e.data["step"] for e in ex.store.events(run.id, types=["custom"])]
                       for run in runs}
            diagnostics = {run.id: [d.kind for d in ex.store.diagnostics(run.id)] for run in runs}
    assert killed_early >= 1, "no parent died before its worker's pid was stored: the test proved nothing"
    assert len(runs) == 5
    for run in runs:
        assert run.status == "completed", (run.status, run.error, [r for r in ex.recovered if r.run_id == run.id])
        assert run.result == sum(range(6))
        assert events[run.id] == list(range(1, len(events[run.id]) + 1))  # no gap, no repeat
        assert working[run.id] == list(range(6))  # each step's work reported once
        assert not {"seq_gap", "seq_duplicate", "spool_invalid"} & set(diagnostics[run.id])
    for log in logs:
        executions = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
        assert executions == {f"step_{i}": 1 for i in range(6)}, executions


async def test_a_store_outage_while_runs_end_and_queued_runs_launch(pg_cluster: PgCluster, home: Path) -> None:
    """One worker slot, four runs; the database stops while the first runs, so it ends and the
    next one launches during the outage. No worker starts before its intent is stored; after
    the outage every run completes with all its events, and the executor closes (nothing hung,
    nothing lost)."""
    log = home / "calls.log"
    with anyio.fail_after(240):
        async with Executor(home=home, db_url=pg_cluster.url, max_workers=1) as ex:
            runs = [await ex.submit(RunSpec(workflow="tests.flows.launch:logged_steps",
                                            config={"log": str(log), "n": 3, "seconds": 0.3}))
                    for _ in range(4)]
            while not log.exists():
                await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(pg_cluster.stop)
            # The first run ends and the next one tries to launch while the store is down.
            while len(log.read_text().splitlines()) < 3:
                await anyio.sleep(0.02)
            await anyio.sleep(1.5)
            # No worker was started whose "starting" could not be recorded first.
            assert len(log.read_text().splitlines()) == 3
            await anyio.to_thread.run_sync(pg_cluster.start)
            outcomes = [await run.wait() for run in runs]
            stored = {run.run_id: [e.data["step"] for e in ex.store.events(run.run_id, types=["custom"])]
                      for run in runs}
            kinds = {d.kind for run in runs for d in ex.store.diagnostics(run.run_id)}
    assert [o.status for o in outcomes] == ["completed"] * 4, outcomes
    assert all(steps == [0, 1, 2] for steps in stored.values()), stored
    assert "store_outage" in kinds
    executions = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    assert executions == {"step_0": 4, "step_1": 4, "step_2": 4}


async def test_a_crashed_run_whose_spool_holds_its_outcome_is_resettled(tmp_path: Path) -> None:
    """The store lost a run's last events and marked it crashed (an outage as it ended);
    ``recover`` imports what its spool holds beyond the store and settles it from its own
    terminal event, with a diagnostic saying so."""
    home = tmp_path / "home"
    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    async with Executor(home=home, db_url=url) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows.launch:logged_steps",
                                       config={"log": str(tmp_path / "calls.log"), "n": 3}))
        total = ex.store.count_events(outcome.run_id)
    assert outcome.status == "completed"
    with sqlite3.connect(db) as conn:  # the fault: the store kept only the first events
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq > 3", (outcome.run_id,))
        conn.execute("UPDATE runs SET status = 'crashed', result = NULL, error = 'store went away' "
                     "WHERE id = ?", (outcome.run_id,))
    async with Executor(home=home, db_url=url, recover=True) as ex:
        reports = [r for r in ex.recovered if r.run_id == outcome.run_id]
        row = ex.store.get_run(outcome.run_id)
        seqs = [e.seq for e in ex.store.events(outcome.run_id)]
        diagnostics = ex.store.diagnostics(outcome.run_id)
    assert [r.action for r in reports] == ["resettled"]
    assert row.status == "completed" and row.result == 3
    assert seqs == list(range(1, total + 1))
    assert [d.kind for d in diagnostics] == ["resettled"]
    assert "more events ending in run_completed" in diagnostics[0].reason


async def test_the_public_emit_refuses_the_runtimes_event_types(home: Path) -> None:
    """``ctx.emit_event("run_completed", ...)`` and the other runtime types raise InvalidEvent
    with a message saying what to use; nothing forged is stored; other types still pass."""
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows.launch:tries_runtime_types"))
        refused = ex.store.events(outcome.run_id, types=["custom"])
        terminal = ex.store.events(outcome.run_id, types=["run_completed", "run_failed"])
        forged = ex.store.events(outcome.run_id, types=["llm_call", "cost_update", "state_snapshot",
                                                        "human_input_response"])
        messages = ex.store.events(outcome.run_id, types=["agent_message"])
    assert outcome.status == "completed"
    assert outcome.result == ["run_completed", "run_failed", "dag_node_update", "state_snapshot",
                              "llm_call", "cost_update", "human_input_response"]
    assert all("belongs to isolane's runtime" in e.data["message"] for e in refused)
    assert [e.type for e in terminal] == ["run_completed"]
    assert all(e.data.get("result") != "forged" for e in forged)
    assert [e.data["content"] for e in messages] == ["allowed"]


async def test_a_forged_completion_followed_by_a_crash_is_a_contradiction(home: Path) -> None:
    """A worker writes its own ``run_completed`` record and exits 3: the run is ``crashed``, the
    reported result is kept, and an ``outcome_contradiction`` diagnostic names both, which
    ``isolane show`` prints."""
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows.launch:forges_completion"))
        diagnostics = ex.store.diagnostics(outcome.run_id)
    assert outcome.status == "crashed"
    assert outcome.error_type == "OutcomeContradiction"
    assert outcome.result == "forged"
    assert [d.kind for d in diagnostics] == ["outcome_contradiction"]
    assert "reported run_completed" in diagnostics[0].reason and "exit code 3" in diagnostics[0].reason
    shown = CliRunner().invoke(app, ["show", outcome.run_id, "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert "outcome_contradiction" in shown.output


async def test_a_second_worker_of_a_run_is_refused_its_spool(home: Path) -> None:
    """A run is resumed while its first worker, orphaned, still writes: the second worker is
    refused the spool (that attempt fails with a SpoolError, having run nothing). Once the first
    worker has ended, a resume takes everything it wrote and runs no step again."""
    url = f"sqlite:///{home / 'runs.db'}"
    log = home / "calls.log"
    _kill_parent_when_its_worker_appears(home, url, log)
    async with Executor(home=home, db_url=url) as ex:
        (row,) = ex.store.list_runs(limit=1)
        # What a careless caller could do, bypassing recovery's check of the spool's lock.
        ex.store.update_run(row.id, status="crashed")
        with anyio.fail_after(60):
            second = await (await ex.resume(row.id)).wait()
        assert second.status == "failed" and second.error_type == "SpoolError", second
        # Refused by the parent's check of the lock, or, if the first worker took it between
        # that check and the second worker's start, by the second worker itself.
        assert "worker" in (second.error or "") and "spool" in (second.error or "")
        with anyio.fail_after(60):
            while probe_spool(spool_path(row.work_dir)):
                await anyio.sleep(0.05)
            third = await (await ex.resume(row.id)).wait()
        working = [e.data["step"] for e in ex.store.events(row.id, types=["custom"])]
    assert third.status == "completed" and third.result == sum(range(6)), third
    assert working == list(range(6))
    executions = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    assert executions == {f"step_{i}": 1 for i in range(6)}
