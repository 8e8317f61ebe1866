"""Durable runs: session state, resume after a real SIGKILL, restart policy, spool import."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolane import Executor, RunHandle, RunSpec
from isolane.errors import RunStateError
from isolane.schemas.envelope import encode_event
from isolane.schemas.spool_seek import offset_after
from isolane.tracking.state import resume_state
from tests.helpers import executor_on

pytestmark = pytest.mark.anyio

FLOW = "tests.flows:durable"


def _check_log(ex: Executor, run_id: str) -> None:
    count, low, high = ex.store.seq_stats(run_id)
    assert (low, count) == (1, high), f"gaps or duplicates: count={count} min={low} max={high}"


async def _crashed_after_step_2(ex: Executor) -> RunHandle:
    """A run of FLOW SIGKILLed once its step 2 has completed."""
    run = await ex.submit(RunSpec(workflow=FLOW, config={"sleep": 0.3}))
    async for event in run.events():
        if event.type == "dag_node_update" and event.node_id == "step_2" \
                and event.data["status"] == "completed":
            break
    os.kill(ex.store.get_run(run.run_id).worker_pid or 0, signal.SIGKILL)
    assert (await run.wait()).status == "crashed"
    return run


async def test_resume_skips_completed_steps_and_continues_seq(backend_name: str, home: Path) -> None:
    """A SIGKILLed run resumed: finished steps are not re-run, state is restored, seq continues."""
    async with executor_on(backend_name, home) as ex:
        reference = await ex.run(RunSpec(workflow=FLOW, config={"sleep": 0.0}))
        assert reference.status == "completed"

        run = await _crashed_after_step_2(ex)
        last_before = ex.store.seq_stats(run.run_id)[2]

        resumed = await ex.resume(run.run_id)
        outcome = await resumed.wait()
        assert outcome.status == "completed" and outcome.result == reference.result
        row = ex.store.get_run(run.run_id)
        assert row.attempt == 2
        started = [e for e in ex.store.events(run.run_id, types=["run_started"])]
        assert [e.data["attempt"] for e in started] == [1, 2]
        assert started[1].seq == (last_before or 0) + 1
        _check_log(ex, run.run_id)
        lines = (Path(row.work_dir) / "executions.log").read_text().split()
        starts = Counter(lines[i + 1] for i in range(0, len(lines), 3) if lines[i] == "start")
        assert starts["1"] == 1 and starts["2"] == 1
        restored = [e.data for e in ex.store.events(run.run_id, types=["custom"])
                    if e.data["name"] == "restored"]
        assert restored[0] == {"name": "restored", "total": None, "trail": 0}
        assert restored[1]["total"] is not None and restored[1]["trail"] >= 1


async def test_each_ended_attempt_keeps_the_run_state_in_session_states(home: Path) -> None:
    """When a worker ends (crashed or completed), the parent keeps the run's latest consistent
    state, as of its last event; a resume reads it back instead of folding the log again."""
    async with Executor(home=home) as ex:
        run = await _crashed_after_step_2(ex)
        kept = ex.store.session_state(run.run_id)
        assert kept is not None and kept[0] == ex.store.seq_stats(run.run_id)[2]
        assert kept[1] == resume_state(ex.store, run.run_id)
        assert {"step_1", "step_2"} <= set(kept[1]["completed"])
        assert kept[1]["context"]["total"] and kept[1]["logs"]["trail"]

        outcome = await (await ex.resume(run.run_id)).wait()
        assert outcome.status == "completed"
        seq, state = ex.store.session_state(run.run_id) or (0, {})
        assert seq == ex.store.seq_stats(run.run_id)[2] > kept[0]
        assert set(state["completed"]) == {f"step_{i}" for i in range(1, 7)}
        assert state["context"]["total"] == outcome.result
        assert state["logs"]["trail"][-1] == f"step 6 -> {outcome.result}"


async def test_resume_refuses_completed_and_running_runs(home: Path) -> None:
    """Resuming a completed run, or one still running, is a clear error."""
    async with Executor(home=home) as ex:
        done = await ex.run(RunSpec(workflow="tests.flows:ok"))
        with pytest.raises(RunStateError, match="is completed"):
            await ex.resume(done.run_id)
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config={"seconds": 30}))
        with pytest.raises(RunStateError, match="still running"):
            await ex.resume(run.run_id)
        await run.cancel()


async def test_restart_policy_resumes_a_crashed_worker(backend_name: str, home: Path) -> None:
    """With max_restarts a crashed worker is resumed automatically; each attempt is visible."""
    async with executor_on(backend_name, home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:crash_once", max_restarts=2,
                                      restart_backoff=0.05))
        outcome = await run.wait()
        assert (outcome.status, outcome.result) == ("completed", "done on attempt 2")
        attempts = [e.data["attempt"] for e in ex.store.events(run.run_id, types=["run_started"])]
        assert attempts == [1, 2]
        assert any(d.kind == "restart" for d in ex.store.diagnostics(run.run_id))
        _check_log(ex, run.run_id)


async def test_state_snapshots_are_deltas_and_restore(home: Path) -> None:
    """Snapshots carry only what changed; a resumed worker sees the folded state."""
    async with Executor(home=home) as ex:
        outcome = await ex.run(RunSpec(workflow=FLOW, config={"sleep": 0.0}))
        snaps = [e.data for e in ex.store.events(outcome.run_id, types=["state_snapshot"])]
    trails = [s.get("logs", {}).get("trail", []) for s in snaps]
    assert all(len(t) <= 1 for t in trails)
    assert sum(len(t) for t in trails) == 6


@pytest.mark.slow
async def test_sigkill_at_random_points_then_resume(home: Path) -> None:
    """20 SIGKILLs at random points (boundaries and mid-node): every run resumes to the same result."""
    rng = random.Random(20261123)
    async with Executor(home=home) as ex:
        reference = await ex.run(RunSpec(workflow=FLOW, config={"sleep": 0.0}))
        for trial in range(20):
            run = await ex.submit(RunSpec(workflow=FLOW, config={"sleep": 0.03}))
            async for event in run.events():
                if event.type == "run_started":
                    break
            await anyio.sleep(rng.uniform(0.0, 0.35))
            pid = ex.store.get_run(run.run_id).worker_pid
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            outcome = await run.wait()
            completed_before = {n.node_id for n in ex.store.dag(run.run_id)[0] if n.status == "completed"}
            attempts = 1
            while outcome.status != "completed":
                assert outcome.status == "crashed", (trial, outcome)
                outcome = await (await ex.resume(run.run_id)).wait()
                attempts += 1
            assert outcome.result == reference.result, trial
            _check_log(ex, run.run_id)
            completions = Counter(e.node_id for e in ex.store.events(run.run_id, types=["dag_node_update"])
                                  if e.data["status"] == "completed")
            assert set(completions.values()) == {1}, (trial, completions)
            work_dir = Path(ex.store.get_run(run.run_id).work_dir)
            lines = [ln.split() for ln in (work_dir / "executions.log").read_text().splitlines()]
            for node in completed_before:
                step = node.split("_")[1]
                assert [ln for ln in lines if ln[0] == "start" and ln[1] == step and ln[2] != "1"] == [], \
                    (trial, node)


def _restart_postgres() -> str | None:
    """Restart the local PostgreSQL cluster; return why it cannot be done, or None."""
    import shutil
    import subprocess

    tool = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").is_dir() else []
    if tool is None or not versions or os.geteuid() != 0:
        return "needs pg_ctlcluster, a local cluster under /etc/postgresql and root"
    version = versions[-1].parent.name
    done = subprocess.run([tool, "--skip-systemctl-redirect", version, "main", "restart"],
                          check=False, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"pg_ctlcluster restart failed: {done.stderr.strip()[:200]}"
    return None


@pytest.mark.postgres
async def test_postgres_restart_loses_no_events(pg_schema_url: str, home: Path) -> None:
    """PostgreSQL restarted mid-run: writes are retried and every event arrives, once."""
    if Path("/etc/postgresql").is_dir() is False:
        pytest.skip("no local PostgreSQL cluster to restart")
    async with Executor(home=home, db_url=pg_schema_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:gated", config={"n": 3000}))
        async for event in run.events():
            if event.type == "custom" and event.data.get("i") == 2999:
                break
        gate = Path(ex.store.get_run(run.run_id).work_dir) / "go"
        why_not = await anyio.to_thread.run_sync(_restart_postgres)
        if why_not is not None:
            await run.cancel()
            pytest.skip(why_not)
        assert not run.done, "the run waits for its gate, so the outage falls inside it"
        gate.touch()
        outcome = await run.wait()
        assert outcome.status == "completed", outcome
        assert ex.store.count_events(run.run_id, types=["custom"]) == 6000
        _check_log(ex, run.run_id)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pads=st.lists(st.integers(0, 40), max_size=120), since=st.integers(0, 150),
       torn=st.booleans(), head=st.integers(0, 3), zeros=st.integers(0, 3000))
def test_a_reattach_finds_its_place_in_the_spool_by_bisection(
        tmp_path: Path, pads: list[int], since: int, torn: bool, head: int, zeros: int) -> None:
    """A re-attaching relay's seek into a spool equals a scan from the attempt's start: the
    first record whose seq is after the one the new parent holds (a torn record and the space
    allocated ahead are not records)."""
    spool = tmp_path / f"spool-{len(pads)}-{since}-{torn}-{head}-{zeros}.jsonl"
    earlier = b"".join(encode_event("r", 1, 0.0, "custom", None, {"name": "old"}) + b"\n"
                       for _ in range(head))  # records of an earlier attempt, before start
    records = [encode_event("r", seq, 1.0, "custom", None, {"name": "x", "pad": "y" * pad}) + b"\n"
               for seq, pad in enumerate(pads, start=1)]
    tail = b'{"v":1,"run_id":"r","seq":' if torn else b""
    spool.write_bytes(earlier + b"".join(records) + tail + bytes(zeros))
    expected = len(earlier) + sum(len(r) for r in records[:since])
    fd = os.open(spool, os.O_RDONLY)
    try:
        assert offset_after(fd, len(earlier), since) == expected
    finally:
        os.close(fd)
