"""Readers that raise, are cancelled, or meet a failing store read never hang the executor's
exit, never lose the error, never leave a worker behind and never lose a stored event (real
workers, a real SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import sqlalchemy as sa

from isolane import Event, Executor, RunHandle, RunSpec
from isolane.executor.spool import import_spool
from isolane.tracking.store import Store
from tests.helpers import ProcessWatch, alive

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


class Boom(Exception):
    """The reader's own error."""


def _busy() -> RunSpec:
    """A run that emits events for a minute, unless it is stopped."""
    return RunSpec(workflow="tests.flows:paced", config={"n": 20_000, "seconds": 60})


@pytest.fixture(autouse=True)
def _watch(process_watch: ProcessWatch) -> None:
    global _WATCH
    _WATCH = process_watch


_WATCH: ProcessWatch | None = None


def _assert_settled(home: Path, db_url: str | None, runs: Sequence[RunHandle], seen: Sequence[Event],
                    status: str) -> None:
    """Every run ended ``status`` with its worker gone; every event a reader was given, and every
    one the worker spooled, is in the store (importing the spools adds nothing)."""
    assert _WATCH is not None and not _WATCH.left_behind()
    with Store.open(db_url, home=home) as store:
        for run in runs:
            row = store.get_run(run.run_id)
            assert row.status == status, row
            assert row.worker_pid is not None and not alive(row.worker_pid)
            stored = [e.seq for e in store.events(run.run_id)]
            assert stored == list(range(1, len(stored) + 1))
            assert {e.seq for e in seen if e.run_id == run.run_id} <= set(stored)
            spooled = import_spool(store, run.run_id, Path(row.work_dir).parent / "events.jsonl")
            assert spooled.events == len(stored) and spooled.inserted == 0


async def test_a_feed_reader_that_raises_ends_the_executor_with_its_own_error(
        home: Path, db_url: str) -> None:
    """User code raising while iterating the feed, runs still busy: the error leaves
    ``async with Executor`` as raised (no ExceptionGroup), the runs end cancelled, stored."""
    seen: list[Event] = []
    with pytest.raises(Boom, match="the reader's bug") as raised:
        async with Executor(home=home, db_url=db_url) as ex:
            runs = [await ex.submit(_busy()) for _ in range(2)]
            async with ex.events() as feed:
                async for event in feed:
                    seen.append(event)
                    if len(seen) == 300:
                        raise Boom("the reader's bug")
    assert type(raised.value) is Boom
    _assert_settled(home, db_url, runs, seen, "cancelled")


async def test_a_run_events_reader_that_raises_ends_the_executor_with_its_own_error(home: Path) -> None:
    """The same for a reader of one run's events (``RunHandle.events``: a hub subscription)."""
    seen: list[Event] = []
    with pytest.raises(Boom):
        async with Executor(home=home) as ex:
            runs = [await ex.submit(_busy()) for _ in range(2)]
            async for event in runs[0].events():
                seen.append(event)
                if len(seen) == 300:
                    raise Boom("the reader's bug")
    _assert_settled(home, None, runs, seen, "cancelled")


async def _read_until_cancelled(events: AsyncIterator[Event], seen: list[Event]) -> None:
    async for event in events:
        seen.append(event)


@pytest.mark.parametrize("reader", ["feed", "run_events"])
async def test_a_cancel_around_the_executor_stops_the_runs_and_stores_their_events(
        home: Path, reader: str) -> None:
    """A cancel scope around ``async with Executor`` expiring while a reader iterates: the runs
    are cancelled and settled, the exit returns (it used to hang: the cancel reached the writer
    before the runs' final updates, which then waited for it forever)."""
    seen: list[Event] = []
    with anyio.move_on_after(2) as scope:
        async with Executor(home=home) as ex:
            runs = [await ex.submit(_busy()) for _ in range(2)]
            events = ex.events() if reader == "feed" else runs[0].events()
            await _read_until_cancelled(events, seen)
    assert scope.cancelled_caught and seen
    _assert_settled(home, None, runs, seen, "cancelled")


async def test_a_reader_task_that_fails_outside_the_executor(home: Path) -> None:
    """A reader in the caller's task group, which wraps the executor, raises: the group cancels
    the executor's block; the error comes out of the caller's group, alone; nothing is left."""
    seen: list[Event] = []

    async def read(ex: Executor) -> None:
        async with ex.events() as feed:
            async for event in feed:
                seen.append(event)
                if len(seen) == 300:
                    raise Boom("the reader's bug")

    with pytest.raises(BaseExceptionGroup) as raised:
        async with anyio.create_task_group() as tg, Executor(home=home) as ex:
            runs = [await ex.submit(_busy()) for _ in range(2)]
            tg.start_soon(read, ex)
            await ex.join()
    assert [type(e) for e in raised.value.exceptions] == [Boom]
    _assert_settled(home, None, runs, seen, "cancelled")


@pytest.mark.parametrize("reader", ["feed", "run_events"])
async def test_a_reader_cancelled_alone_leaves_the_runs_and_other_readers_be(home: Path, reader: str) -> None:
    """A reader cancelled by its own scope mid-iteration: the runs finish, another reader still
    gets every event, and the executor exits normally."""
    cancelled: list[Event] = []
    spec = RunSpec(workflow="tests.flows:paced", config={"n": 3000, "seconds": 1})
    async with Executor(home=home) as ex:
        full = ex.events()
        runs = [await ex.submit(spec) for _ in range(2)]
        with anyio.CancelScope() as scope:
            events = ex.events() if reader == "feed" else runs[0].events()
            async for event in events:
                cancelled.append(event)
                if len(cancelled) == 200:
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()  # the cancel lands here, mid-iteration
        assert scope.cancelled_caught and len(cancelled) == 200
        await ex.join()
        total = sum(ex.store.count_events(run.run_id) for run in runs)
        seen = []
        with anyio.fail_after(30):
            async for event in full:
                seen.append(event)
                if len(seen) == total:
                    break
        await full.aclose()
    _assert_settled(home, None, runs, seen, "completed")


@pytest.mark.postgres
async def test_a_catch_up_read_whose_connection_is_terminated(
        home: Path, pg_schema_url: str, pg_admin: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A lagging feed catching up from PostgreSQL while the server terminates the executor's
    connections (``pg_terminate_backend``): failed reads are read again, the reader gets every
    event once, in order; the runs and the exit are unaffected."""
    caplog.set_level(logging.WARNING, logger="isolane.executor.feed")
    app = f"isolane-feedstop-{uuid.uuid4().hex[:8]}"
    url = f"{pg_schema_url}&application_name={app}"

    def terminate() -> None:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = %s AND state = 'active'", (app,))

    seen: list[Event] = []
    async with Executor(home=home, db_url=url) as ex:
        feed = ex.events(buffer=8)
        runs = [await ex.submit(RunSpec(workflow="tests.flows:emit_many", task=str(i),
                                        config={"n": 20_000})) for i in range(2)]
        await ex.join()  # everything committed while nobody read: the reader catches up
        assert feed.behind
        total = sum(ex.store.count_events(run.run_id) for run in runs)

        async def read() -> None:
            async for event in feed:
                seen.append(event)
                if len(seen) == total:
                    return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                while len(seen) < total and "feed: reading run" not in caplog.text:
                    await anyio.to_thread.run_sync(terminate)
                    await anyio.sleep(0.005)
        await feed.aclose()
        stored = {run.run_id: [e.seq for e in ex.store.events(run.run_id)] for run in runs}
    assert "feed: reading run" in caplog.text  # a read really failed, and was read again
    assert {run_id: [e.seq for e in seen if e.run_id == run_id] for run_id in stored} == stored
    _assert_settled(home, url, runs, seen, "completed")
