"""The worker backend contract: every backend (``local``, ``ray``) passes the same suite.

Ray tests carry the ``ray`` marker and share one local Ray cluster per session (2 CPUs). Without
Ray installed they skip, or fail when ``ISOLANE_REQUIRE_RAY=1``. The multi-node test runs last:
it replaces the session's cluster with a ``ray.cluster_utils.Cluster`` of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import isolane
from isolane import Executor, RunSpec
from isolane.backends import (
    BACKENDS,
    WorkerBackend,
    WorkerHandle,
    create_backend,
)
from isolane.errors import ConfigError
from isolane.schemas.blobs import BlobStore
from isolane.tracking.workspace import checkout
from tests.helpers import RAY_OPTIONS, executor_on, import_ray

pytestmark = pytest.mark.anyio

_FLOW_CONFIG: dict[str, Any] = {"capture_ag2": False}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _first_custom(run: isolane.RunHandle, name: str) -> dict[str, Any]:
    async for event in run.events():
        if event.type == "custom" and event.data.get("name") == name:
            return event.data
    raise AssertionError(f"no {name} event")


def test_backends_are_a_registry_by_name() -> None:
    """Backends are looked up by name; an unknown one fails with the names that exist."""
    assert set(BACKENDS) == {"local", "ray"}
    local = create_backend("local")
    assert isinstance(local, WorkerBackend) and local.name == "local"
    with pytest.raises(ConfigError, match="unknown worker backend 'k8s'; use one of local, ray"):
        create_backend("k8s")


async def test_events_arrive_in_order(backend_name: str, tmp_path: Path) -> None:
    """A run's events are stored with seq 1..n in the order the worker emitted them."""
    async with executor_on(backend_name, tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:ok", task="hi", config=_FLOW_CONFIG))
        outcome = await run.wait()
        assert (outcome.status, outcome.exit_code) == ("completed", 0), outcome
        events = ex.store.events(run.run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        # Heartbeats come by the clock (one may precede run_started on a slow start): the
        # order pinned here is that of everything the worker emitted for the run.
        lifecycle = [e.type for e in events if e.type != "heartbeat"]
        assert lifecycle[0] == "run_started" and lifecycle[-1] == "run_completed"
        notes = [e.data["text"] for e in events if e.type == "custom"]
        assert notes == ["inside step 1", "inside a sub-node"]


async def test_ten_thousand_events_none_lost(backend_name: str, tmp_path: Path) -> None:
    """10k events travel in batches with no loss, no duplicate and no gap."""
    n = 10_000
    async with executor_on(backend_name, tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:emit_many", config={**_FLOW_CONFIG, "n": n}))
        outcome = await run.wait()
        assert outcome.status == "completed" and outcome.result == n
        assert ex.store.count_events(run.run_id, types=["custom"]) == n
        count, low, high = ex.store.seq_stats(run.run_id)
        assert (low, count) == (1, high)
        ticks = [e.data["i"] for e in ex.store.events(run.run_id, types=["custom"])]
        assert ticks == list(range(n))


@pytest.mark.parametrize(("flow", "event"), [("tests.flows:sleeps", "sleeping"),
                                             ("tests.flows.backend:busy_python", "busy"),
                                             ("tests.flows.backend:busy_c", "busy")],
                         ids=["sleeping", "busy-python", "busy-c-call"])
async def test_cancel_stops_the_worker(backend_name: str, tmp_path: Path, flow: str,
                                       event: str) -> None:
    """Cancel ends a sleeping, a busy-Python and a busy-C-call run ``cancelled``, process gone."""
    async with executor_on(backend_name, tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow=flow, config=_FLOW_CONFIG, cancel_grace=0.5))
        data = await _first_custom(run, event)
        with anyio.fail_after(15):
            await run.cancel("test")
            outcome = await run.wait()
        assert outcome.status == "cancelled", outcome
    deadline = time.monotonic() + 5
    while _alive(data["pid"]) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not _alive(data["pid"])


async def test_kill_9_of_the_worker_is_crashed(backend_name: str, tmp_path: Path) -> None:
    """A worker killed with SIGKILL from outside ends ``crashed`` with SIGKILL(-9) named."""
    async with executor_on(backend_name, tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config=_FLOW_CONFIG))
        data = await _first_custom(run, "sleeping")
        os.kill(data["pid"], signal.SIGKILL)
        with anyio.fail_after(15):
            outcome = await run.wait()
    assert outcome.status == "crashed" and outcome.exit_code == -9
    assert "SIGKILL(-9)" in (outcome.error or "")


async def test_stopped_worker_is_caught_by_the_watchdog(backend_name: str, tmp_path: Path) -> None:
    """A SIGSTOPped worker sends no heartbeat: the watchdog ends it ``timed_out`` and kills it."""
    async with executor_on(backend_name, tmp_path / "home", heartbeat_interval=0.2) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config=_FLOW_CONFIG,
                                      heartbeat_timeout=1.5, cancel_grace=0.3))
        data = await _first_custom(run, "sleeping")
        os.kill(data["pid"], signal.SIGSTOP)
        with anyio.fail_after(20):
            outcome = await run.wait()
    assert outcome.status == "timed_out" and "no heartbeat" in (outcome.error or "")
    assert not _alive(data["pid"])


async def test_first_complete_race(backend_name: str, tmp_path: Path) -> None:
    """The first racer to complete wins; the other is cancelled through its backend."""
    async with executor_on(backend_name, tmp_path / "home") as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows:race_flow", config=_FLOW_CONFIG))
        assert parent.status == "completed"
        with anyio.fail_after(30):
            race = await ex.race(parent.run_id, "work", [{"delay": 30.0}, {"delay": 0.1}])
        assert race.winner_run_id == race.racers[1]["run_id"]
        assert [r["status"] for r in race.racers] == ["lost", "won"]
        pids = [e.data["pid"] for r in race.racers
                for e in ex.store.events(r["run_id"], types=["custom"]) if e.data["name"] == "racer"]
    # A slow racer may be cancelled before it even reaches its work (a Ray actor takes seconds
    # to start): every racer process that did start must be gone.
    assert pids and not any(_alive(p) for p in pids)


async def test_handle_reports_where_the_worker_runs(backend_name: str, tmp_path: Path) -> None:
    """A started worker is a WorkerHandle naming its location (``local`` or its Ray node)."""
    async with executor_on(backend_name, tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config=_FLOW_CONFIG))
        await _first_custom(run, "sleeping")
        monitor = run.monitor
        assert monitor is not None and isinstance(monitor.worker, WorkerHandle)
        location = monitor.worker.location
        await run.cancel()
        await run.wait()
    assert location == "local" if backend_name == "local" else location.startswith("ray node ")


# -- Ray only: files shipped between nodes, warm relays, re-attaching after a parent crash ------


def _relay_dirs(run_id: str) -> list[Path]:
    return list((Path(tempfile.gettempdir()) / "isolane-ray").glob(f"*/{run_id}"))


@pytest.mark.ray
async def test_ray_files_travel_and_a_branch_gets_its_workspace(ray_session: Any,
                                                                tmp_path: Path) -> None:
    """With node-local files, contents reach the parent's blob store through Ray; a branch's
    worker receives the workspace it starts from; a warm pool serves the launches."""
    home = tmp_path / "home"
    options = {**RAY_OPTIONS, "files": "ship", "pool_size": 1}
    async with Executor(home=home, backend="ray", backend_options=options) as ex:
        parent = await ex.run(RunSpec(workflow="tests.flows.backend:chain_files",
                                      config={**_FLOW_CONFIG, "flavour": "a"}))
        assert (parent.status, parent.result) == ("completed", "a-1|a-2|a-3"), parent
        row = ex.store.get_run(parent.run_id)
        assert not any(Path(row.work_dir).iterdir()), "the worker wrote on its node only"
        assert row.meta["worker"]["actor"].startswith("isolane-relay-")
        assert row.meta["worker"]["location"].startswith("ray node ")
        assert _relay_dirs(parent.run_id) == [], "the relay removed its node-local files"
        out = tmp_path / "at_step_2"
        checkout(ex.store, BlobStore(home / "blobs"), parent.run_id, "step_2", out)
        assert sorted(p.name for p in out.iterdir()) == ["out_1.txt", "out_2.txt"]

        child = await ex.branch(parent.run_id, "step_3", config={"flavour": "b"})
        outcome = await child.wait()
        assert (outcome.status, outcome.result) == ("completed", "a-1|a-2|b-3"), outcome
        assert ex.store.get_run(child.run_id).meta["worker"]["actor"] != row.meta["worker"]["actor"]
        out = tmp_path / "branch_end"
        checkout(ex.store, BlobStore(home / "blobs"), child.run_id, "step_3", out)
        assert (out / "out_3.txt").read_text() == "a-1|a-2|b-3"


@pytest.mark.ray
async def test_ag2_capture_cost_dag_and_a_human_answer_on_ray(ray_session: Any,
                                                             tmp_path: Path) -> None:
    """The built-in AG2 workflow runs under a relay (default AG2 preload) with every LLM call
    priced and placed on the DAG; an AG2 agent's question is answered through Ray."""
    from isolane.testing import FakeLLM, Script

    options = {"num_cpus": 0.25, "kill_timeout": 5.0, "pool_size": 1}
    async with Executor(home=tmp_path / "home", backend="ray", backend_options=options) as ex:
        outcome = await ex.run(RunSpec(workflow="planning-control", task="Summarise the data.",
                                       config={"llm": "offline"}))
        assert outcome.status == "completed", outcome.error
        calls = ex.store.llm_calls(outcome.run_id)
        assert calls and all(c.node_id and c.prompt_tokens > 0 for c in calls)
        # the offline model has no price: never a silent $0
        assert {(c.cost_source, c.cost) for c in calls} == {("unknown_model", None)}
        nodes, _ = ex.store.dag(outcome.run_id)
        assert {"planning", "control"} <= {n.node_id for n in nodes if n.status == "completed"}
        assert ex.store.count_events(outcome.run_id, types=["agent_message"]) > 0
        assert ex.store.count_events(outcome.run_id, types=["cost_update"]) > 0

        with FakeLLM(Script(default="Hello, human.")) as llm:
            run = await ex.submit(RunSpec(workflow="tests.flows.human:ag2_human", task="hi bot",
                                          config={"llm": llm.config("gpt-4o-mini")}))
            with anyio.fail_after(60):
                async for request in run.events(types=["human_input_request"]):
                    break
            await run.answer(request.data["request_id"], "tell me a joke")
            answered = await run.wait()
        assert answered.status == "completed", answered.error
        assert answered.result["history"] == ["hi bot", "Hello, human.", "tell me a joke",
                                              "Hello, human."]
        priced = ex.store.llm_calls(run.run_id)
        assert len(priced) == 2 and all(c.cost_source == "ag2_price_table" and (c.cost or 0) > 0
                                        for c in priced), priced


@pytest.mark.ray
async def test_an_unclaimed_pool_relay_exits_by_itself(ray_session: Any) -> None:
    """Pool relays are detached, so nobody else would end them: an idle one exits after its
    idle_timeout, and the backend replaces it instead of handing it out."""
    from isolane.backends.ray.backend import NAMESPACE, RayBackend

    backend = RayBackend(**{**RAY_OPTIONS, "pool_size": 1, "idle_timeout": 2.0})
    backend.start()
    try:
        (warm,) = backend._pool
        await warm.ready  # started and preloaded: the idle clock runs from here
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                ray_session.get_actor(warm.name, namespace=NAMESPACE)
            except ValueError:
                break
            await anyio.sleep(0.2)
        else:
            raise AssertionError(f"pool relay {warm.name} still alive after its idle timeout")
        actor, name = await backend._claim()
        assert name != warm.name
        assert await actor.warm.remote()  # a usable relay
        ray_session.kill(actor, no_restart=True)
    finally:
        backend.close()


@pytest.mark.ray
async def test_a_lost_relay_actor_is_crashed_with_its_cause(ray_session: Any,
                                                            tmp_path: Path) -> None:
    """Killing a run's relay actor through Ray (not its worker) ends the run ``crashed``,
    naming the actor's node; the worker dies with its relay."""
    async with executor_on("ray", tmp_path / "home") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config=_FLOW_CONFIG))
        data = await _first_custom(run, "sleeping")
        relay = ex.store.get_run(run.run_id).meta["worker"]
        ray_session.kill(ray_session.get_actor(relay["actor"], namespace=relay["namespace"]),
                         no_restart=True)
        with anyio.fail_after(30):
            outcome = await run.wait()
    assert outcome.status == "crashed", outcome
    assert "its actor died" in (outcome.error or "") and relay["location"] in (outcome.error or "")
    deadline = time.monotonic() + 10
    while _alive(data["pid"]) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not _alive(data["pid"])


_CRASHING_PARENT = """
import os, sys
import anyio
from isolane import Executor, RunSpec

async def main() -> None:
    options = {"num_cpus": 0.25, "preload": ["isolane.worker.entry"], "address": sys.argv[2]}
    async with Executor(home=sys.argv[1], backend="ray", backend_options=options) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:gated", timeout=300,
                                      config={"n": 2000, "capture_ag2": False}))
        async for event in run.events():
            if event.type == "custom" and event.data.get("i") == 1999:
                break
        print(run.run_id, flush=True)
        os._exit(3)  # the parent dies hard: no cleanup, no cancel

anyio.run(main)
"""


@pytest.mark.ray
async def test_a_new_parent_reattaches_to_a_ray_worker_whose_parent_died(ray_session: Any,
                                                                         tmp_path: Path) -> None:
    """The relay is detached: the run outlives its parent; a new parent's recovery re-attaches,
    replays what it missed and supervises the run to its end, every event exactly once."""
    home = tmp_path / "home"
    address = ray_session.get_runtime_context().gcs_address
    parent = await anyio.run_process([sys.executable, "-c", _CRASHING_PARENT, str(home), address],
                                     check=False, cwd=Path(__file__).parent.parent)
    assert parent.returncode == 3, parent.stderr.decode()[-2000:]
    run_id = parent.stdout.decode().split()[-1]
    async with Executor(home=home, recover=True) as ex:  # the local backend cannot reach it
        (report,) = ex.recovered
        assert (report.run_id, report.action) == (run_id, "skipped")
        assert "backend='ray'" in report.detail and ex.store.get_run(run_id).status == "running"
    async with Executor(home=home, backend="ray", backend_options=RAY_OPTIONS,
                        recover=True) as ex:
        assert [(r.run_id, r.action) for r in ex.recovered] == [(run_id, "reattached")]
        row = ex.store.get_run(run_id)
        assert row.status == "running"
        monitor = ex.get(run_id).monitor
        assert monitor is not None and monitor.timeout is not None
        assert monitor.timeout < 300, "the run's timeout counts from its start, not the re-attach"
        (Path(row.work_dir) / "go").touch()  # the worker ran on while no parent watched it
        with anyio.fail_after(60):
            outcome = await ex.get(run_id).wait()
        assert (outcome.status, outcome.result) == ("completed", 4000), outcome
        assert ex.store.count_events(run_id, types=["custom"]) == 4000
        count, low, high = ex.store.seq_stats(run_id)
        assert (low, count) == (1, high), "no event lost, none duplicated"
        assert ex.store.diagnostics(run_id) == [], "the replay started right after the stored seq"
        assert ex.store.get_run(run_id).meta["parent_pid"] == os.getpid()


# -- multi-node (last: it replaces the session's Ray cluster) -----------------------------------


@pytest.mark.ray
@pytest.mark.slow
async def test_node_loss_is_crashed_then_resume_completes_elsewhere(tmp_path: Path) -> None:
    """Killing the node of a run ends it ``crashed`` naming the node; resume completes it on the
    surviving node with every event exactly once, and with its files: they live on the nodes
    (``files="ship"``), travel to the parent's blob store and back to the new node."""
    ray = import_ray()
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 200, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
        async with Executor(home=tmp_path / "home", backend="ray", heartbeat_interval=0.5,
                            backend_options={**RAY_OPTIONS, "num_cpus": 1, "files": "ship"}) as ex:
            run = await ex.submit(RunSpec(workflow="tests.flows.backend:node_loss",
                                          config=_FLOW_CONFIG, heartbeat_timeout=20))
            data = await _first_custom(run, "waiting")
            assert run.monitor is not None
            node_id = run.monitor.worker.location.split()[2]
            (victim,) = [n for n in nodes if n.node_id == node_id]
            cluster.remove_node(victim, allow_graceful=False)
            with anyio.fail_after(30):
                outcome = await run.wait()
            assert outcome.status == "crashed", outcome
            assert node_id in (outcome.error or "")
            deadline = time.monotonic() + 10  # its worker dies with the actor (parent-death signal)
            while _alive(data["pid"]) and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            assert not _alive(data["pid"])

            resumed = await ex.resume(run.run_id)
            with anyio.fail_after(30):
                final = await resumed.wait()
            assert (final.status, final.result) == \
                ("completed", "done on attempt 2: written by step 1"), final
            row = ex.store.get_run(run.run_id)
            assert not any(Path(row.work_dir).iterdir()), "workers wrote on their nodes only"
            out = tmp_path / "checkout"
            checkout(ex.store, BlobStore(tmp_path / "home" / "blobs"), run.run_id, "step_2", out)
            assert (out / "notes.txt").read_text() == "written by step 1"
            assert (out / "result.txt").read_text() == "WRITTEN BY STEP 1"
            assert resumed.monitor is None
            count, low, high = ex.store.seq_stats(run.run_id)
            assert (low, count) == (1, high)  # no event lost, none duplicated
            waits = [e.data for e in ex.store.events(run.run_id, types=["custom"])
                     if e.data["name"] == "waiting"]
            assert [w["attempt"] for w in waits] == [1, 2]
            progress = ex.store.count_events(run.run_id, types=["custom"]) - len(waits)
            assert progress == 50  # step 1 ran once
    finally:
        ray.shutdown()
        cluster.shutdown()


async def test_a_worker_loads_none_of_the_parent_stack(backend_name: str, tmp_path: Path) -> None:
    """A worker process imports no database, server or CLI library: the parent's stack stays home.

    The Ray relays here preload the worker alone, so nothing may be there; a local worker's
    forkserver preloads AG2 too, whose HTTP client may bring ``rich`` along: what AG2 and openai
    load by themselves (measured in a fresh interpreter) is theirs, everything else would be
    isolane's.
    """
    async with executor_on(backend_name, tmp_path / "home") as ex:
        outcome = await ex.run(RunSpec(workflow="tests.flows:loaded_modules", config=_FLOW_CONFIG))
    assert outcome.status == "completed", outcome
    theirs: set[str] = set()
    if backend_name == "local":
        code = ("import sys, autogen, openai; from tests.flows import PARENT_STACK; "
                "print(' '.join(n for n in PARENT_STACK if n in sys.modules))")
        probe = await anyio.run_process([sys.executable, "-c", code],
                                        cwd=Path(__file__).resolve().parent.parent)
        theirs = set(probe.stdout.decode().split())
    assert set(outcome.result) - theirs == set(), f"a worker loaded {outcome.result}"
