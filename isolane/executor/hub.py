"""Live fan-out of committed events to subscribers, bounded per subscriber.

::

    StoreWriter ──commit──▶ Hub.publish_write(...)   ──▶ Batch ──▶ Subscription (bounded) ──▶ reader
                  the stored rows themselves:              │           │ overflow: marked lagged,
                  (run_id, seq, ts, type, node_id,         │           ▼ emptied
                   data as JSON text)                      │  reader catches up from the Store by seq
                                                           │
                  one Batch per run per write, shared by every subscriber; each view is built on first
                  request, at most once per batch:
                    Batch.lines()   envelopes as JSON text, the stored ``data`` text spliced in
                                    unparsed                                    (the WebSocket)
                    Batch.events()  Event objects (``data`` parsed)   (Subscription.take, RunHandle)

:func:`replay_then_live` is how a reader follows a run: stored pages, then these batches, with
no gap and no duplicate at the seam.

A subscriber only ever sees committed events. A slow subscriber never grows memory past its bound
and never slows the run: it is marked ``lagged`` and re-reads what it missed from the store, so
the stream it yields has no gap and no duplicate. Publishing costs the writer no parsing and no
encoding: a run nobody reads as text never encodes, one nobody reads from Python never decodes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Final, Protocol
from weakref import WeakSet

import anyio
import anyio.to_thread
import orjson

from isolane.schemas.envelope import SCHEMA_VERSION, Event, EventRow, events_from_rows

if TYPE_CHECKING:
    from isolane.tracking.store import Store

__all__ = ["DECODE_CHUNK", "READ_PAGE", "Batch", "FeedListener", "Hub", "Subscription", "encode_lines",
           "replay_then_live"]

#: Stored events read per store query while replaying.
READ_PAGE: Final = 2000
#: Events decoded at a time for a reader that does not share them (:meth:`Batch.chunks`).
DECODE_CHUNK: Final = 256
_seq: Final = itemgetter(1)  # of a stored row


def encode_lines(rows: Sequence[EventRow]) -> list[str]:
    """Each stored row's envelope as JSON text, one string per row, without parsing ``data``.

    The text is what :meth:`Event.to_json` gives for the row's event: the same keys in the same
    order, ``data`` being the stored JSON text itself (for text orjson wrote, as every worker's
    is, that is byte for byte what re-encoding the parsed payload gives).
    """
    v = SCHEMA_VERSION
    dumps, fragment = orjson.dumps, orjson.Fragment
    return [dumps({"v": v, "run_id": run_id, "seq": seq, "ts": ts, "type": type_,
                   "node_id": node_id, "data": fragment(data)}).decode()
            for run_id, seq, ts, type_, node_id, data in rows]


class Batch:
    """Events of one run committed together, in ``seq`` order, as stored rows; shared, never
    mutated (nor may the publisher change ``rows`` afterwards)."""

    __slots__ = ("_base", "_events", "_lines", "_start", "rows")

    def __init__(self, rows: Sequence[EventRow]) -> None:
        self.rows = rows
        self._events: Sequence[Event] | None = None
        self._lines: list[str] | None = None
        self._base: Batch | None = None  # a tail of another batch shares its views
        self._start = 0

    def after(self, seq: int) -> Batch | None:
        """The part of the batch with ``seq`` greater than ``seq`` (``None`` if nothing is);
        a part shares the whole batch's decoded events and encoded lines."""
        rows = self.rows
        if not rows or rows[-1][1] <= seq:
            return None
        if rows[0][1] > seq:
            return self
        start = bisect_right(rows, seq, key=_seq)
        tail = Batch(rows[start:])
        tail._base, tail._start = self, start
        return tail

    @classmethod
    def of_events(cls, events: Sequence[Event]) -> Batch:
        """A batch of events already decoded (a page read from the store)."""
        batch = cls([(e.run_id, e.seq, e.ts, e.type, e.node_id, e.to_json_data()) for e in events])
        batch._events = events
        return batch

    def __len__(self) -> int:
        return len(self.rows)

    def events(self) -> Sequence[Event]:
        """The rows as :class:`Event` objects, decoded on the first call and shared afterwards.

        Shared by every caller, like the events themselves: never change it or their ``data``.
        """
        if self._events is None:
            self._events = (self._base.events()[self._start:] if self._base is not None
                            else events_from_rows(self.rows))
        return self._events

    def chunks(self) -> Iterator[Sequence[Event]]:
        """The events for one reader that drops each after use, a few hundred at a time: decoded
        chunk by chunk and not kept (unless :meth:`events` decoded them all already).

        Decoding a large batch whole keeps thousands of new objects alive together, and
        CPython's cyclic GC then costs several times the decoding itself, on the loop the writer
        shares; a chunk dies before it matters. A single reader of every event (the feed) reads
        this way; readers that share a batch (:meth:`events`) pay the GC once between them.
        """
        decoded = self._events if self._base is None else self._base._events
        if decoded is not None:
            yield self.events()
            return
        rows = self.rows
        for start in range(0, len(rows), DECODE_CHUNK):
            yield events_from_rows(rows[start:start + DECODE_CHUNK])

    def lines(self) -> list[str]:
        """The envelopes as JSON text (:func:`encode_lines`), encoded on the first call and
        shared afterwards.

        The list is shared by every caller: slice it, never change it.
        """
        if self._lines is None:
            self._lines = (self._base.lines()[self._start:] if self._base is not None
                           else encode_lines(self.rows))
        return self._lines


class Subscription:
    """One reader's bounded window on a run's live events."""

    def __init__(self, run_id: str, *, max_events: int) -> None:
        self.run_id = run_id
        self.lagged = False
        self._max = max_events
        self._queue: deque[Batch] = deque()
        self._queued = 0  # events in _queue
        self._ready = anyio.Event()

    def _push(self, batch: Batch) -> None:
        if self.lagged:
            self._ready.set()
            return
        self._queue.append(batch)
        self._queued += len(batch)
        if self._queued > self._max:
            self._queue.clear()
            self._queued = 0
            self.lagged = True
        self._ready.set()

    def take(self) -> list[Event]:
        """Every event queued now (may be empty), decoded once per batch for every reader."""
        return [event for batch in self.take_batches() for event in batch.events()]

    def take_batches(self) -> list[Batch]:
        """Every batch queued now, oldest first (may be empty)."""
        batches = list(self._queue)
        self._queue.clear()
        self._queued = 0
        return batches

    def reset(self) -> None:
        """Forget the lag after the reader caught up from the store."""
        self.lagged = False
        self._queue.clear()
        self._queued = 0

    def wake(self) -> None:
        self._ready.set()

    async def wait(self) -> None:
        """Wait until something was published (or :meth:`wake` was called) since the last wait."""
        if not self._queue and not self.lagged:
            await self._ready.wait()
        self._ready = anyio.Event()


class FeedListener(Protocol):
    """A reader of every run's batches (:mod:`isolane.executor.feed`). Each call must return at
    once and never raise: it runs on the writer's path."""

    def push(self, batches: Sequence[tuple[str, Batch]]) -> None:
        """One write's batches, with their runs, in commit order."""

    def ended(self, run_id: str) -> None: ...

    def close(self) -> None: ...


class Hub:
    """Subscriptions by run id, and listeners to every run. Lives on the executor's event loop."""

    def __init__(self, *, max_events_per_subscriber: int = 10_000) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        # Weak: a feed its reader dropped without closing it stops costing the writer anything.
        self._feeds: WeakSet[FeedListener] = WeakSet()
        self._max = max_events_per_subscriber
        self.closed = False

    def listen(self, feed: FeedListener) -> None:
        """Hand ``feed`` every batch published from now on (closed at once if the hub is)."""
        if self.closed:
            feed.close()
        else:
            self._feeds.add(feed)

    def unlisten(self, feed: FeedListener) -> None:
        self._feeds.discard(feed)

    def close(self) -> None:
        """Nothing more will be published (the writer stopped): end every listener."""
        self.closed = True
        for feed in list(self._feeds):
            feed.close()

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(run_id, max_events=self._max)
        self._subs.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]

    def publish_write(self, written: Sequence[tuple[str, Sequence[EventRow]]]) -> None:
        """Hand each run's ``rows`` of one write (committed, in ``seq`` order per run, as
        stored) to every subscriber of the run, as one batch each, and the whole write to each
        feed listener in one call. Nothing is decoded or encoded here; the rows are shared from
        now on and must not change."""
        subs, feeds = self._subs, self._feeds
        batches = [(run_id, Batch(rows)) for run_id, rows in written
                   if rows and (feeds or run_id in subs)]
        for run_id, batch in batches:
            for sub in subs.get(run_id, ()):
                sub._push(batch)
        if batches:
            for feed in feeds:
                feed.push(batches)

    def wake(self, run_id: str) -> None:
        """Wake a run's readers without events (the run ended)."""
        for sub in self._subs.get(run_id, ()):
            sub.wake()
        for feed in self._feeds:
            feed.ended(run_id)


async def replay_then_live(store: Store, hub: Hub, run_id: str, since: int = 0, *,
                           ended: Callable[[], bool] | None,
                           page_size: Callable[[], int] = lambda: READ_PAGE) -> AsyncGenerator[Batch, None]:
    """Every event of ``run_id`` after ``since``, in ``seq`` order, with no gap and no duplicate:
    stored pages first, then live batches as they commit, until ``ended()`` says the run has
    ended and everything was yielded (``ended=None``: the stored events only).

    The one replay-then-live primitive (:meth:`RunHandle.events`, the WebSocket). A reader that
    falls behind the hub's bound is caught up from the store; ``page_size()`` bounds each store
    read. Close it (``aclosing``) when leaving early: that ends its subscription.
    """
    sub = hub.subscribe(run_id)
    last = since
    try:
        while True:
            # Forget any lag BEFORE reading the store: what is published from now on is queued,
            # what was committed before is in the page (the overlap is skipped by seq).
            # Resetting after the read would drop events committed in between.
            sub.reset()
            done = ended is None or ended()  # before the read: a page read after the end is all
            limit = page_size()
            page = await anyio.to_thread.run_sync(
                partial(store.events, run_id, after_seq=last, limit=limit))
            if page:
                last = page[-1].seq
                yield Batch.of_events(page)
            if len(page) == limit:
                continue
            if done:
                return
            assert ended is not None
            while not sub.lagged:
                done = ended()
                for batch in sub.take_batches():
                    fresh = batch.after(last)
                    if fresh is not None:
                        last = fresh.rows[-1][1]
                        yield fresh
                if done:
                    break
                await sub.wait()
            # Lagged, or ended: (again) from the store, which also sweeps up anything committed
            # between the last page and the end.
    finally:
        hub.unsubscribe(sub)
