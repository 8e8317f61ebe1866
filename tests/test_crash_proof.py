"""An event whose emit() returned is stored, whatever happens to its worker the next instant.

Real workers, real SIGKILLs and ``os._exit``, real SQLite and PostgreSQL stores: every count
below must equal exactly what the workflow emitted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from isolane import Executor, RunSpec
from isolane.testing import FakeLLM, Script

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("how", ["sigkill", "os._exit"])
@pytest.mark.parametrize("n", [1, 10, 1000, 100_000])
async def test_a_burst_then_sudden_death_loses_nothing(home: Path, db_url: str, n: int,
                                                       how: str) -> None:
    """n events emitted, then SIGKILL or os._exit at once: all n are stored, in order, and the
    run ends crashed."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.crash:burst_then_die",
                                      config={"n": n, "how": how}))
        outcome = await run.wait()
        stored = [e.data["i"] for e in ex.store.events(run.run_id, types=["custom"])]
        diagnostics = ex.store.diagnostics(run.run_id)
    assert outcome.status == "crashed", outcome
    assert stored == list(range(n))
    assert diagnostics == []


async def test_events_of_a_fork_pool_beside_the_worker_never_overwrite_its_own(home: Path) -> None:
    """A workflow whose fork-started multiprocessing pool emits while it emits: the children's
    emit() returns 0 (nothing recorded, a warning in the run's output), and every event of the
    worker itself is stored, in order."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.crash:emits_from_forked_children",
                                      config={"n": 3000}))
        outcome = await run.wait()
        ticks = [e.data["i"] for e in ex.store.events(run.run_id, types=["custom"])
                 if e.data["name"] == "tick"]
        output = " ".join(e.data.get("text", "") for e in ex.store.events(run.run_id,
                                                                        types=["output"]))
        diagnostics = ex.store.diagnostics(run.run_id)
    assert outcome.status == "completed", outcome
    assert ticks == list(range(3000)) and diagnostics == []
    assert "forked from the worker" in output


async def test_a_lone_event_after_a_quiet_spell_survives_sigkill(home: Path, db_url: str) -> None:
    """One event after 0.3 s of silence, then SIGKILL: it is stored."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.crash:burst_then_die",
                                      config={"n": 1, "quiet": 0.3}))
        outcome = await run.wait()
        stored = ex.store.events(run.run_id, types=["custom"])
    assert outcome.status == "crashed" and [e.data["i"] for e in stored] == [0]


async def test_a_node_and_its_event_survive_sigkill_inside_it(home: Path, db_url: str) -> None:
    """``with ctx.node(...)``, an event, SIGKILL: the node is stored as running (it never
    finished), its event is attributed to it, and the run is crashed."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.crash:node_then_die"))
        outcome = await run.wait()
        nodes, _ = ex.store.dag(run.run_id)
        (inside,) = ex.store.events(run.run_id, types=["custom"])
    assert outcome.status == "crashed"
    assert [(n.node_id, n.status) for n in nodes] == [("risky", "running")]
    assert inside.node_id == "risky" and inside.data["note"] == "about to die"


def test_an_llm_call_just_before_sigkill_is_billed(tmp_path: Path, db_url: str) -> None:
    """A real AG2 agent's LLM call on FakeLLM, then SIGKILL: `isolane cost` shows the call,
    its tokens and its cost."""
    home = tmp_path / "home"

    async def main() -> str:
        with FakeLLM(Script(default="The answer is 4.")) as llm:
            async with Executor(home=home, db_url=db_url) as ex:
                run = await ex.submit(RunSpec(
                    workflow="tests.flows.crash:llm_then_die", task="What is 2 + 2?",
                    config={"llm": {"model": "fake-model", "base_url": llm.base_url},
                            "prices": {"fake-model": [1.0, 2.0]}},
                    env={"OPENAI_API_KEY": "test-key"}))
                outcome = await run.wait()
            assert outcome.status == "crashed", outcome
            assert llm.served.calls == 1
            return run.run_id

    run_id = anyio.run(main)
    proc = subprocess.run([sys.executable, "-m", "isolane.cli", "cost", run_id, "--json",
                           "--home", str(home), "--db", db_url],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    total = json.loads(proc.stdout)["total"]
    assert total["calls"] == 1 and total["prompt_tokens"] > 0 and total["cost"] > 0


async def test_a_step_that_returned_before_sigkill_is_not_run_again(home: Path, db_url: str) -> None:
    """Four steps return, SIGKILL at once, resume: no step function is called again."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.crash:steps_then_die"))
        assert (await run.wait()).status == "crashed"
        resumed = await (await ex.resume(run.run_id)).wait()
        work_dir = Path(ex.store.get_run(run.run_id).work_dir)
    assert resumed.status == "completed" and resumed.result == 1 + 4 + 9 + 16
    assert (work_dir / "calls.log").read_text().split() == ["1", "2", "3", "4"]


async def test_random_external_kills_never_lose_an_acknowledged_event(home: Path) -> None:
    """A streaming worker SIGKILLed from outside at random moments, 20 times: every event it
    had seen emit() return for (its own side file says which) is stored."""
    rng = random.Random(11)
    async with Executor(home=home) as ex:
        for trial in range(20):
            run = await ex.submit(RunSpec(workflow="tests.flows.crash:streams_with_receipts"))
            pid = None
            async for event in run.events():
                if event.type == "run_started":
                    pid = event.data["pid"]
                if event.type == "custom":
                    break
            assert pid is not None
            await anyio.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            outcome = await run.wait()
            assert outcome.status == "crashed", (trial, outcome)
            work_dir = Path(ex.store.get_run(run.run_id).work_dir)
            receipts = [int(s) for s in (work_dir / "receipts.log").read_text().split()]
            stored = {e.seq for e in ex.store.events(run.run_id, types=["custom"])}
            assert receipts and set(receipts) <= stored, (trial, len(receipts), len(stored))
