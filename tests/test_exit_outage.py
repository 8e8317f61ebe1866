"""A closing executor waits at most ``shutdown_grace`` for a database that is down, and loses
nothing by it.

A private PostgreSQL server (:mod:`tests.pgcluster`) is stopped while real workers emit events;
``async with Executor`` then exits, normally or by a cancel from outside. The exit must return
(pytest-timeout fails a hang), leave no worker process, and warn once about what it did not
write; with the server back, a new executor's recovery stores every event the workers spooled
(seq 1..N, no gap, importing the spools again adds nothing) and settles each run. With the store
up, the exit stores everything before it returns, whatever the grace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest

from isolane import Executor, RunHandle, RunSpec
from isolane.errors import ConfigError
from isolane.executor.spool import import_spool
from isolane.schemas.spool import spool_path
from isolane.tracking.store import Store
from tests.helpers import ProcessWatch, alive
from tests.pgcluster import PgCluster

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

#: Small, so that a test waits for it only briefly; a hang is caught by pytest-timeout.
GRACE = 2.0


@pytest.fixture
def down_later(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    """The private server, running again at teardown whatever the test did (it is destroyed then)."""
    yield pg_cluster
    if not pg_cluster.running:
        pg_cluster.start()


async def _until_stored(run: RunHandle, i: int) -> None:
    """Return once the run's custom event number ``i`` is stored (a stored-then-live reader)."""
    async for event in run.events():
        if event.type == "custom" and event.data["i"] == i:
            return


@pytest.fixture(autouse=True)
def _watch(process_watch: ProcessWatch) -> None:
    global _WATCH
    _WATCH = process_watch


_WATCH: ProcessWatch | None = None


def _no_worker_left() -> None:
    assert _WATCH is not None
    leftover = _WATCH.left_behind()
    assert not leftover, leftover


def _gave_up_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "isolane.executor.writer" and "were not written" in r.getMessage()]


async def _recover_and_check(home: Path, url: str, runs: Sequence[RunHandle],
                             status: str) -> dict[str, int]:
    """Open a new executor with recovery on the store that is back; every run must end
    ``status`` with its whole spool stored, seq 1..N, ending in its terminal event. Returns
    the number of custom events stored, by run."""
    async with Executor(home=home, db_url=url, recover=True) as ex:
        await ex.join()
        recovered = {report.run_id: report for report in ex.recovered}
    stored: dict[str, int] = {}
    with Store.open(url, home=home) as store:
        for run in runs:
            row = store.get_run(run.run_id)
            assert run.run_id in recovered, ex.recovered
            assert row.status == status, (row.status, row.error, recovered[run.run_id])
            seqs = [e.seq for e in store.events(run.run_id)]
            assert seqs == list(range(1, len(seqs) + 1)), "a gap or a repeat in the log"
            again = import_spool(store, run.run_id, spool_path(row.work_dir))
            assert again.events == len(seqs) and again.inserted == 0, again
            assert row.worker_pid is not None and not alive(row.worker_pid)
            assert store.events(run.run_id, after_seq=len(seqs) - 1)[0].type == f"run_{status}"
            stored[run.run_id] = store.count_events(run.run_id, types=["custom"])
    return stored


@pytest.mark.postgres
async def test_an_exit_while_the_database_is_down_ends_after_the_grace_and_loses_nothing(
        down_later: PgCluster, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store stops, the run completes into its spool alone, the block ends normally: the
    exit returns once the grace is over, with one warning, no worker left and the run's outcome
    known; recovery then stores all its events and settles it completed from its spool."""
    caplog.set_level(logging.WARNING, logger="isolane.executor.writer")
    cluster, n = down_later, 500
    async with Executor(home=home, db_url=cluster.url, shutdown_grace=GRACE) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:gated", config={"n": n}))
        await _until_stored(run, n - 1)  # the first half is stored; the run waits for its gate
        row = ex.store.get_run(run.run_id)
        assert row.worker_pid is not None
        await anyio.to_thread.run_sync(cluster.stop)
        (Path(row.work_dir) / "go").touch()  # the second half and the end, with no store
        with anyio.fail_after(60):  # it ends by itself: it needs no store
            while alive(row.worker_pid):
                await anyio.sleep(0.05)
    assert (await run.wait()).status == "completed"
    _no_worker_left()
    [warning] = _gave_up_warnings(caplog)
    assert "safe in the runs' spools" in warning and "isolane recover" in warning
    await anyio.to_thread.run_sync(cluster.start)
    stored = await _recover_and_check(home, cluster.url, [run], "completed")
    assert stored[run.run_id] == 2 * n  # the half stored before the outage and the other


@pytest.mark.postgres
async def test_a_cancel_from_outside_while_the_database_is_down_ends_after_the_grace(
        down_later: PgCluster, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same when a ``move_on_after`` around the executor fires during the outage while two
    runs are busy: they are stopped, the exit returns with one warning and no worker left;
    recovery stores every event they spooled and settles them cancelled from their spools."""
    caplog.set_level(logging.WARNING, logger="isolane.executor.writer")
    cluster = down_later
    with anyio.move_on_after(120) as outside:
        async with Executor(home=home, db_url=cluster.url, shutdown_grace=GRACE) as ex:
            runs = [await ex.submit(RunSpec(workflow="tests.flows:paced",
                                            config={"n": 20_000, "seconds": 60}))
                    for _ in range(2)]
            for run in runs:
                await _until_stored(run, 99)
            await anyio.to_thread.run_sync(cluster.stop)
            outside.deadline = anyio.current_time() + 0.5  # the cancel comes during the outage
            await anyio.sleep_forever()
    assert outside.cancelled_caught
    assert [(await run.wait()).status for run in runs] == ["cancelled", "cancelled"]
    _no_worker_left()
    assert len(_gave_up_warnings(caplog)) == 1
    await anyio.to_thread.run_sync(cluster.start)
    stored = await _recover_and_check(home, cluster.url, runs, "cancelled")
    assert all(count > 100 for count in stored.values()), stored


async def test_with_the_store_up_the_exit_stores_everything_whatever_the_grace(
        home: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """``shutdown_grace=0`` bounds only a wait for an unreachable store: with the store up the
    exit still waits for every queued write (the run's whole spool is stored, nothing dropped)."""
    caplog.set_level(logging.WARNING, logger="isolane.executor.writer")
    async with Executor(home=home, db_url=db_url, shutdown_grace=0) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:paced", config={"n": 5000, "seconds": 1}))
    assert not _gave_up_warnings(caplog)
    with Store.open(db_url, home=home) as store:
        row = store.get_run(run.run_id)
        assert row.status == "completed"
        assert store.count_events(run.run_id, types=["custom"]) == 5000
        count, low, high = store.seq_stats(run.run_id)
        assert (low, count) == (1, high)
        again = import_spool(store, run.run_id, spool_path(row.work_dir))
        assert again.inserted == 0 and again.events == count


def test_a_negative_shutdown_grace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad grace fails at once, from the argument or from ``ISOLANE_SHUTDOWN_GRACE``."""
    with pytest.raises(ConfigError, match="shutdown_grace cannot be negative"):
        Executor(shutdown_grace=-1)
    monkeypatch.setenv("ISOLANE_SHUTDOWN_GRACE", "soon")
    with pytest.raises(ConfigError, match="ISOLANE_SHUTDOWN_GRACE='soon' is not a number"):
        Executor()
    monkeypatch.setenv("ISOLANE_SHUTDOWN_GRACE", "7.5")
    assert Executor().shutdown_grace == 7.5
