"""One feed of every run's committed events, for a service that forwards them all (a message bus,
a tracer, metrics), bounded so that no reader can stall the writer.

::

    StoreWriter ──commit──▶ Hub.publish_write ──▶ FeedQueue.push (one call per reader per write;
                                                  │        bounded, checked between writes)
                                                  │ overflow: every queued batch becomes a
                                                  │ "missed" run position, the queue empties;
                                                  │ later batches of a missed run are dropped
                                                  ▼
                      Feed (async iterator of Event) ◀── queued batches, in publish order
                                                     ◀── a missed run, re-read from the Store by
                                                         seq (pages), then live again
    Executor.on_event(callback) = a Feed read by a task of the executor's task group, calling the
    callback for each event (its errors logged, never raised into the writer)

The guarantee is that of :func:`~isolane.executor.hub.replay_then_live`, per run: every committed
event once, in ``seq`` order per run (runs interleave as they commit). A reader that falls behind
costs the writer one dict entry per run it missed, never a wait: it catches up from the store.
Memory per reader is bounded by ``buffer`` events plus one write (whose rows the writer holds
anyway, shared by every reader) plus a few integers per live run (a run's entry is dropped once
it ended and its last batch was read). A feed ends when the executor closes, after
yielding everything committed before.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import anyio
import anyio.to_thread
from sqlalchemy.exc import DBAPIError

from isolane.errors import ConfigError, StoreUnavailable
from isolane.executor.hub import READ_PAGE, Batch, Hub
from isolane.schemas.envelope import Event, event_from_row

if TYPE_CHECKING:
    from isolane.tracking.store import Store

__all__ = ["DEFAULT_FEED_BUFFER", "EventCallback", "EventSubscription", "Feed", "FeedCursor"]

log = logging.getLogger(__name__)

#: Events queued per feed reader before it is switched to catching up from the store.
DEFAULT_FEED_BUFFER: Final = 10_000

#: Longest wait between two reads of a store that is out.
_MAX_RETRY_DELAY: Final = 5.0

#: What :meth:`Executor.on_event` calls: with one committed event; may be a coroutine function.
EventCallback = Callable[[Event], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class FeedCursor:
    """Where a feed reader is: the last ``seq`` it was given of each run it follows.

    ``Executor.events(since=cursor)`` yields, for each run named here, its stored events after
    that ``seq`` first (then everything committed from then on), so a reader that stopped can
    pick up where it left off. Runs that ended and were read to the end are no longer named;
    a run the reader had not heard of yet is followed live from the new feed's start.
    """

    positions: Mapping[str, int] = field(default_factory=dict)


class _FeedQueue:
    """One reader's bounded window on every run's batches (a ``FeedListener`` of the Hub)."""

    def __init__(self, *, buffer: int, types: frozenset[str] | None) -> None:
        self._max = buffer
        self._types = types
        self._queue: deque[tuple[str, Batch]] = deque()
        self._queued = 0
        #: Runs to re-read from the store, with the seq after which to read (in the order missed).
        self.missed: dict[str, int] = {}
        #: The last seq handed to the reader, per run (dropped once the run ended and was read).
        self.last: dict[str, int] = {}
        #: Runs that ended, each with the count of batches pushed before it ended.
        self._ended: deque[tuple[int, str]] = deque()
        self._pushed = 0  # batches queued so far (those dropped on overflow included)
        self._popped = 0  # batches taken or dropped so far
        self.closed = False
        self._ready = anyio.Event()

    # -- the writer's side: return at once, never raise -----------------------------------------

    def push(self, batches: Sequence[tuple[str, Batch]]) -> None:
        """One write's batches. The bound is checked before they are queued: a reader still more
        than ``buffer`` events behind when the writer commits again is switched to the store,
        while one that keeps up takes each write whole, however large (the writer publishes a
        write at once, so no reader can take part of it before the rest comes)."""
        if self._queued > self._max:
            # Behind: each queued run is to be read from the store from its oldest queued seq on.
            for queued_run, queued in self._queue:
                self.missed.setdefault(queued_run, queued.rows[0][1] - 1)
            self._queue.clear()
            self._queued = 0
            self._popped = self._pushed
        queue, missed, types = self._queue, self.missed, self._types
        for run_id, batch in batches:
            if run_id in missed or (
                    types is not None and not any(row[3] in types for row in batch.rows)):
                continue
            queue.append((run_id, batch))
            self._queued += len(batch)
            self._pushed += 1
        self._ready.set()  # once per write, whatever it held (a missed run is read on waking)

    def ended(self, run_id: str) -> None:
        # A run the reader has batches of: taken (``last``), to read from the store (``missed``),
        # or all still queued, unread (a write is queued whole, then switched to the store at
        # the next one). Only those: a reader that is not reading keeps no entry per ended run.
        if run_id in self.last or run_id in self.missed or any(
                queued == run_id for queued, _ in self._queue):
            self._ended.append((self._pushed, run_id))
            self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    # -- the reader's side ------------------------------------------------------------------------

    def pop(self) -> tuple[str, Batch] | None:
        """The oldest queued batch and its run, or ``None``."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._queued -= len(item[1])
        self._popped += 1
        return item

    def ended_runs(self) -> list[str]:
        """Runs that ended before every batch taken so far was published (once each): no more
        of them will be queued."""
        runs = []
        while self._ended and self._ended[0][0] <= self._popped:
            runs.append(self._ended.popleft()[1])
        return runs

    def queued(self) -> list[tuple[str, Batch]]:
        return list(self._queue)

    async def wait(self) -> None:
        if not self._queue and not self.missed and not self.closed:
            await self._ready.wait()
        self._ready = anyio.Event()


class Feed(AsyncIterator[Event]):
    """Every committed event of an executor's runs from now on (and, with a cursor, the stored
    ones after it), once each, in ``seq`` order per run; see :mod:`isolane.executor.feed`.

    Use ``async with ex.events() as feed: async for event in feed`` or close it (:meth:`aclose`)
    when leaving early: that ends its place on the hub. It ends by itself when the executor closes.
    """

    def __init__(self, store: Store, hub: Hub, *, types: Iterable[str] | None = None,
                 since: FeedCursor | None = None, buffer: int = DEFAULT_FEED_BUFFER,
                 page_size: int = READ_PAGE) -> None:
        if buffer < 1:
            raise ConfigError(f"a feed's buffer must hold at least 1 event, got {buffer}")
        self._store = store
        self._hub = hub
        self._types = frozenset(types) if types is not None else None
        self._page = page_size
        self._queue = _FeedQueue(buffer=buffer, types=self._types)
        if since is not None:
            self._queue.missed.update(since.positions)
            self._queue.last.update(since.positions)
        hub.listen(self._queue)
        self._events: AsyncGenerator[Event, None] = self._follow()

    def cursor(self) -> FeedCursor:
        """Where this reader is now: pass it as ``since`` to a new feed to continue from here."""
        queue = self._queue
        positions = {run_id: batch.rows[0][1] - 1 for run_id, batch in reversed(queue.queued())}
        return FeedCursor({**positions, **queue.last, **queue.missed})

    @property
    def behind(self) -> bool:
        """Whether some run is to be re-read from the store (the reader fell behind)."""
        return bool(self._queue.missed)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        self._hub.unlisten(self._queue)
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _follow(self) -> AsyncGenerator[Event, None]:
        queue, last, types = self._queue, self._queue.last, self._types
        gone: set[str] = set()  # runs that ended while still to be read from the store
        try:
            while True:
                closed = queue.closed  # before popping: what was published before closing is queued
                item = queue.pop()
                if item is not None:
                    run_id, batch = item
                    seen = last.get(run_id)
                    fresh = batch.after(seen) if seen is not None else batch
                    if fresh is not None:
                        if types is None:
                            for chunk in fresh.chunks():  # decoded as read: see Batch.chunks
                                for event in chunk:
                                    last[run_id] = event.seq  # the cursor is exact mid-batch
                                    yield event
                        else:  # decode only what is wanted (a tracer skips most of a busy run)
                            for row in fresh.rows:
                                if row[3] in types:
                                    last[run_id] = row[1]
                                    yield event_from_row(*row)
                        last[run_id] = fresh.rows[-1][1]
                for run_id in queue.ended_runs():
                    if run_id in queue.missed:
                        gone.add(run_id)
                    else:
                        last.pop(run_id, None)
                if item is not None:
                    continue
                if queue.missed:
                    run_id = next(iter(queue.missed))
                    async for event in self._catch_up(run_id):
                        yield event
                    if run_id in gone and run_id not in queue.missed:
                        # It ended before the read began: nothing of it is published any more.
                        gone.discard(run_id)
                        last.pop(run_id, None)
                    continue
                if closed:
                    return
                await queue.wait()
        finally:
            self._hub.unlisten(queue)

    async def _catch_up(self, run_id: str) -> AsyncIterator[Event]:
        """The run's stored events the reader missed. The run leaves ``missed`` BEFORE the store
        is read: what commits from now on is queued again, what committed before is in the pages
        (the overlap is skipped by seq), as in :func:`~isolane.executor.hub.replay_then_live`."""
        queue, last = self._queue, self._queue.last
        after = queue.missed.pop(run_id)
        after = max(after, last.get(run_id, after))
        types = sorted(self._types) if self._types is not None else None
        while True:
            page = await self._read(run_id, after, types)
            for event in page:
                seen = last.get(run_id)
                if seen is not None and event.seq <= seen:
                    continue
                last[run_id] = after = event.seq
                yield event
            if len(page) < self._page or run_id in queue.missed:
                return


    async def _read(self, run_id: str, after: int, types: list[str] | None) -> list[Event]:
        """A page of the run's stored events, read again and again while the store is out (the
        reader waits; the writer, which has its own retries, does not)."""
        delay = 0.05
        while True:
            try:
                return await anyio.to_thread.run_sync(partial(
                    self._store.events, run_id, after_seq=after, limit=self._page, types=types))
            except (StoreUnavailable, DBAPIError) as exc:
                log.warning("feed: reading run %s from the store failed, retrying in %.2f s: %s",
                            run_id, delay, (str(exc).splitlines() or [type(exc).__name__])[0])
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)


class EventSubscription:
    """A callback registered with :meth:`Executor.on_event`; :meth:`close` unregisters it.

    The callback runs in its own task of the executor, fed by a bounded :class:`Feed`: a slow
    callback lags and catches up from the store, the writer never waits for it. An exception it
    raises is logged (and counted in :attr:`errors`); the next event is delivered as usual.
    """

    def __init__(self, feed: Feed, callback: EventCallback) -> None:
        self._feed = feed
        self._callback = callback
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        #: Events the callback raised on.
        self.errors = 0
        #: Events handed to the callback.
        self.delivered = 0

    @property
    def feed(self) -> Feed:
        return self._feed

    async def run(self) -> None:
        """Deliver events until closed or the executor closes (run by the executor's task group)."""
        try:
            with self._scope:
                await self._deliver()
        except Exception:  # never into the executor's task group: it would end every run
            log.exception("an on_event subscription stopped: its feed failed")
        finally:
            self._done.set()

    async def _deliver(self) -> None:
        async with self._feed as feed:
            async for event in feed:
                self.delivered += 1
                try:
                    result = self._callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.errors += 1
                    log.exception("an on_event callback failed on %s event seq %d of run %s "
                                  "(ignored; the next event is delivered)",
                                  event.type, event.seq, event.run_id)

    def close(self) -> None:
        """Stop calling the callback (the event it is handling now is finished or cancelled)."""
        self._scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the delivering task has ended (after :meth:`close`, or the executor's end)."""
        await self._done.wait()
