"""isolane benchmarks: each figure beside a baseline measured in the same run.

Usage: ``python scripts/bench.py NAME [--json]`` with NAME one of the registered benchmarks
(``python scripts/bench.py --help`` lists them). Figures are ratios where DESIGN.md sets a target,
because this shared machine is noisy; absolute numbers are printed too.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import Float, Integer, String, Text, UniqueConstraint, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from isolane import Executor, RunSpec
from isolane.tracking.store import Store
from isolane.worker.emitter import Emitter
from isolane.worker.spool_writer import SpoolWriter

log = logging.getLogger("isolane.bench")

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}


def benchmark(name: str) -> Callable[[Callable[[argparse.Namespace], dict[str, Any]]],
                                     Callable[[argparse.Namespace], dict[str, Any]]]:
    def register(fn: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[[argparse.Namespace], dict[str, Any]]:
        BENCHMARKS[name] = fn
        return fn
    return register


# -- throughput ----------------------------------------------------------------------------------


def emit_many(ctx: Any, task: str, config: dict[str, Any]) -> int:
    n = int(config["n"])
    emit = ctx.emit
    for i in range(n):
        emit("tick", i=i)
    return n


def emit_timed(ctx: Any, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Inside a real worker: the cost of ``ctx.emit()`` (its spool, redaction and doorbells on),
    and of building the same call's dict and appending it to a list, in the same loop."""
    from isolane.worker.journal import COMPILED

    samples = int(config["samples"])
    clock = time.perf_counter_ns
    overhead = sorted(-(clock() - clock()) for _ in range(50_000))[25_000]
    emit = ctx.emit
    costs = []
    for i in range(samples):
        t0 = clock()
        emit("tick", i=i)
        costs.append(clock() - t0)
    t0 = clock()
    for i in range(samples):  # the mean from one timed block (no per-call timer in the loop)
        emit("tick", i=i)
    mean = (clock() - t0) / samples
    held: list[Any] = []
    base = []
    for i in range(samples):
        t0 = clock()
        held.append(("tick", {"i": i}))
        base.append(clock() - t0)
    costs.sort()
    base.sort()
    return {"p50": max(0.0, costs[samples // 2] - overhead), "mean": mean,
            "baseline_p50": max(0.0, base[samples // 2] - overhead),
            "journal": "compiled" if COMPILED else "python"}


async def _emit_cost(tmp: Path, samples: int = 200_000) -> dict[str, Any]:
    """Per-call ``ctx.emit()`` cost in ns, measured by a real worker on itself."""
    async with Executor(home=tmp / "home") as ex:
        outcome = await ex.run(RunSpec(workflow=emit_timed, config={"samples": samples},
                                       env={"SERVICE_TOKEN": "a-configured-secret-value"}))
    assert outcome.status == "completed", outcome
    result: dict[str, Any] = outcome.result
    return result


#: The baselines' run id has the shape of the executor's (``uuid4().hex``, 32 characters): the
#: events table is keyed by ``(run_id, seq)``, so a shorter id would make the baseline's rows and
#: key comparisons cheaper than isolane's.
_BASELINE_RUN_ID = uuid.uuid4().hex


def _rows(n: int) -> list[tuple[str, int, float, str, None, str]]:
    """The rows the end-to-end run stores: ``emit("tick", i=i)`` becomes a ``custom`` event."""
    now = time.time()
    return [(_BASELINE_RUN_ID, i, now, "custom", None, f'{{"i":{i},"name":"tick"}}')
            for i in range(1, n + 1)]


def _sqlite_conn(path: Path) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection to a database with isolane's schema and one run.

    The baselines write the same rows into the same table (same key, no other index) with the
    same pragmas as isolane does, so the ratio measures isolane's overhead, not a difference in
    schema or settings.
    """
    with Store.open(f"sqlite:///{path}") as store:
        store.create_run(run_id=_BASELINE_RUN_ID, workflow="bench")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _raw_sqlite_rate(tmp: Path, n: int) -> float:
    conn = _sqlite_conn(tmp / "raw.db")
    rows = _rows(n)
    sql = "INSERT OR IGNORE INTO events (run_id, seq, ts, type, node_id, data) VALUES (?,?,?,?,?,?)"
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[i:i + 1000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


def _raw_multirow_rate(tmp: Path, n: int) -> float:
    """The best plain ``sqlite3`` did here: 128 rows per ``INSERT`` statement (the way isolane's
    store inserts), 1,000 rows per transaction."""
    conn = _sqlite_conn(tmp / "raw_multirow.db")
    rows = _rows(n)
    per = 128
    insert = "INSERT OR IGNORE INTO events (run_id, seq, ts, type, node_id, data) VALUES "
    sql, one = insert + ", ".join(["(?,?,?,?,?,?)"] * per), insert + "(?,?,?,?,?,?)"
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        chunk = rows[i:i + 1000]
        conn.execute("BEGIN")
        full = len(chunk) - len(chunk) % per
        for j in range(0, full, per):
            conn.execute(sql, list(itertools.chain.from_iterable(chunk[j:j + per])))
        conn.executemany(one, chunk[full:])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


def _per_event_commit_rate(tmp: Path, n: int) -> float:
    conn = _sqlite_conn(tmp / "per_event.db")
    rows = _rows(n)
    sql = "INSERT INTO events (run_id, seq, ts, type, node_id, data) VALUES (?,?,?,?,?,?)"
    t0 = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute(sql, row)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


def _older_design_rate(tmp: Path, n: int) -> float:
    """The design isolane replaces: an ORM object added and committed per event, SQLite defaults.

    (Rollback journal, ``synchronous=FULL``; each commit waits for the disk.)
    """
    class Base(DeclarativeBase):
        pass

    class EventRow(Base):
        __tablename__ = "events"
        __table_args__ = (UniqueConstraint("run_id", "seq"),)
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        run_id: Mapped[str] = mapped_column(String(36))
        seq: Mapped[int] = mapped_column(Integer)
        ts: Mapped[float] = mapped_column(Float)
        type: Mapped[str] = mapped_column(String(40))
        node_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
        data: Mapped[str] = mapped_column(Text)

    engine = create_engine(f"sqlite:///{tmp / 'older.db'}")
    Base.metadata.create_all(engine)  # a throwaway baseline table, not isolane's schema path
    rows = _rows(n)
    t0 = time.perf_counter()
    with Session(engine) as session:
        for run_id, seq, ts, type_, node_id, data in rows:
            session.add(EventRow(run_id=run_id, seq=seq, ts=ts, type=type_, node_id=node_id, data=data))
            session.commit()
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return n / elapsed


async def _e2e(tmp: Path, n: int) -> dict[str, Any]:
    async with Executor(home=tmp / "home") as ex:
        # Warm the forkserver so the figure is about streaming, not the first AG2 import.
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))
        run = await ex.submit(RunSpec(workflow=emit_many, config={"n": n}))
        t0 = time.perf_counter()
        outcome = await run.wait()
        elapsed = time.perf_counter() - t0
        count, low, high = ex.store.seq_stats(run.run_id)
        custom = ex.store.count_events(run.run_id, types=["custom"])
    return {"status": outcome.status, "seconds": elapsed, "rows": count, "custom": custom,
            "seq_min": low, "seq_max": high}


@benchmark("throughput")
def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Worker emit() cost and 1 worker → SQLite end-to-end rate, against raw sqlite3."""
    n = args.events
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        emit = anyio.run(_emit_cost, tmp)
        e2e = anyio.run(_e2e, tmp, n)
        raw = _raw_sqlite_rate(tmp, n)
        raw_multirow = _raw_multirow_rate(tmp, n)
        per_event_wal = _per_event_commit_rate(tmp, min(n, 20_000))
        per_event = _older_design_rate(tmp, min(n, 2_000))
    e2e_rate = e2e["custom"] / e2e["seconds"]
    lost = n - e2e["custom"]
    duplicates = e2e["rows"] - (e2e["seq_max"] - e2e["seq_min"] + 1)
    return {
        "emit_ns_p50": round(emit["p50"], 1),
        "emit_ns_mean": round(emit["mean"], 1),
        "emit_baseline_append_ns_p50": round(emit["baseline_p50"], 1),
        "emit_journal": emit["journal"],
        "events": n,
        "e2e_status": e2e["status"],
        "e2e_seconds": round(e2e["seconds"], 3),
        "e2e_events_per_s": round(e2e_rate),
        "raw_sqlite_rows_per_s": round(raw),
        "per_event_commit_rows_per_s": round(per_event),
        "per_event_commit_wal_rows_per_s": round(per_event_wal),
        "ratio_vs_raw": round(e2e_rate / raw, 3),
        "raw_sqlite_multirow_rows_per_s": round(raw_multirow),
        "ratio_vs_raw_multirow": round(e2e_rate / raw_multirow, 3),
        "speedup_vs_per_event_commit": round(e2e_rate / per_event, 1),
        "speedup_vs_per_event_commit_wal": round(e2e_rate / per_event_wal, 1),
        "lost": lost,
        "duplicates": duplicates,
    }


# -- lifecycle -------------------------------------------------------------------------------------


def sleeps(ctx: Any, task: str, config: dict[str, Any]) -> None:
    ctx.emit("sleeping", pid=os.getpid())
    ctx._emitter.flush()
    time.sleep(60)


def _start_ms(samples: int) -> tuple[list[float], list[float]]:
    """Forkserver start to the worker's first frame, and a fresh interpreter importing AG2."""
    import select
    import subprocess

    from isolane.backends.environment import worker_environment
    from isolane.backends.local.launcher import Launcher
    from isolane.schemas.spec import WorkerSpec

    launcher = Launcher()
    launcher.start()
    forked: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(samples + 1):
            spec = WorkerSpec(run_id=f"start{i}", workflow=emit_many, task="", config={"n": 1},
                              work_dir=f"{d}/w{i}", spool_path=f"{d}/s{i}.jsonl", env=worker_environment())
            t0 = time.perf_counter()
            worker = launcher.spawn(spec)
            select.select([worker.event_fd], [], [], 30)
            if i:  # the first one waits for the forkserver's own preload
                forked.append((time.perf_counter() - t0) * 1000)
            worker.process.join(10)
            os.close(worker.event_fd)
            worker.close()
    spawned = []
    for _ in range(max(3, samples // 3)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import autogen, openai"], check=True)
        spawned.append((time.perf_counter() - t0) * 1000)
    return forked, spawned


async def _crash_and_memory(tmp: Path, trials: int, events: int) -> tuple[list[float], float]:
    import psutil

    me = psutil.Process()
    async with Executor(home=tmp / "home") as ex:
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))
        noticed = []
        for _ in range(trials):
            run = await ex.submit(RunSpec(workflow=sleeps))
            async for event in run.events(types=["custom"]):
                pid = event.data["pid"]
                break
            t0 = time.perf_counter()
            os.kill(pid, 9)
            await run.wait()
            noticed.append((time.perf_counter() - t0) * 1000)
        start_rss = me.memory_info().rss
        peak = start_rss
        run = await ex.submit(RunSpec(workflow=emit_many, config={"n": events}))
        while not run.done:
            peak = max(peak, me.memory_info().rss)
            await anyio.sleep(0.05)
        await run.wait()
    return noticed, (peak - start_rss) / 2**20


async def _launch_ms(tmp: Path, samples: int) -> list[float]:
    """``submit()`` to the run's first event stored (and seen by a reader), through the Executor."""
    async with Executor(home=tmp / "home") as ex:
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))  # warm the forkserver
        figures = []
        for _ in range(samples):
            t0 = time.perf_counter()
            run = await ex.submit(RunSpec(workflow=emit_many, config={"n": 1}))
            async for _event in run.events():
                figures.append((time.perf_counter() - t0) * 1000)
                break
            await run.wait()
    return figures


@benchmark("lifecycle")
def lifecycle(args: argparse.Namespace) -> dict[str, Any]:
    """Worker start (preloaded forkserver vs AG2 import), submit to first stored event, crash
    noticed, parent memory at 1M events."""
    forked, spawned = _start_ms(15)
    with tempfile.TemporaryDirectory() as d:
        launches = anyio.run(_launch_ms, Path(d), 15)
    with tempfile.TemporaryDirectory() as d:
        noticed, grew_mb = anyio.run(_crash_and_memory, Path(d), 7, args.memory_events)
    return {
        "launch_ms_p50": round(statistics.median(launches), 1),
        "start_ms_p50": round(statistics.median(forked), 1),
        "spawn_import_ag2_ms_p50": round(statistics.median(spawned), 1),
        "start_speedup_vs_spawn": round(statistics.median(spawned) / statistics.median(forked), 1),
        "crash_noticed_ms_p50": round(statistics.median(noticed), 1),
        "crash_noticed_ms_samples": [round(x, 1) for x in noticed],
        "memory_events": args.memory_events,
        "parent_rss_growth_mb": round(grew_mb, 1),
    }


# -- crash -----------------------------------------------------------------------------------------


def burst_then_kill(ctx: Any, task: str, config: dict[str, Any]) -> None:
    emit = ctx.emit
    for i in range(int(config["n"])):
        emit("burst", i=i)
    if config["how"] == "sigkill":
        os.kill(os.getpid(), 9)
    os._exit(3)


def streams_with_receipts(ctx: Any, task: str, config: dict[str, Any]) -> None:
    """Emits until killed; writes each seq to a side file after its emit() returned."""
    fd = os.open(ctx.work_dir / "receipts.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    i = 0
    while True:
        os.write(fd, b"%d\n" % ctx.emit("streamed", i=i))
        i += 1


async def _crashes(tmp: Path, random_kills: int) -> dict[str, int]:
    import random

    rng = random.Random(5)
    kills = emitted = stored = 0
    async with Executor(home=tmp / "home") as ex:
        for n in (1, 10, 1_000, 100_000):
            for how in ("sigkill", "os._exit"):
                run = await ex.submit(RunSpec(workflow=burst_then_kill, config={"n": n, "how": how}))
                await run.wait()
                kills += 1
                emitted += n
                stored += ex.store.count_events(run.run_id, types=["custom"])
        for _ in range(random_kills):
            run = await ex.submit(RunSpec(workflow=streams_with_receipts))
            async for event in run.events():
                if event.type == "run_started":
                    pid = event.data["pid"]
                    break
            await anyio.sleep(rng.uniform(0.01, 0.3))
            os.kill(pid, 9)
            await run.wait()
            kills += 1
            receipts_log = Path(ex.store.get_run(run.run_id).work_dir) / "receipts.log"
            # Killed before its first emit() returned, a worker has no receipt file: nothing to check.
            receipts = ({int(s) for s in receipts_log.read_text().split()}
                        if receipts_log.exists() else set())
            seqs = {e.seq for e in ex.store.events(run.run_id, types=["custom"])}
            emitted += len(receipts)
            stored += len(receipts & seqs)
    return {"kills": kills, "emitted": emitted, "stored": stored}


@benchmark("crash")
def crash(args: argparse.Namespace) -> dict[str, Any]:
    """Workers killed the instant after emit() returned (bursts of 1 to 100k events, then
    SIGKILL or os._exit; and SIGKILLs from outside at random moments): events lost, and the
    emit() cost that buys it."""
    with tempfile.TemporaryDirectory() as d:
        figures = anyio.run(_crashes, Path(d), 10)
    with tempfile.TemporaryDirectory() as d:
        emit = anyio.run(_emit_cost, Path(d))
    return {**figures, "lost": figures["emitted"] - figures["stored"],
            "emit_ns_p50": round(emit["p50"], 1), "emit_ns_mean": round(emit["mean"], 1),
            "emit_baseline_append_ns_p50": round(emit["baseline_p50"], 1),
            "emit_journal": emit["journal"]}


# -- state -----------------------------------------------------------------------------------------


def crash_first_attempt(ctx: Any, task: str, config: dict[str, Any]) -> str:
    """``nodes`` steps of ``events // nodes`` events each, then SIGKILL on the first attempt."""
    nodes = int(config.get("nodes", 1))
    per_node = int(config.get("events", 0)) // nodes
    for n in range(nodes):
        def work(n: int = n) -> int:
            for i in range(per_node):
                ctx.emit("tick", node=n, i=i)
            return n
        ctx.step(f"step_{n}", work)
    if ctx.attempt == 1:
        os.kill(os.getpid(), 9)
    return "resumed"


def _snapshot_cost_us(history: int, repeats: int = 200) -> float:
    """Median cost of one ``ctx.snapshot()`` that saves one new message after ``history`` others."""
    from isolane.worker.context import RunContext

    spool = tempfile.NamedTemporaryFile(suffix=".jsonl")  # noqa: SIM115 - closed below
    emitter = Emitter("bench", spool=SpoolWriter(spool.name), pipe_fd=None, heartbeat_interval=3600)
    ctx = RunContext(run_id="bench", work_dir=Path("."), task="", config={}, emitter=emitter)
    message = {"role": "assistant", "name": "engineer", "content": "x" * 400}
    for _ in range(history):
        ctx.log("chat", message)
    ctx.state["turn"] = 0
    ctx.snapshot()
    costs = []
    for turn in range(repeats):
        ctx.log("chat", message)
        ctx.state["turn"] = turn
        t0 = time.perf_counter_ns()
        ctx.snapshot()
        costs.append(time.perf_counter_ns() - t0)
    emitter.close()
    spool.close()
    return statistics.median(costs) / 1000


async def _resume_ms(tmp: Path, trials: int, *, nodes: int = 1, events: int = 0) -> list[float]:
    """Resume of a crashed run to the new attempt's first stored event, in ms."""
    async with Executor(home=tmp / "home") as ex:
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))  # warm the forkserver
        figures = []
        for _ in range(trials):
            crashed = await ex.run(RunSpec(workflow=crash_first_attempt,
                                           config={"nodes": nodes, "events": events}))
            last = ex.store.seq_stats(crashed.run_id)[2] or 0
            t0 = time.perf_counter()
            handle = await ex.resume(crashed.run_id)
            async for event in handle.events(since=last):
                figures.append((time.perf_counter() - t0) * 1000)
                break
            outcome = await handle.wait()
            assert outcome.status == "completed", outcome
    return figures


@benchmark("state")
def state(args: argparse.Namespace) -> dict[str, Any]:
    """Session-state save cost by history length (flat = O(delta)); resume latency of a tiny run
    and of one with 10,000 events and 1,000 nodes."""
    by_history = {str(h): round(_snapshot_cost_us(h), 2) for h in (10, 100, 1_000, 10_000)}
    with tempfile.TemporaryDirectory() as d:
        tiny = anyio.run(_resume_ms, Path(d), 7)
    with tempfile.TemporaryDirectory() as d:
        big = anyio.run(functools.partial(_resume_ms, Path(d), 5, nodes=1_000, events=10_000))
    return {
        "save_us_by_history": by_history,
        "save_ratio_10000_vs_10": round(by_history["10000"] / by_history["10"], 2),
        "resume_ms": round(statistics.median(tiny), 1),
        "resume_ms_samples": [round(r, 1) for r in tiny],
        "resume_big_ms": round(statistics.median(big), 1),
        "resume_big_events": 10_000,
        "resume_big_nodes": 1_000,
        "resume_big_vs_tiny": round(statistics.median(big) / statistics.median(tiny), 2),
    }


# -- race ------------------------------------------------------------------------------------------


def race_work(ctx: Any, task: str, config: dict[str, Any]) -> float:
    ctx.step("prepare", lambda: "ready")
    return float(ctx.step("work", lambda: time.sleep(float(config.get("delay", 0.0))) or 1.0))


async def _race_figures(tmp: Path, races: int) -> tuple[list[float], list[float]]:
    loser_stop: list[float] = []
    branch_start: list[float] = []
    async with Executor(home=tmp / "home", max_workers=4) as ex:
        parent = await ex.run(RunSpec(workflow=race_work))
        for _ in range(races):
            t0 = time.perf_counter()
            child = await ex.branch(parent.run_id, "work")
            inherited = ex.store.get_run(child.run_id).meta["inherited_through"]
            async for _event in child.events(since=inherited):
                branch_start.append((time.perf_counter() - t0) * 1000)
                break
            await child.wait()
        for _ in range(races):
            race = await ex.race(parent.run_id, "work", [{"delay": 0.05}, {"delay": 30}, {"delay": 30}])
            assert race.decided_at is not None and race.losers_gone_at is not None, race
            loser_stop.append((race.losers_gone_at - race.decided_at) * 1000)
    return loser_stop, branch_start


@benchmark("race")
def race(args: argparse.Namespace) -> dict[str, Any]:
    """Racing losers gone after the winner finishes; branch request to its first event."""
    with tempfile.TemporaryDirectory() as d:
        loser_stop, branch_start = anyio.run(_race_figures, Path(d), 7)
    return {
        "loser_stop_ms_p50": round(statistics.median(loser_stop), 1),
        "loser_stop_ms_samples": [round(x, 1) for x in loser_stop],
        "branch_start_ms_p50": round(statistics.median(branch_start), 1),
        "branch_start_ms_samples": [round(x, 1) for x in branch_start],
    }


@benchmark("serve")
def serve(args: argparse.Namespace) -> dict[str, Any]:
    """WebSocket events/s to one client and fan-out latency, beside the store's own event rate."""
    from scripts.bench_serve import run_serve_benchmark

    return run_serve_benchmark(events=min(args.events, 100_000))


@benchmark("ag2")
def ag2(args: argparse.Namespace) -> dict[str, Any]:
    """The same offline AG2 group chat with and without capture: seconds per run and their ratio."""
    from scripts.bench_ag2 import run_ag2_benchmark

    return run_ag2_benchmark()


# -- cli -------------------------------------------------------------------------------------------


def _wall_ms(argv: list[str], *, runs: int, cwd: Path, env: dict[str, str]) -> list[float]:
    """Wall time of ``argv`` as a whole process, ``runs`` times after one warm-up (plain timing)."""
    samples: list[float] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if i:
            samples.append(elapsed)
    return samples


@benchmark("cli")
def cli(args: argparse.Namespace) -> dict[str, Any]:
    """``isolane --help`` and ``isolane runs`` wall time, beside ``python -c pass`` and
    ``python -c "import typer, rich"`` measured in the same run (target: <= 300 ms each)."""
    runs = 9
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as d:
        home = Path(d) / "home"
        with Store.open(None, home=home) as store:  # a migrated store holding a few runs
            for i in range(20):
                store.create_run(run_id=f"{i:032x}", workflow="bench", task="t", status="completed",
                                 work_dir=str(home / "runs" / f"{i:032x}" / "work"))
        py = [sys.executable]
        cmds = {
            "python_pass": [*py, "-c", "pass"],
            "import_typer_rich": [*py, "-c", "import typer, rich"],
            "help": [*py, "-m", "isolane.cli", "--help"],
            "runs": [*py, "-m", "isolane.cli", "runs", "--home", str(home)],
        }
        figures = {name: _wall_ms(argv, runs=runs, cwd=Path(d), env=env) for name, argv in cmds.items()}
    p50 = {name: round(statistics.median(samples), 1) for name, samples in figures.items()}
    return {
        "help_ms_p50": p50["help"], "runs_ms_p50": p50["runs"],
        "python_pass_ms_p50": p50["python_pass"], "import_typer_rich_ms_p50": p50["import_typer_rich"],
        "help_over_typer_rich": round(p50["help"] / p50["import_typer_rich"], 2),
        "runs_over_typer_rich": round(p50["runs"] / p50["import_typer_rich"], 2),
        "target_ms": 300, "runs": runs,
    }


# -- ray -------------------------------------------------------------------------------------------


def idle(ctx: Any, task: str, config: dict[str, Any]) -> str:
    return "idle"


async def _launch_and_stream(tmp: Path, backend: str, options: dict[str, Any] | None, n: int,
                             launches: int, gap: float = 0.0) -> dict[str, Any]:
    """Submit → first stored event (warm backend), then ``n`` events end to end, on one backend.

    ``gap``: seconds between launches (lets a pool of warm relays refill, as between real runs).
    """
    home = tmp / f"{backend}-{len(list(tmp.iterdir()))}"
    async with Executor(home=home, backend=backend, backend_options=options) as ex:
        await ex.run(RunSpec(workflow=idle))  # warm: cluster up, first actor/forkserver paid
        launch_ms: list[float] = []
        for _ in range(launches):
            await anyio.sleep(gap)
            t0 = time.perf_counter()
            run = await ex.submit(RunSpec(workflow=idle))
            async for _event in run.events():
                launch_ms.append((time.perf_counter() - t0) * 1000)
                break
            await run.wait()
        run = await ex.submit(RunSpec(workflow=emit_many, config={"n": n, "capture_ag2": False}))
        # Started → completed, as in ``throughput``: the rate of the stream, not of the launch.
        async for event in run.events():
            if event.type == "run_started":
                t0 = time.perf_counter()
                break
        outcome = await run.wait()
        elapsed = time.perf_counter() - t0
        custom = ex.store.count_events(run.run_id, types=["custom"])
        count, low, high = ex.store.seq_stats(run.run_id)
    return {"launch_ms_p50": round(statistics.median(launch_ms), 1),
            "launch_ms_samples": [round(x, 1) for x in launch_ms],
            "e2e_status": outcome.status, "e2e_events_per_s": round(custom / elapsed),
            "lost": n - custom, "duplicates": count - (high - low + 1)}


@benchmark("ray")
def ray_backend(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray backend beside the local one, same run: launch latency and streamed events/s.

    ``launch_ms_p50`` is submit → first stored event on a warm cluster with the default AG2
    preload (each relay actor starts its own forkserver); ``*_light`` preloads only the worker
    module; ``*_pooled`` takes a warm relay from a pool of one (``pool_size=1``), launches 5 s
    apart so the pool has refilled, as it would between real runs.
    """
    import ray

    n = min(args.events, 200_000)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            local = anyio.run(_launch_and_stream, tmp, "local", None, n, 5)
            remote = anyio.run(_launch_and_stream, tmp, "ray", None, n, 5)
            light = anyio.run(_launch_and_stream, tmp, "ray",
                              {"preload": ["isolane.worker.entry"]}, 1, 5)
            pooled = anyio.run(_launch_and_stream, tmp, "ray", {"pool_size": 1}, 1, 5, 5.0)
    finally:
        ray.shutdown()
    return {
        "events": n,
        "launch_ms_p50": remote["launch_ms_p50"],
        "launch_ms_samples": remote["launch_ms_samples"],
        "launch_ms_p50_light": light["launch_ms_p50"],
        "launch_ms_p50_pooled": pooled["launch_ms_p50"],
        "launch_ms_samples_pooled": pooled["launch_ms_samples"],
        "e2e_events_per_s": remote["e2e_events_per_s"],
        "e2e_status": remote["e2e_status"],
        "lost": remote["lost"],
        "duplicates": remote["duplicates"],
        "local_launch_ms_p50": local["launch_ms_p50"],
        "local_e2e_events_per_s": local["e2e_events_per_s"],
        "ratio_e2e_vs_local": round(remote["e2e_events_per_s"] / local["e2e_events_per_s"], 3),
        "ratio_launch_pooled_vs_local": round(pooled["launch_ms_p50"] / local["launch_ms_p50"], 2),
    }


# -- feed ------------------------------------------------------------------------------------------


async def _feed_rate(tmp: Path, n: int, runs: int, readers: tuple[float, ...]) -> dict[str, float]:
    """Events per second of ``runs`` concurrent runs of ``n`` events each into the store, with a
    feed reader per entry of ``readers`` sleeping that long on every event (0: never sleeps)."""
    read = [0] * len(readers)

    async def reader(index: int, pause: float) -> None:
        async with ex.events() as feed:
            async for _ in feed:
                read[index] += 1
                if pause:
                    await anyio.sleep(pause)

    async with Executor(home=tmp / uuid.uuid4().hex, max_workers=runs) as ex:
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))  # warm the forkserver
        async with anyio.create_task_group() as tg:
            for index, pause in enumerate(readers):
                tg.start_soon(reader, index, pause)
            t0 = time.perf_counter()
            handles = [await ex.submit(RunSpec(workflow=emit_many, config={"n": n}))
                       for _ in range(runs)]
            for handle in handles:
                await handle.wait()
            elapsed = time.perf_counter() - t0
            stored = sum(ex.store.count_events(h.run_id) for h in handles)
            tg.cancel_scope.cancel()
    return {"rate": stored / elapsed, "read_min": min(read, default=stored), "stored": stored}


@benchmark("feed")
def feed(args: argparse.Namespace) -> dict[str, Any]:
    """The writer's rate with executor-wide feed readers (one sleeping 5 ms per event, which
    falls far behind and catches up from the store; one that keeps up) against none."""
    runs, n, trials = 4, max(args.events // 8, 1000), 3
    cases: dict[str, tuple[float, ...]] = {"none": (), "slow": (0.005,), "slow_fast": (0.005, 0.0)}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    behind = 0.0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(trials):  # interleaved, so drift on the shared machine hits every case
            for name, readers in cases.items():
                figures = anyio.run(_feed_rate, Path(d), n, runs, readers)
                rates[name].append(figures["rate"])
                if name == "slow":
                    behind = max(behind, 1 - figures["read_min"] / figures["stored"])
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "runs": runs,
        "events_per_run": n,
        "trials": trials,
        "none_events_per_s": round(median["none"]),
        "slow_reader_events_per_s": round(median["slow"]),
        "slow_and_fast_readers_events_per_s": round(median["slow_fast"]),
        "ratio_slow_vs_none": round(median["slow"] / median["none"], 3),
        "ratio_slow_and_fast_vs_none": round(median["slow_fast"] / median["none"], 3),
        "slow_reader_unread_at_end": round(behind, 3),
    }
# -- otel: throughput with the live OpenTelemetry exporter on vs off -------------------------------
# The exporter is started as users start it, Executor(telemetry=URL): it follows the executor-wide
# feed of committed events (isolane.telemetry.start_live_export).


class _Collector:
    """A stand-in OTLP/HTTP collector on 127.0.0.1 that answers every POST with 200 (the
    figure is about the parent's cost, not a backend's)."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _e2e_otel(tmp: Path, n: int, endpoint: str | None) -> float:
    """Events/s of one worker to SQLite, with the live exporter on (``endpoint``) or off."""
    async with Executor(home=tmp, telemetry=endpoint or False) as ex:
        await ex.run(RunSpec(workflow=emit_many, config={"n": 1}))
        run = await ex.submit(RunSpec(workflow=emit_many, config={"n": n}))
        t0 = time.perf_counter()
        await run.wait()
        elapsed = time.perf_counter() - t0
        return ex.store.count_events(run.run_id, types=["custom"]) / elapsed


@benchmark("otel")
def otel(args: argparse.Namespace) -> dict[str, Any]:
    """1 worker → SQLite rate with the live OpenTelemetry exporter on, beside off (target ≤ 5 % slower)."""
    collector = _Collector()
    off: list[float] = []
    on: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            for i in range(3):  # interleaved, so drift on this shared machine hits both alike
                off.append(anyio.run(_e2e_otel, Path(d) / f"off{i}", args.events, None))
                on.append(anyio.run(_e2e_otel, Path(d) / f"on{i}", args.events, collector.url))
    finally:
        collector.close()
    return {"events": args.events, "events_per_s_off": round(statistics.median(off)),
            "events_per_s_on": round(statistics.median(on)),
            "ratio_on_vs_off": round(statistics.median(on) / statistics.median(off), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--events", type=int, default=200_000, help="events for throughput runs")
    parser.add_argument("--memory-events", type=int, default=1_000_000,
                        help="events streamed while the parent's memory is watched (lifecycle)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = BENCHMARKS[args.name](args)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        width = max(map(len, figures))
        for key, value in figures.items():
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
