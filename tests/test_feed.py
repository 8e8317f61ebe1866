"""The executor-wide feed: every committed event once, in seq order per run, never stalling the
writer (real worker processes, a real SQLite file)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from isolane import Event, Executor, Feed, FeedCursor, Outcome, RunHandle, RunSpec, SyncExecutor
from isolane.errors import ConfigError
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.anyio

RUNS = 20
PER_RUN = 40


def _by_run(events: Sequence[Event]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in events:
        seqs[event.run_id].append(event.seq)
    return dict(seqs)


def _stored(ex: Executor, run_ids: Sequence[str]) -> dict[str, list[int]]:
    return {run_id: [e.seq for e in ex.store.events(run_id)] for run_id in run_ids}


async def test_slow_and_fast_readers_each_see_every_event_once_in_order(home: Path, db_url: str) -> None:
    """20 concurrent runs: a reader sleeping 5 ms per event and one that does not both get every
    committed event exactly once, in seq order per run; the runs end while the slow one is behind."""
    slow: list[Event] = []
    fast: list[Event] = []
    called: list[Event] = []
    async with Executor(home=home, db_url=db_url, max_workers=4) as ex:
        slow_feed = ex.events(buffer=16)
        fast_feed = ex.events()
        subscription = ex.on_event(called.append)

        async def read(feed: Feed, into: list[Event], pause: float) -> None:
            async with feed:
                async for event in feed:
                    into.append(event)
                    if pause:
                        await anyio.sleep(pause)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, slow_feed, slow, 0.005)
            tg.start_soon(read, fast_feed, fast, 0.0)
            handles = [await ex.submit(RunSpec(workflow="tests.flows:emit_many", task=str(i),
                                               config={"n": PER_RUN})) for i in range(RUNS)]
            await ex.join()
            stored = _stored(ex, [h.run_id for h in handles])
            total = sum(map(len, stored.values()))
            # The writer finished every run while the slow reader was far behind: it never waited.
            assert len(slow) < total / 2, (len(slow), total)
            assert slow_feed.behind
            with anyio.fail_after(60):
                while len(slow) < total or len(fast) < total:
                    await anyio.sleep(0.05)
                # Bounded: once every run ended and was read, no reader keeps state for it.
                while slow_feed.cursor().positions or fast_feed.cursor().positions:
                    await anyio.sleep(0.05)
            assert not slow_feed.behind
            tg.cancel_scope.cancel()
        assert all(h.status == "completed" for h in await _outcomes(handles))
    assert all(len(seqs) > PER_RUN for seqs in stored.values())
    for reader in (slow, fast, called):
        assert len(reader) == total
        assert _by_run(reader) == stored
    assert subscription.delivered == total and subscription.errors == 0


async def _outcomes(handles: Sequence[RunHandle]) -> list[Outcome]:
    return [await handle.wait() for handle in handles]


async def test_types_filter_cursor_resume_and_failing_callback(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A feed of some types yields only those; a cursor taken mid-way resumes from the store with
    nothing lost or repeated; a callback that raises is logged and keeps getting events."""
    failures: list[int] = []

    def flaky(event: Event) -> None:
        if event.seq % 3 == 0:
            failures.append(event.seq)
            raise RuntimeError("a bug in the callback")

    async with Executor(home=home, max_workers=2) as ex:
        ticks = ex.events(types=["custom"])
        subscription = ex.on_event(flaky)
        handles = [await ex.submit(RunSpec(workflow="tests.flows:emit_many", task=str(i),
                                           config={"n": 25})) for i in range(3)]
        await ex.join()
        stored = {h.run_id: [e.seq for e in ex.store.events(h.run_id, types=["custom"])]
                  for h in handles}
        total = sum(map(len, stored.values()))
        first: list[Event] = []
        async for event in ticks:
            first.append(event)
            if len(first) == total // 2:
                break
        cursor = ticks.cursor()
        await ticks.aclose()
        assert isinstance(cursor, FeedCursor) and cursor.positions
        rest: list[Event] = []
        async with ex.events(types=["custom"], since=cursor) as resumed:
            with anyio.fail_after(30):
                async for event in resumed:
                    rest.append(event)
                    if len(first) + len(rest) == total:
                        break
        with anyio.fail_after(30):
            while subscription.delivered < sum(ex.store.count_events(h.run_id) for h in handles):
                await anyio.sleep(0.02)
        subscription.close()
        await subscription.wait_closed()
        with pytest.raises(ConfigError, match="FeedCursor"):
            ex.events(since=3)  # type: ignore[call-overload]
    assert {e.type for e in first + rest} == {"custom"}
    assert _by_run(first + rest) == stored
    assert subscription.errors == len(failures) > 0
    assert "an on_event callback failed" in caplog.text


def test_sync_executor_callbacks(home: Path) -> None:
    """SyncExecutor.on_event calls a blocking callback (in a thread) with every event."""
    seen: list[Event] = []
    with SyncExecutor(home=home) as ex:
        subscription = ex.on_event(seen.append)
        outcome = ex.run(RunSpec(workflow="tests.flows:emit_many", task="x", config={"n": 5}))
        assert outcome.status == "completed"
        expected = [e.seq for e in ex.executor.store.events(outcome.run_id)]
    assert not subscription.subscription.errors  # the executor's end drained the feed
    assert [e.seq for e in seen] == expected


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="isolane.executor.feed")


async def test_a_lagging_callback_waits_out_a_store_outage(
        pg_cluster: PgCluster, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A private PostgreSQL stopped while a callback is behind: its catch-up reads are retried
    until the server is back, the executor keeps running, and the callback still gets every
    event once, in order."""
    caplog.set_level(logging.WARNING, logger="isolane.executor.feed")
    n = 400
    seen: list[Event] = []
    release = anyio.Event()

    async def held(event: Event) -> None:
        seen.append(event)
        await release.wait()  # held on its first event: everything after it is missed

    async with Executor(home=home, db_url=pg_cluster.url) as ex:
        subscription = ex.on_event(held, buffer=8)
        run = await ex.submit(RunSpec(workflow="tests.flows:gated", config={"n": n}))
        async for event in run.events():
            if event.type == "custom" and event.data["i"] == n - 1:
                break  # the first half is stored; the run waits for its gate
        with anyio.fail_after(30):
            while not seen:
                await anyio.sleep(0.02)
        (Path(ex.store.get_run(run.run_id).work_dir) / "go").touch()
        # The second half commits while the callback is held: only the store has it now.
        with anyio.fail_after(60):
            outcome = await run.wait()
        stored = [e.seq for e in ex.store.events(run.run_id)]
        assert subscription.feed.behind and len(seen) == 1
        await anyio.to_thread.run_sync(pg_cluster.stop)
        try:
            release.set()
            with anyio.fail_after(30):
                while "feed: reading run" not in caplog.text:
                    await anyio.sleep(0.05)
        finally:
            await anyio.to_thread.run_sync(pg_cluster.start)
        with anyio.fail_after(60):
            while subscription.delivered < len(stored):
                await anyio.sleep(0.05)
    assert outcome.status == "completed", outcome
    assert [e.seq for e in seen] == stored
    assert subscription.errors == 0


async def test_a_reader_that_keeps_up_takes_a_write_larger_than_its_buffer_whole(home: Path) -> None:
    """The bound is checked between writes: a write of two runs, more events than the buffer,
    is queued whole (the reader could not have taken part of it first); a reader still over its
    buffer when the next write comes is switched to the store. Events arrive decoded in chunks,
    the cursor exact mid-batch."""
    from isolane.executor.hub import DECODE_CHUNK, Hub
    from isolane.tracking.store import Store

    def rows(run_id: str, seqs: range) -> list[tuple[str, int, float, str, None, str]]:
        return [(run_id, seq, 1.0, "custom", None, f'{{"name":"tick","i":{seq}}}') for seq in seqs]

    big = range(1, DECODE_CHUNK * 2 + 3)
    with Store.open(home=home) as store:
        hub = Hub()
        feed = Feed(store, hub, buffer=3)
        hub.publish_write([("a", rows("a", big)), ("b", rows("b", range(1, 3)))])
        assert not feed.behind
        got = [await anext(feed) for _ in range(len(big) + 1)]
        assert [(e.run_id, e.seq, e.data["i"]) for e in got] == \
            [("a", seq, seq) for seq in big] + [("b", 1, 1)]
        assert feed.cursor().positions == {"a": big[-1], "b": 1}
        hub.publish_write([("b", rows("b", range(3, 7)))])  # 1 + 4 queued: over, but one write
        assert not feed.behind
        hub.publish_write([("a", rows("a", range(big[-1] + 1, big[-1] + 2)))])
        assert feed.behind  # 5 > 3 still queued when the writer committed again
        await feed.aclose()
